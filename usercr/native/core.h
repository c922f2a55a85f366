/* The native core's interface. Read as it is by cffi's cdef (with plan.h),
 * so: no preprocessor lines below the guard, fixed-width types only. */
#ifndef UCR_CORE_H
#define UCR_CORE_H

enum ucr_dump_mode { UCR_DUMP_ANON = 1, UCR_DUMP_FILE_PRIVATE = 2 };

struct ucr_dump_range {
    uint64_t start, end;
    uint32_t mode, pad;
};

/* incremental.py: pages an ancestor image (depth 1: the parent) holds at
 * offset, whose copy is mapped at maps[depth - 1]; trusted: not compared. */
struct ucr_base_run {
    uint64_t vaddr, npages, offset;
    uint32_t depth, trusted;
};

struct ucr_base {
    const struct ucr_base_run *runs;
    const uint64_t *maps;
    uint32_t nruns, pad;
};

void ucr_csum_update(uint64_t *state, const void *buf, size_t len);
long ucr_ptrace(long request, long pid, uintptr_t addr, uintptr_t data);
const unsigned char *ucr_restorer_blob(void);
size_t ucr_restorer_size(void);
const char *ucr_arch_name(void);
void ucr_arch_info(uint64_t *out);
int ucr_dump_pages(int pid, int pagemap_fd, int mem_fd, int out_fd, void *z, const struct ucr_dump_range *ranges,
                   uint32_t nranges, uint64_t *csum, uint64_t page_size, uint64_t *counts);
int ucr_map_region(uint64_t addr, uint64_t len, int shared);
int ucr_protect(uint64_t addr, uint64_t len, int prot);
int ucr_unmap(uint64_t addr, uint64_t len);
void ucr_rseq_self(uint64_t *ptr, uint32_t *len, uint32_t *sig);
long ucr_spawn_restorer(uint64_t flags, const int32_t *set_tid, uint32_t set_tid_size, int exit_signal,
                        uint64_t entry, uint64_t plan, uint64_t stack_top);
long ucr_fork_pidns(void);
long ucr_sock_as(int pid, uint32_t uid, uint32_t gid, int op, int fd, int fd2, int arg,
                 const void *addr, uint32_t addrlen);
long ucr_kcmp(int pid1, int pid2, int type, long idx1, long idx2);
int ucr_pipe_capacity(int fd);
long ucr_pipe_peek(int fd, char *buf, size_t cap);
int ucr_pidfd_getfd(int pid, int fd);
int ucr_getsockopt(int fd, int level, int name, void *buf, uint32_t *len);
int ucr_setns(int fd, int nstype);
int ucr_unshare(int flags);
int ucr_own_proc(void);
long ucr_shm_dump(int id, char *buf, size_t size);
long ucr_shm_restore(int key, size_t size, int mode, uint32_t uid, uint32_t gid, const char *data);
long ucr_msg_copy(int id, long index, char *buf, size_t size, long *mtype);
long ucr_msg_qbytes(int id, uint64_t *qbytes);
long ucr_msg_restore(int key, int mode, uint32_t uid, uint32_t gid, uint64_t qbytes);
long ucr_msg_send(int id, long mtype, char *buf, size_t len);
long ucr_sem_getall(int id, uint16_t *vals);
long ucr_sem_restore(int key, int nsems, int mode, uint32_t uid, uint32_t gid, uint16_t *vals);
int ucr_probe_vm_readv(void);
long ucr_probe_mm_map_size(void);
long ucr_probe_clone3(long nr);
uint64_t ucr_sigreturn_address(void);
/* inotify */
int ucr_open_by_handle(int mount_fd, int type, const unsigned char *bytes, uint32_t len, int flags);
int ucr_inotify_init(int flags);
int ucr_inotify_add_watch(int fd, const char *path, uint32_t mask);
int ucr_inotify_rm_watch(int fd, int wd);
/* epoll (usercr/epoll.py) */
long ucr_kcmp_epoll_tfd(int pid1, int fd1, int pid2, int efd, int tfd, int toff);
int ucr_epoll_create(int flags);
int ucr_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
int ucr_epoll_harvest(int epfd, int max);
int ucr_timerfd_create(int clockid);
int ucr_timerfd_get(int fd, int clockid, uint64_t *out);
int ucr_timerfd_set(int fd, int flags, uint64_t value_ns, uint64_t interval_ns);
int ucr_timerfd_restore(int fd, int clockid, int flags, uint64_t value_ns, uint64_t interval_ns, uint64_t ticks,
                        uint64_t margin_ns, int *step);
int ucr_signalfd(uint64_t mask);
/* incremental.py */
int ucr_dump_pages_base(int pid, int pagemap_fd, int mem_fd, int out_fd, void *z,
                        const struct ucr_dump_range *ranges, uint32_t nranges, uint64_t *csum, uint64_t page_size,
                        uint64_t *counts, const struct ucr_base *base);
int ucr_uffd_flags(void);
int ucr_probe_write_tracking(void);
int ucr_uffd_user_mode_only(void);
int ucr_uffd_wp_start(int uffd, const struct ucr_dump_range *ranges, uint32_t n, uint32_t *ok);
long ucr_pagemap_written(int pagemap_fd, uint64_t start, uint64_t end, int rearm, uint64_t *out, uint32_t cap,
                         uint64_t *walk_end);
/* zstd streams (usercr/compress.py) */
void *ucr_zout_open(int fd, int level, int *err);
int ucr_zout_write(void *z, const void *buf, size_t len, int end);
void ucr_zout_free(void *z);
int ucr_zstd_pump(int in_fd, int out_fd, const void *prefix, size_t prefix_len);
const char *ucr_zstd_error(void);

#endif
