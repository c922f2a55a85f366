/* The native core: the work that must not be done page by page in Python
 * (copying memory into the image), raw syscalls Python has no wrapper for,
 * and the hand-over from rstr to the restorer blob in a new task. */
#define _GNU_SOURCE
#define UCR_CORE 1
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/prctl.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <linux/kcmp.h>
#include <sched.h>
#include <linux/sched.h>
#include "records_gen.h"
#include "plan.h"
#include "csum.h"
#include "arch.h"
#include "restorer_blob.h"
#include "core.h"

#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)
#define PM_FILE (1ULL << 61)
#define PM_BATCH 8192
#define MAX_RUN_PAGES 1024
#define OUT_BUF (512UL << 10)  /* small: ckpt's peak memory stays within 16 MiB */
#define COPY_CHUNK (256UL << 10)  /* copied, then summed while still in the cache */
#define ZOUT_BUF (256UL << 10)  /* with compression, each buffer also has its frame's */
/* ZSTD_compressBound(ZOUT_BUF): a frame of incompressible data is a little larger */
#define ZOUT_FRAME_CAP (ZOUT_BUF + (ZOUT_BUF >> 8) + 1024)

static int zout_frames_begin(void *z);

void ucr_csum_update(uint64_t *state, const void *buf, size_t len)
{
    ucr_csum_words(state, buf, len);
}

long ucr_ptrace(long request, long pid, uintptr_t addr, uintptr_t data)
{
    long r = syscall(SYS_ptrace, request, pid, addr, data);
    return r < 0 ? -errno : r;
}

const unsigned char *ucr_restorer_blob(void) { return ucr_restorer_bytes; }
size_t ucr_restorer_size(void) { return sizeof(ucr_restorer_bytes); }
const char *ucr_arch_name(void) { return UCR_ARCH_NAME; }

void ucr_arch_info(uint64_t *out)
{
    memset(out, 0, 4 * sizeof(*out));
    ucr_arch_info_fill(out);
}

/* The image output: the dumping thread fills buffers in turn, checksumming
 * what it copies while it is in the cache, while a writer thread writes the
 * previous ones, so reading the target's memory overlaps with writing the
 * image, and the writer, the slower of the two, does nothing but write(). */
#define NBUF 3

struct out {
    int fd;
    void *z;             /* a zstd stream (ucr_zout_open) or NULL: plain */
    char *bufs[NBUF];
    size_t lens[NBUF];
    char *zbufs[NBUF];   /* with z: each buffer as one zstd frame */
    size_t zlens[NBUF];  /* 0: not compressed yet (the writer does it) */
    char *buf;           /* the buffer being filled: bufs[submitted % NBUF] */
    size_t used, cap;    /* cap: the buffers' size */
    uint64_t *csum;
    uint64_t bytes, pages;  /* written: bytes by the writer thread, pages queued */
    uint64_t submitted, written;
    int finished, err;
    pthread_mutex_t lock;
    pthread_cond_t work, space;
    const struct ucr_base *base;  /* incremental.py: pages an ancestor holds */
    const char *src;              /* copy from here instead of the target (base compare) */
    uint64_t src_vaddr;
};

static int write_full(int fd, const char *b, size_t n)
{
    while (n) {
        ssize_t r = write(fd, b, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

static long zout_frame(void *z, int which, void *dst, const void *src, size_t len);

/* Writes buffer k: with compression, as one zstd frame, compressed here
 * unless the filling thread did it (flush). */
static int write_buffer(struct out *o, int k)
{
    if (!o->z)
        return write_full(o->fd, o->bufs[k], o->lens[k]);
    size_t n = o->zlens[k];
    if (!n) {
        long r = zout_frame(o->z, 1, o->zbufs[k], o->bufs[k], o->lens[k]);
        if (r < 0)
            return (int)r;
        n = (size_t)r;
    }
    return write_full(o->fd, o->zbufs[k], n);
}

static void *writer_thread(void *arg)
{
    struct out *o = arg;
    pthread_mutex_lock(&o->lock);
    for (;;) {
        while (o->written == o->submitted && !o->finished)
            pthread_cond_wait(&o->work, &o->lock);
        if (o->written == o->submitted)
            break;
        int k = (int)(o->written % NBUF), failed = o->err;
        pthread_mutex_unlock(&o->lock);
        int r = 0;
        if (!failed) {  /* after an error, buffers are only drained */
            r = write_buffer(o, k);
            o->bytes += o->lens[k];
        }
        pthread_mutex_lock(&o->lock);
        if (r && !o->err)
            o->err = r;
        o->written++;
        pthread_cond_signal(&o->space);
    }
    pthread_mutex_unlock(&o->lock);
    return NULL;
}

/* Hands the filled buffer to the writer and waits for a free one. With
 * compression, a writer that still has buffers to write is the slower of
 * the two threads: this one then compresses the buffer itself, so that the
 * work shares itself out between the two CPUs. */
static int flush(struct out *o)
{
    int err, k = (int)(o->submitted % NBUF);
    o->lens[k] = o->used;
    o->zlens[k] = 0;
    if (o->z) {
        pthread_mutex_lock(&o->lock);
        int busy = o->written != o->submitted;
        pthread_mutex_unlock(&o->lock);
        long r = busy ? zout_frame(o->z, 0, o->zbufs[k], o->bufs[k], o->used) : 0;
        if (r < 0)
            return (int)r;
        o->zlens[k] = (size_t)r;
    }
    pthread_mutex_lock(&o->lock);
    o->submitted++;
    pthread_cond_signal(&o->work);
    while (o->submitted - o->written >= NBUF && !o->err)
        pthread_cond_wait(&o->space, &o->lock);
    err = o->err;
    pthread_mutex_unlock(&o->lock);
    o->buf = o->bufs[o->submitted % NBUF];
    o->used = 0;
    return err;
}

/* Copies [addr, addr+len) of the target into the buffer. process_vm_readv
 * copies once; /proc/PID/mem also reaches pages the target cannot read
 * itself (PROT_NONE), so it is the fallback. */
static int copy_remote(int pid, int mem_fd, char *dst, uint64_t addr, size_t len)
{
    struct iovec local = { dst, len }, remote = { (void *)(uintptr_t)addr, len };
    ssize_t r = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    size_t done = r > 0 ? (size_t)r : 0;
    while (done < len) {
        r = pread(mem_fd, dst + done, len - done, (off_t)(addr + done));
        if (r <= 0)
            return r < 0 ? -errno : -EIO;
        done += (size_t)r;
    }
    return 0;
}

static int emit_run_base(struct out *o, int pid, int mem_fd, uint64_t vaddr, uint64_t npages, uint64_t ps);
static int emit_run_plain(struct out *o, int pid, int mem_fd, uint64_t vaddr, uint64_t npages, uint64_t ps);

static int emit_run(struct out *o, int pid, int mem_fd, uint64_t vaddr, uint64_t npages, uint64_t ps)
{
    if (o->base && !o->src)
        return emit_run_base(o, pid, mem_fd, vaddr, npages, ps);
    struct ucr_rec_pages rec = { { UCR_REC_PAGES, (uint32_t)(sizeof(rec) + npages * ps) }, vaddr, npages };
    int r;
    if (o->used + sizeof(rec) > o->cap && (r = flush(o)))
        return r;
    memcpy(o->buf + o->used, &rec, sizeof(rec));
    o->pages += npages;
    ucr_csum_words(o->csum, &rec, sizeof(rec));
    o->used += sizeof(rec);
    uint64_t len = npages * ps;
    while (len) {
        size_t room = o->cap - o->used;
        if (!room) {
            if ((r = flush(o)))
                return r;
            continue;
        }
        size_t n = len < room ? len : room;
        if (n > COPY_CHUNK)
            n = COPY_CHUNK;
        if (o->src)
            memcpy(o->buf + o->used, o->src + (vaddr - o->src_vaddr), n);
        else if ((r = copy_remote(pid, mem_fd, o->buf + o->used, vaddr, n)))
            return r;
        ucr_csum_words(o->csum, o->buf + o->used, n);
        o->used += n;
        vaddr += n;
        len -= n;
    }
    return 0;
}

static int wanted(uint64_t pm, uint32_t mode)
{
    if (mode == UCR_DUMP_ANON)
        return (pm & (PM_PRESENT | PM_SWAPPED)) != 0;
    /* Private file mapping: only pages the task has copied on write. */
    return (pm & PM_SWAPPED) || ((pm & PM_PRESENT) && !(pm & PM_FILE));
}

/* counts[0]: bytes written to out_fd, counts[1]: pages saved (also on failure);
 * z: a compressor (ucr_zstd_*) or NULL. */
int ucr_dump_pages(int pid, int pagemap_fd, int mem_fd, int out_fd, void *z, const struct ucr_dump_range *ranges,
                   uint32_t nranges, uint64_t *csum, uint64_t page_size, uint64_t *counts)
{
    return ucr_dump_pages_base(pid, pagemap_fd, mem_fd, out_fd, z, ranges, nranges, csum, page_size, counts, NULL);
}

int ucr_dump_pages_base(int pid, int pagemap_fd, int mem_fd, int out_fd, void *z,
                        const struct ucr_dump_range *ranges, uint32_t nranges, uint64_t *csum, uint64_t page_size,
                        uint64_t *counts, const struct ucr_base *base)
{
    struct out o;
    uint64_t *pm;
    pthread_t writer;
    int r = 0;

    memset(&o, 0, sizeof(o));
    o.fd = out_fd;
    o.z = z;
    o.csum = csum;
    o.base = base;
    if (z && (r = zout_frames_begin(z)))
        return r;
    char *scratch = MAP_FAILED;
    if (base && (scratch = mmap(NULL, MAX_RUN_PAGES * page_size, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) == MAP_FAILED)
        return -ENOMEM;
    o.src_vaddr = (uint64_t)(uintptr_t)scratch;  /* emit_run_base's scratch buffer, until it sets src */
    o.cap = z ? ZOUT_BUF : OUT_BUF;
    size_t zcap = z ? ZOUT_FRAME_CAP : 0, size = NBUF * (o.cap + zcap);
    char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    pm = mmap(NULL, PM_BATCH * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || pm == MAP_FAILED) {
        r = -ENOMEM;
        goto unmap;
    }
    for (int i = 0; i < NBUF; i++) {
        o.bufs[i] = mem + i * o.cap;
        o.zbufs[i] = mem + NBUF * o.cap + i * zcap;
    }
    o.buf = o.bufs[0];
    pthread_mutex_init(&o.lock, NULL);
    pthread_cond_init(&o.work, NULL);
    pthread_cond_init(&o.space, NULL);
    if ((r = -pthread_create(&writer, NULL, writer_thread, &o)))
        goto unmap;

    for (uint32_t i = 0; i < nranges && !r; i++) {
        uint64_t first = ranges[i].start / page_size, last = ranges[i].end / page_size;
        uint64_t run_start = 0, run_len = 0;
        for (uint64_t pg = first; pg < last && !r; pg += PM_BATCH) {
            uint64_t n = last - pg < PM_BATCH ? last - pg : PM_BATCH;
            ssize_t got = pread(pagemap_fd, pm, n * 8, (off_t)(pg * 8));
            if (got != (ssize_t)(n * 8)) {
                r = got < 0 ? -errno : -EIO;
                break;
            }
            for (uint64_t j = 0; j < n && !r; j++) {
                if (wanted(pm[j], ranges[i].mode)) {
                    if (!run_len)
                        run_start = pg + j;
                    if (++run_len == MAX_RUN_PAGES) {
                        r = emit_run(&o, pid, mem_fd, run_start * page_size, run_len, page_size);
                        run_len = 0;
                    }
                } else if (run_len) {
                    r = emit_run(&o, pid, mem_fd, run_start * page_size, run_len, page_size);
                    run_len = 0;
                }
            }
        }
        if (!r && run_len)
            r = emit_run(&o, pid, mem_fd, run_start * page_size, run_len, page_size);
    }
    if (!r && o.used)
        r = flush(&o);
    pthread_mutex_lock(&o.lock);
    o.finished = 1;
    pthread_cond_signal(&o.work);
    pthread_mutex_unlock(&o.lock);
    pthread_join(writer, NULL);
    if (!r)
        r = o.err;
unmap:
    counts[0] = o.bytes;
    counts[1] = o.pages;
    if (mem != MAP_FAILED)
        munmap(mem, size);
    if (pm != MAP_FAILED)
        munmap(pm, PM_BATCH * 8);
    if (scratch != MAP_FAILED)
        munmap(scratch, MAX_RUN_PAGES * page_size);
    return r;
}

int ucr_map_region(uint64_t addr, uint64_t len, int shared)
{
    void *p = mmap((void *)(uintptr_t)addr, len, PROT_READ | PROT_WRITE,
                   (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    if ((uintptr_t)p != addr) {
        munmap(p, len);
        return -EEXIST;
    }
    return 0;
}

int ucr_protect(uint64_t addr, uint64_t len, int prot)
{
    return mprotect((void *)(uintptr_t)addr, len, prot) ? -errno : 0;
}

int ucr_unmap(uint64_t addr, uint64_t len)
{
    return munmap((void *)(uintptr_t)addr, len) ? -errno : 0;
}

/* glibc (2.35+) registers rseq for every thread; the restorer must drop that
 * registration before it unmaps glibc. Weak, so older libcs simply lack it. */
extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

void ucr_rseq_self(uint64_t *ptr, uint32_t *len, uint32_t *sig)
{
    *ptr = 0;
    *len = 0;
    *sig = UCR_RSEQ_SIG;
    if (&__rseq_size && &__rseq_offset && __rseq_size) {
        *ptr = (uint64_t)(uintptr_t)((char *)__builtin_thread_pointer() + __rseq_offset);
        /* The kernel wants the length glibc registered: 32 before glibc 2.40. */
        *len = __rseq_size < 32 ? 32 : __rseq_size;
    }
}

/* Creates the task with clone3 (set_tid gives it a chosen PID) and enters the
 * restorer in it. Signals stay blocked across the clone so no Python handler
 * can run in the child. Returns the child's PID or -errno. */
long ucr_spawn_restorer(uint64_t flags, const int32_t *set_tid, uint32_t set_tid_size, int exit_signal,
                        uint64_t entry, uint64_t plan, uint64_t stack_top)
{
    struct clone_args args;
    sigset_t all, old;
    memset(&args, 0, sizeof(args));
    args.flags = flags;
    args.exit_signal = (uint64_t)exit_signal;
    args.set_tid = set_tid_size ? (uint64_t)(uintptr_t)set_tid : 0;
    args.set_tid_size = set_tid_size;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    long pid = syscall(SYS_clone3, &args, sizeof(args));
    if (pid < 0 && errno == ENOSYS && !flags && !set_tid_size)  /* qemu-user: a fork (inplace.py) */
        pid = syscall(SYS_clone, (long)exit_signal, 0L, 0L, 0L, 0L);
    if (pid == 0)
        ucr_arch_jump(entry, plan, stack_top);
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pid < 0 ? -saved : pid;
}

/* fork() into a new PID namespace: the child is its PID 1, the reaper under
 * which a task keeps a PID other than 1. Returns 0 in the child. */
long ucr_fork_pidns(void)
{
    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = CLONE_NEWPID;
    args.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof(args));
    return pid < 0 ? -errno : pid;
}

/* One socket call made by a short-lived helper task that shares rstr's fd
 * table, with PID pid (0: any) and effective uid/gid: the kernel records the
 * caller of socketpair/listen/connect as the peer credentials (SO_PEERCRED),
 * so the restored program sees those it saw. op 0: listen(fd, arg);
 * 1: connect(fd, addr); 2: socketpair(AF_UNIX, arg) placed at fd and fd2.
 * Returns 0 or -errno (-EEXIST: pid is taken). */
long ucr_sock_as(int pid, uint32_t uid, uint32_t gid, int op, int fd, int fd2, int arg,
                 const void *addr, uint32_t addrlen)
{
    struct clone_args args;
    int32_t tid = pid;
    sigset_t all, old;
    int status;
    memset(&args, 0, sizeof(args));
    args.flags = CLONE_FILES;
    args.exit_signal = SIGCHLD;
    if (pid > 0) {
        args.set_tid = (uint64_t)(uintptr_t)&tid;
        args.set_tid_size = 1;
    }
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    long child = syscall(SYS_clone3, &args, sizeof(args));
    if (child == 0) {
#ifdef SYS_setresuid32  /* armhf: the 32-bit ids; SYS_setresuid takes 16-bit ones there */
        long r = syscall(SYS_setresgid32, gid, gid, gid);
        if (r == 0)
            r = syscall(SYS_setresuid32, uid, uid, uid);
#else
        long r = syscall(SYS_setresgid, gid, gid, gid);
        if (r == 0)
            r = syscall(SYS_setresuid, uid, uid, uid);
#endif
        if (r == 0 && op == 0)
            r = syscall(SYS_listen, fd, arg);
        else if (r == 0 && op == 1)
            r = syscall(SYS_connect, fd, addr, addrlen);
        else if (r == 0 && op == 2) {
            int sv[2];
            r = syscall(SYS_socketpair, AF_UNIX, arg | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv);
            if (r == 0 && (syscall(SYS_dup3, sv[0], fd, O_CLOEXEC) < 0 || syscall(SYS_dup3, sv[1], fd2, O_CLOEXEC) < 0))
                r = -1;
        }
        syscall(SYS_exit_group, r == 0 ? 0 : (errno & 0xff));
    }
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (child < 0)
        return -saved;
    while (waitpid((pid_t)child, &status, __WALL) < 0)
        if (errno != EINTR)
            return -errno;
    return WIFEXITED(status) ? -WEXITSTATUS(status) : -EINTR;
}

/* 0 if fd1 of pid1 and fd2 of pid2 are one open file description. */
long ucr_kcmp(int pid1, int pid2, int type, long idx1, long idx2)
{
    long r = syscall(SYS_kcmp, pid1, pid2, type, idx1, idx2);
    return r < 0 ? -errno : r;
}

/* epoll (usercr/epoll.py). 0 if fd1 of pid1 is the file registered in the
 * epoll at efd of pid2 as the toff-th entry with fd number tfd. */
long ucr_kcmp_epoll_tfd(int pid1, int fd1, int pid2, int efd, int tfd, int toff)
{
    struct { uint32_t efd, tfd, toff; } slot = { (uint32_t)efd, (uint32_t)tfd, (uint32_t)toff };
    long r = syscall(SYS_kcmp, pid1, pid2, KCMP_EPOLL_TFD, (long)fd1, (long)(uintptr_t)&slot);
    return r < 0 ? -errno : r;
}

int ucr_epoll_create(int flags)
{
    int r = epoll_create1(flags);
    return r < 0 ? -errno : r;
}

/* epoll_ctl with any 64-bit data (struct epoll_event is packed on x86_64 only). */
int ucr_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev) < 0 ? -errno : 0;
}

/* Takes what is ready off the epoll's ready list, without waiting: a
 * one-shot registration that reports is disarmed by that. */
int ucr_epoll_harvest(int epfd, int max)
{
    struct epoll_event evs[64];
    int r = epoll_wait(epfd, evs, max < 64 ? max : 64, 0);
    return r < 0 ? -errno : r;
}

int ucr_pipe_capacity(int fd)
{
    int r = fcntl(fd, F_GETPIPE_SZ);
    return r < 0 ? -errno : r;
}

/* Copies what is buffered in the pipe behind fd without consuming it: tee()
 * duplicates it into a private pipe, which is then drained. */
long ucr_pipe_peek(int fd, char *buf, size_t cap)
{
    int p[2];
    long total = 0;
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC))
        return -errno;
    if (fcntl(p[1], F_SETPIPE_SZ, (int)cap) < 0 && cap > 65536) {
        total = -errno;
        goto out;
    }
    ssize_t n = tee(fd, p[1], cap, SPLICE_F_NONBLOCK);
    if (n < 0) {
        total = errno == EAGAIN ? 0 : -errno;
        goto out;
    }
    while (total < n) {
        ssize_t r = read(p[0], buf + total, (size_t)(n - total));
        if (r <= 0) {
            total = r < 0 ? -errno : -EIO;
            goto out;
        }
        total += r;
    }
out:
    close(p[0]);
    close(p[1]);
    return total;
}

/* A copy of another process's fd (ptrace access suffices), Linux 5.6+. */
int ucr_pidfd_getfd(int pid, int fd)
{
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0)
        return -errno;
    int r = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    int err = errno;
    close(pidfd);
    return r < 0 ? -err : r;
}

/* A socket option whose query needs input in the buffer (MCAST_MSFILTER
 * names the group), or whose reply is longer than its length says
 * (SO_GET_FILTER answers in filter blocks); Python's getsockopt can do
 * neither. */
int ucr_getsockopt(int fd, int level, int name, void *buf, uint32_t *len)
{
    socklen_t l = *len;
    if (getsockopt(fd, level, name, buf, &l))
        return -errno;
    *len = l;
    return 0;
}

/* Namespaces: ckpt reads SysV IPC inside the tree's IPC namespace, rstr
 * recreates it in a new one. */
int ucr_setns(int fd, int nstype)
{
    return setns(fd, nstype) ? -errno : 0;
}

int ucr_unshare(int flags)
{
    return unshare(flags) ? -errno : 0;
}

/* A /proc of the caller's own PID namespace, mounted nowhere (an fd of the
 * detached mount): the PIDs ptrace takes and those it shows must agree. The
 * caller's mounts and namespace stay as they are, so the paths its files
 * show stay relative to the caller's root (in another mount namespace they
 * would be relative to that namespace's root: a chroot's prefix and all). */
int ucr_own_proc(void)
{
    int fs = (int)syscall(SYS_fsopen, "proc", FSOPEN_CLOEXEC);
    if (fs < 0)
        return -errno;
    int mnt = -1;
    if (syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0)
        mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    int err = errno;
    close(fs);
    return mnt < 0 ? -err : mnt;
}

/* SysV IPC contents, read without changing them and written back. */
long ucr_shm_dump(int id, char *buf, size_t size)
{
    void *p = shmat(id, NULL, SHM_RDONLY);
    if (p == (void *)-1)
        return -errno;
    memcpy(buf, p, size);
    shmdt(p);
    return 0;
}

static void ipc_owner(struct ipc_perm *perm, uint32_t uid, uint32_t gid, int mode)
{
    perm->uid = uid;
    perm->gid = gid;
    perm->mode = (unsigned short)mode;
}

long ucr_shm_restore(int key, size_t size, int mode, uint32_t uid, uint32_t gid, const char *data)
{
    struct shmid_ds ds;
    int id = shmget(key, size, IPC_CREAT | IPC_EXCL | (mode & 0777));
    if (id < 0)
        return -errno;
    void *p = shmat(id, NULL, 0);
    if (p == (void *)-1)
        return -errno;
    memcpy(p, data, size);
    shmdt(p);
    if (shmctl(id, IPC_STAT, &ds))
        return -errno;
    ipc_owner(&ds.shm_perm, uid, gid, mode);
    if (shmctl(id, IPC_SET, &ds))
        return -errno;
    return id;
}

/* The index-th message, copied (MSG_COPY) so the queue keeps it. */
long ucr_msg_copy(int id, long index, char *buf, size_t size, long *mtype)
{
    struct { long mtype; char text[]; } *m = (void *)buf;
    ssize_t n = msgrcv(id, m, size - sizeof(long), index, IPC_NOWAIT | MSG_COPY | MSG_NOERROR);
    if (n < 0)
        return -errno;
    *mtype = m->mtype;
    return n;
}

long ucr_msg_qbytes(int id, uint64_t *qbytes)
{
    struct msqid_ds ds;
    if (msgctl(id, IPC_STAT, &ds))
        return -errno;
    *qbytes = ds.msg_qbytes;
    return 0;
}

long ucr_msg_restore(int key, int mode, uint32_t uid, uint32_t gid, uint64_t qbytes)
{
    struct msqid_ds ds;
    int id = msgget(key, IPC_CREAT | IPC_EXCL | (mode & 0777));
    if (id < 0)
        return -errno;
    if (msgctl(id, IPC_STAT, &ds))
        return -errno;
    ipc_owner(&ds.msg_perm, uid, gid, mode);
    ds.msg_qbytes = qbytes;
    if (msgctl(id, IPC_SET, &ds))
        return -errno;
    return id;
}

long ucr_msg_send(int id, long mtype, char *buf, size_t len)
{
    /* buf has room for the type word before the text */
    memmove(buf + sizeof(long), buf, len);
    memcpy(buf, &mtype, sizeof(long));
    return msgsnd(id, buf, len, IPC_NOWAIT) ? -errno : 0;
}

long ucr_sem_getall(int id, uint16_t *vals)
{
    return semctl(id, 0, GETALL, vals) ? -errno : 0;
}

long ucr_sem_restore(int key, int nsems, int mode, uint32_t uid, uint32_t gid, uint16_t *vals)
{
    struct semid_ds ds;
    int id = semget(key, nsems, IPC_CREAT | IPC_EXCL | (mode & 0777));
    if (id < 0)
        return -errno;
    if (semctl(id, 0, SETALL, vals) || semctl(id, 0, IPC_STAT, &ds))
        return -errno;
    ipc_owner(&ds.sem_perm, uid, gid, mode);
    if (semctl(id, 0, IPC_SET, &ds))
        return -errno;
    return id;
}

/* Probes for usercr check. */
int ucr_probe_vm_readv(void)
{
    char src[8] = "usercr", dst[8] = { 0 };
    struct iovec local = { dst, sizeof(dst) }, remote = { src, sizeof(src) };
    if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != sizeof(src))
        return -errno;
    return memcmp(src, dst, sizeof(src)) ? -EIO : 0;
}

/* Where a signal handler returns to: qemu-user (aarch64) has a trampoline
 * page of its own in the guest's memory, which an in-place restore keeps. */
static volatile uintptr_t handler_return;

static void note_return(int sig)
{
    (void)sig;
    handler_return = (uintptr_t)__builtin_return_address(0);
}

uint64_t ucr_sigreturn_address(void)
{
    struct sigaction sa, old;
    sigset_t all, only, before;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = note_return;
    sigfillset(&sa.sa_mask);
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &before);
    sigaction(SIGUSR1, &sa, &old);
    only = all;
    sigdelset(&only, SIGUSR1);
    handler_return = 0;
    pthread_sigmask(SIG_SETMASK, &only, NULL);
    syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGUSR1);
    pthread_sigmask(SIG_SETMASK, &all, NULL);
    sigaction(SIGUSR1, &old, NULL);
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    return handler_return;
}

/* clone3 asked with no arguments: EINVAL where it exists, ENOSYS under qemu-user. */
long ucr_probe_clone3(long nr)
{
    return syscall(nr, NULL, 0L) < 0 ? -errno : 0;
}

long ucr_probe_mm_map_size(void)
{
    unsigned int size = 0;
    if (prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE, &size, 0, 0))
        return -errno;
    return size;
}

/* inotify (usercr/inotify.py): the object a watch's file handle names, and
 * the instance rebuilt at restart. */
#include <sys/inotify.h>

int ucr_open_by_handle(int mount_fd, int type, const unsigned char *bytes, uint32_t len, int flags)
{
    if (len > MAX_HANDLE_SZ)
        return -EINVAL;
    struct { struct file_handle h; unsigned char b[MAX_HANDLE_SZ]; } fh;
    fh.h.handle_bytes = len;
    fh.h.handle_type = type;
    memcpy(fh.h.f_handle, bytes, len);
    int r = open_by_handle_at(mount_fd, &fh.h, flags);
    return r < 0 ? -errno : r;
}

int ucr_inotify_init(int flags)
{
    int r = inotify_init1(flags);
    return r < 0 ? -errno : r;
}

int ucr_inotify_add_watch(int fd, const char *path, uint32_t mask)
{
    int r = inotify_add_watch(fd, path, mask);
    return r < 0 ? -errno : r;
}

int ucr_inotify_rm_watch(int fd, int wd)
{
    return inotify_rm_watch(fd, wd) < 0 ? -errno : 0;
}

/* timerfd and signalfd (eventfd.py, timerfd.py, signalfd.py): Python has
 * no wrapper for them. Times are in nanoseconds. */
#include <time.h>
#include <sys/timerfd.h>

#define NS_PER_S 1000000000ULL

static uint64_t ts_ns(const struct timespec *ts)
{
    return (uint64_t)ts->tv_sec * NS_PER_S + (uint64_t)ts->tv_nsec;
}

static void ns_ts(uint64_t ns, struct timespec *ts)
{
    ts->tv_sec = (time_t)(ns / NS_PER_S);
    ts->tv_nsec = (long)(ns % NS_PER_S);
}

int ucr_timerfd_create(int clockid)
{
    int fd = timerfd_create(clockid, 0);
    return fd < 0 ? -errno : fd;
}

/* out: the time left, the interval, and the clock's reading when the kernel
 * computed the time left (the middle of two readings around it). Like a
 * read, timerfd_gettime counts a periodic timer's overruns into its ticks. */
int ucr_timerfd_get(int fd, int clockid, uint64_t *out)
{
    struct itimerspec its;
    struct timespec t0, t1;
    if (clock_gettime(clockid, &t0) || timerfd_gettime(fd, &its) || clock_gettime(clockid, &t1))
        return -errno;
    out[0] = ts_ns(&its.it_value);
    out[1] = ts_ns(&its.it_interval);
    out[2] = ts_ns(&t0) + (ts_ns(&t1) - ts_ns(&t0)) / 2;
    return 0;
}

int ucr_timerfd_set(int fd, int flags, uint64_t value_ns, uint64_t interval_ns)
{
    struct itimerspec its;
    ns_ts(value_ns, &its.it_value);
    ns_ts(interval_ns, &its.it_interval);
    return timerfd_settime(fd, flags, &its, NULL) ? -errno : 0;
}

#define TIMERFD_ATTEMPTS 100

#ifndef TFD_IOC_SET_TICKS
#define TFD_IOC_SET_TICKS _IOW('T', 0, uint64_t)  /* linux/timerfd.h, which clashes with glibc's */
#endif

/* Arms a restored timerfd and gives it its unread expirations in one go.
 * value_ns: the time left (relative timers) or the absolute deadline
 * (TFD_TIMER_ABSTIME). An expiry due within margin_ns is counted here. The
 * timer must not fire between the arming and TFD_IOC_SET_TICKS, which
 * replaces the count: if the clock says it may have (a slow machine), it
 * is all done again. *step: 1 the arming failed, 2 the ticks, 3 the timer
 * kept expiring before its ticks could be set. */
int ucr_timerfd_restore(int fd, int clockid, int flags, uint64_t value_ns, uint64_t interval_ns, uint64_t ticks,
                        uint64_t margin_ns, int *step)
{
    for (int attempt = 0; attempt < TIMERFD_ATTEMPTS; attempt++) {
        struct timespec ts;
        uint64_t left = 0, deadline = 0, total = ticks;
        *step = 1;
        if (clock_gettime(clockid, &ts))
            return -errno;
        uint64_t now = ts_ns(&ts);
        if (value_ns) {
            int absolute = flags & TFD_TIMER_ABSTIME;
            deadline = absolute ? value_ns : now + value_ns;
            if (deadline <= now + margin_ns) {
                uint64_t missed = interval_ns ? (now + margin_ns - deadline) / interval_ns + 1 : 1;
                total += missed;
                deadline += missed * interval_ns;
            }
            if (deadline > now + margin_ns)
                left = absolute ? deadline : deadline - now;
        }
        /* Set also when it stays disarmed: an expired timer keeps the flags it
         * was set with (fdinfo, TFD_TIMER_CANCEL_ON_SET) and its interval. */
        if ((left || flags || interval_ns) && ucr_timerfd_set(fd, flags, left, interval_ns))
            return -errno;
        *step = 2;
        if (total && ioctl(fd, TFD_IOC_SET_TICKS, &total))
            return -errno;
        if (!left)
            return 0;
        /* The timer expires at deadline or later (a relative one was armed after now). */
        if (clock_gettime(clockid, &ts))
            return -errno;
        if (ts_ns(&ts) < deadline)
            return 0;
    }
    *step = 3;
    return -ETIME;
}

/* The kernel's sigset is 64 bits on every arch usercr runs on; glibc's
 * signalfd() would refuse its own signals (32, 33) in the mask. */
int ucr_signalfd(uint64_t mask)
{
    int fd = (int)syscall(SYS_signalfd4, -1, &mask, sizeof(mask), 0);
    return fd < 0 ? -errno : fd;
}

/* Incremental dumps and pre-copy (usercr/incremental.py). A run of wanted
 * pages is split against the base: pages an ancestor image holds (runs sorted
 * by vaddr) become PAGES_PARENT records naming it, if they are trusted
 * (write tracking saw no write) or equal to the target's pages; the rest are
 * PAGES as usual. */
static const struct ucr_base_run *base_at(const struct ucr_base *b, uint64_t addr, uint64_t ps)
{
    uint32_t lo = 0, hi = b->nruns;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const struct ucr_base_run *r = &b->runs[mid];
        if (addr < r->vaddr)
            hi = mid;
        else if (addr >= r->vaddr + r->npages * ps)
            lo = mid + 1;
        else
            return r;
    }
    return NULL;
}

static const char *base_ptr(const struct ucr_base *b, const struct ucr_base_run *br, uint64_t vaddr)
{
    return (const char *)(uintptr_t)b->maps[br->depth - 1] + br->offset + (vaddr - br->vaddr);
}

static int emit_parent(struct out *o, const struct ucr_base_run *br, uint64_t vaddr, uint64_t npages,
                       uint64_t ps)
{
    struct ucr_rec_pages_parent rec;
    int r;
    memset(&rec, 0, sizeof(rec));
    rec.h.type = UCR_REC_PAGES_PARENT;
    rec.h.len = sizeof(rec);
    rec.vaddr = vaddr;
    rec.nr_pages = npages;
    rec.depth = br->depth;
    rec.offset = br->offset + (vaddr - br->vaddr);
    if (!br->trusted) {  /* the restorer checks what it reads from the ancestor */
        uint64_t sum[2] = { 0, 0 };
        ucr_csum_words(sum, base_ptr(o->base, br, vaddr), npages * ps);
        rec.csum_a = sum[0];
        rec.csum_b = sum[1];
    }
    if (o->used + sizeof(rec) > o->cap && (r = flush(o)))
        return r;
    memcpy(o->buf + o->used, &rec, sizeof(rec));
    ucr_csum_words(o->csum, &rec, sizeof(rec));
    o->used += sizeof(rec);
    return 0;
}

/* The longest piece from vaddr that is all in one base run (or all in none). */
static int emit_run_plain(struct out *o, int pid, int mem_fd, uint64_t vaddr, uint64_t npages, uint64_t ps)
{
    const struct ucr_base *b = o->base;
    o->base = NULL;
    int r = emit_run(o, pid, mem_fd, vaddr, npages, ps);
    o->base = b;
    return r;
}

static uint64_t piece(const struct ucr_base *b, const struct ucr_base_run **br, uint64_t vaddr, uint64_t npages,
                      uint64_t ps)
{
    *br = base_at(b, vaddr, ps);
    uint64_t n = 1;
    if (*br) {
        uint64_t left = ((*br)->vaddr + (*br)->npages * ps - vaddr) / ps;
        return left < npages ? left : npages;
    }
    while (n < npages && !base_at(b, vaddr + n * ps, ps))
        n++;
    return n;
}

static int emit_run_base(struct out *o, int pid, int mem_fd, uint64_t vaddr, uint64_t npages, uint64_t ps)
{
    char *scratch = (char *)(uintptr_t)o->src_vaddr;
    int r = 0;
    while (npages && !r) {
        const struct ucr_base_run *br;
        uint64_t n = piece(o->base, &br, vaddr, npages, ps);
        if (!br || br->trusted) {
            r = br ? emit_parent(o, br, vaddr, n, ps) : emit_run_plain(o, pid, mem_fd, vaddr, n, ps);
        } else if (!(r = copy_remote(pid, mem_fd, scratch, vaddr, n * ps))) {
            const char *old = base_ptr(o->base, br, vaddr);
            for (uint64_t i = 0; i < n && !r;) {
                int same = !memcmp(scratch + i * ps, old + i * ps, ps);
                uint64_t j = i + 1;
                while (j < n && !memcmp(scratch + j * ps, old + j * ps, ps) == same)
                    j++;
                if (same) {
                    r = emit_parent(o, br, vaddr + i * ps, j - i, ps);
                } else {
                    o->src = scratch + i * ps;
                    o->src_vaddr = vaddr + i * ps;
                    r = emit_run(o, pid, mem_fd, vaddr + i * ps, j - i, ps);
                    o->src = NULL;
                    o->src_vaddr = (uint64_t)(uintptr_t)scratch;
                }
                i = j;
            }
        }
        vaddr += n * ps;
        npages -= n;
    }
    return r;
}

/* Write tracking: a userfaultfd (created in the target, whose mm it
 * tracks) in asynchronous write-protect mode: the kernel resolves the
 * target's write faults itself, only clearing the page's protection, which
 * PAGEMAP_SCAN then reports as written. Debian 12's UAPI headers (6.1) lack
 * these names. */
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef PAGEMAP_SCAN
struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
struct page_region { uint64_t start, end, categories; };
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_PFNZERO (1 << 5)
#endif

int ucr_uffd_flags(void) { return O_CLOEXEC | O_NONBLOCK; }
int ucr_uffd_user_mode_only(void) { return UFFD_USER_MODE_ONLY; }

/* Enables asynchronous write-protect on uffd; then registers and
 * write-protects each range, setting ok[i] for those that took it. */
int ucr_uffd_wp_start(int uffd, const struct ucr_dump_range *ranges, uint32_t n, uint32_t *ok)
{
    struct uffdio_api api = { .api = UFFD_API,
                              .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED };
    if (ioctl(uffd, UFFDIO_API, &api))
        return -errno;
    for (uint32_t i = 0; i < n; i++) {
        struct uffdio_register reg = { .range = { ranges[i].start, ranges[i].end - ranges[i].start },
                                       .mode = UFFDIO_REGISTER_MODE_WP };
        struct uffdio_writeprotect wp = { .range = reg.range, .mode = UFFDIO_WRITEPROTECT_MODE_WP };
        ok[i] = !ioctl(uffd, UFFDIO_REGISTER, &reg) && !ioctl(uffd, UFFDIO_WRITEPROTECT, &wp);
    }
    return 0;
}

/* The pages of [start, end) written (or replaced by the zero page) since
 * they were last protected, as (start, end) pairs in out (cap pairs); with
 * rearm, protected again in the same walk. Returns the number of pairs and
 * where the walk stopped (*walk_end < end: call again from there). */
long ucr_pagemap_written(int pagemap_fd, uint64_t start, uint64_t end, int rearm, uint64_t *out, uint32_t cap,
                         uint64_t *walk_end)
{
    struct page_region *vec = calloc(cap, sizeof(*vec));
    if (!vec)
        return -ENOMEM;
    struct pm_scan_arg arg = { .size = sizeof(arg), .flags = rearm ? PM_SCAN_WP_MATCHING : 0,
                               .start = start, .end = end, .vec = (uint64_t)(uintptr_t)vec, .vec_len = cap,
                               .category_anyof_mask = PAGE_IS_WRITTEN | PAGE_IS_PFNZERO,
                               .return_mask = PAGE_IS_WRITTEN | PAGE_IS_PFNZERO };
    long r = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);
    if (r < 0) {
        r = -errno;
    } else {
        for (long i = 0; i < r; i++) {
            out[2 * i] = vec[i].start;
            out[2 * i + 1] = vec[i].end;
        }
        *walk_end = arg.walk_end;
    }
    free(vec);
    return r;
}

/* usercr check: can this kernel track writes (a userfaultfd in asynchronous
 * write-protect mode, Linux 6.7+, and PAGEMAP_SCAN)? 0 or -errno. */
int ucr_probe_write_tracking(void)
{
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (uffd < 0)
        return -errno;
    int r = ucr_uffd_wp_start(uffd, NULL, 0, NULL);
    close(uffd);
    if (r)
        return r;
    int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pm < 0)
        return -errno;
    uint64_t out[2], walk;
    long n = ucr_pagemap_written(pm, 0, 0, 0, out, 1, &walk);
    close(pm);
    return n < 0 ? (int)n : 0;
}

/* zstd, loaded when first used: libzstd.so.1 is in every Debian base system
 * (apt needs it), so no build needs its headers or a link against it. The
 * few declarations below are zstd's stable API (zstd.h, 1.4+). */
struct zin { const void *src; size_t size, pos; };
struct zbuf { void *dst; size_t size, pos; };
enum { ZSTD_c_compressionLevel = 100, ZSTD_c_windowLog = 101, ZSTD_c_checksumFlag = 201 };
enum { ZSTD_e_continue = 0, ZSTD_e_end = 2 };
#define ZSTD_CHUNK (256UL << 10)
#define ZSTD_WINDOW_LOG 17  /* 128 KiB: ckpt's and rstr's memory; pages gain little from more */

static struct {
    void *(*createCCtx)(void);
    size_t (*freeCCtx)(void *);
    size_t (*setParameter)(void *, int, int);
    size_t (*compressStream2)(void *, struct zbuf *, struct zin *, int);
    void *(*createDStream)(void);
    size_t (*freeDStream)(void *);
    size_t (*decompressStream)(void *, struct zbuf *, struct zin *);
    size_t (*compress2)(void *, void *, size_t, const void *, size_t);
    unsigned (*isError)(size_t);
    const char *(*getErrorName)(size_t);
} Z;
static pthread_once_t zstd_once = PTHREAD_ONCE_INIT;
static int zstd_loaded;
static char zstd_msg[160];

static void zstd_load(void)
{
    void *h = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(zstd_msg, sizeof(zstd_msg), "libzstd.so.1 is not installed");
        return;
    }
#define SYM(field, name) if (!(*(void **)&Z.field = dlsym(h, name))) { \
        snprintf(zstd_msg, sizeof(zstd_msg), "libzstd.so.1 lacks %s (zstd 1.4 or later is needed)", name); \
        return; }
    SYM(createCCtx, "ZSTD_createCCtx") SYM(freeCCtx, "ZSTD_freeCCtx") SYM(setParameter, "ZSTD_CCtx_setParameter")
    SYM(compressStream2, "ZSTD_compressStream2") SYM(createDStream, "ZSTD_createDStream")
    SYM(freeDStream, "ZSTD_freeDStream") SYM(decompressStream, "ZSTD_decompressStream")
    SYM(isError, "ZSTD_isError") SYM(getErrorName, "ZSTD_getErrorName") SYM(compress2, "ZSTD_compress2")
#undef SYM
    zstd_loaded = 1;
}

static int zstd_ready(void)
{
    pthread_once(&zstd_once, zstd_load);
    return zstd_loaded ? 0 : -ENOSYS;
}

/* A zstd failure: -EBADMSG, with zstd's words for ucr_zstd_error(). */
static int zstd_fail(size_t code)
{
    snprintf(zstd_msg, sizeof(zstd_msg), "%s", Z.getErrorName(code));
    return -EBADMSG;
}

const char *ucr_zstd_error(void) { return zstd_msg; }

/* The image as a sequence of zstd frames (one zstd stream, as the zstd tool
 * reads it): the metadata in frames of their own, compressed as it comes
 * (cctx); the page data in frames of one buffer each, compressed by
 * either of the dump's threads (frame_cctx[0] the thread that copies,
 * [1] the writer, which is cctx: the two never compress at once). */
struct zout {
    void *cctx, *frame_cctx[2];
    int fd, level, open;  /* open: a metadata frame is begun */
    char buf[64 << 10];   /* metadata comes in 64 KiB pieces (image.py) */
};

static void *zout_cctx(int level, int *err)
{
    size_t r;
    void *c = Z.createCCtx();
    if (!c) {
        *err = -ENOMEM;
        return NULL;
    }
    if (Z.isError(r = Z.setParameter(c, ZSTD_c_compressionLevel, level)) ||
        Z.isError(r = Z.setParameter(c, ZSTD_c_windowLog, ZSTD_WINDOW_LOG)) ||
        Z.isError(r = Z.setParameter(c, ZSTD_c_checksumFlag, 1))) {
        *err = zstd_fail(r);
        Z.freeCCtx(c);
        return NULL;
    }
    return c;
}

/* A compressing writer on fd, with zstd's content checksum in every frame. */
void *ucr_zout_open(int fd, int level, int *err)
{
    struct zout *z;
    if ((*err = zstd_ready()))
        return NULL;
    z = mmap(NULL, sizeof(*z), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (z == MAP_FAILED) {
        *err = -ENOMEM;
        return NULL;
    }
    z->fd = fd;
    z->level = level;
    if (!(z->cctx = zout_cctx(level, err))) {
        munmap(z, sizeof(*z));
        return NULL;
    }
    return z;
}

/* Before page data: the metadata frame ends, and both threads have a context. */
static int zout_frames_begin(void *zp)
{
    struct zout *z = zp;
    int r = 0;
    if (z->open && (r = ucr_zout_write(z, NULL, 0, 1)))
        return r;
    z->frame_cctx[1] = z->cctx;
    if (!z->frame_cctx[0] && !(z->frame_cctx[0] = zout_cctx(z->level, &r)))
        return r;
    return 0;
}

/* src as one frame into dst (ZOUT_FRAME_CAP bytes): its length, or -errno. */
static long zout_frame(void *zp, int which, void *dst, const void *src, size_t len)
{
    struct zout *z = zp;
    size_t r = Z.compress2(z->frame_cctx[which], dst, ZOUT_FRAME_CAP, src, len);
    return Z.isError(r) ? zstd_fail(r) : (long)r;
}

/* Compresses buf and writes what zstd has ready; end finishes the frame. */
int ucr_zout_write(void *zp, const void *buf, size_t len, int end)
{
    struct zout *z = zp;
    struct zin in = { buf, len, 0 };
    z->open = !end;
    for (;;) {
        struct zbuf out = { z->buf, sizeof(z->buf), 0 };
        size_t left = Z.compressStream2(z->cctx, &out, &in, end ? ZSTD_e_end : ZSTD_e_continue);
        int r;
        if (Z.isError(left))
            return zstd_fail(left);
        if (out.pos && (r = write_full(z->fd, z->buf, out.pos)))
            return r;
        if (end ? left == 0 : in.pos == in.size)
            return 0;
    }
}

void ucr_zout_free(void *zp)
{
    struct zout *z = zp;
    Z.freeCCtx(z->cctx);
    if (z->frame_cctx[0])
        Z.freeCCtx(z->frame_cctx[0]);
    munmap(z, sizeof(*z));
}

/* Decompresses in_fd (after prefix, bytes already read from it) to out_fd
 * until in_fd ends: 0, or -errno, -EBADMSG (damaged; ucr_zstd_error says
 * how), -ENODATA (the stream ends inside a frame). */
int ucr_zstd_pump(int in_fd, int out_fd, const void *prefix, size_t prefix_len)
{
    int r;
    if ((r = zstd_ready()))
        return r;
    void *ds = Z.createDStream();
    char *mem = mmap(NULL, 2 * ZSTD_CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!ds || mem == MAP_FAILED) {
        r = -ENOMEM;
        goto out;
    }
    char *ibuf = mem, *obuf = mem + ZSTD_CHUNK;
    size_t left = 1;  /* zstd's hint: 0 once a frame is complete */
    memcpy(ibuf, prefix, prefix_len);
    size_t have = prefix_len;
    for (;;) {
        if (!have) {
            ssize_t n = read(in_fd, ibuf, ZSTD_CHUNK);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                r = -errno;
                break;
            }
            if (n == 0) {
                r = left ? -ENODATA : 0;
                break;
            }
            have = (size_t)n;
        }
        struct zin in = { ibuf, have, 0 };
        int full;  /* zstd may hold more output than one buffer takes */
        do {
            struct zbuf out = { obuf, ZSTD_CHUNK, 0 };
            left = Z.decompressStream(ds, &out, &in);
            if (Z.isError(left)) {
                r = zstd_fail(left);
                goto out;
            }
            if (out.pos && (r = write_full(out_fd, obuf, out.pos)))
                goto out;
            full = out.pos == out.size;
        } while (in.pos < in.size || full);
        have = 0;
    }
out:
    if (ds)
        Z.freeDStream(ds);
    if (mem != MAP_FAILED)
        munmap(mem, 2 * ZSTD_CHUNK);
    return r;
}
