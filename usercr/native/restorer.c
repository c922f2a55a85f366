/* The restorer: a freestanding, position-independent blob that runs inside the
 * new task. It replaces the task's address space with the image's, reads the
 * page contents straight from the image stream, restores the per-task kernel
 * state that needs no outside help, and ends in rt_sigreturn.
 * No libc, no globals, no relocations: it is copied to a free address range
 * and entered there, so it also works where ptrace does not (qemu-user). */
#include <stdint.h>
#include <stddef.h>
#include <asm/unistd.h>
#include <linux/mman.h>
#include <linux/prctl.h>
#include <linux/fcntl.h>
#include "records_gen.h"
#include "plan.h"
#include "csum.h"
#include "arch.h"

#define HIDDEN __attribute__((visibility("hidden")))
#define SYS(n, ...) ucr_sys6(__NR_##n, ##__VA_ARGS__)
#define A(x) ((long)(x))

static inline long sys0(long n) { return ucr_sys6(n, 0, 0, 0, 0, 0, 0); }
static inline long sys1(long n, long a) { return ucr_sys6(n, a, 0, 0, 0, 0, 0); }
static inline long sys2(long n, long a, long b) { return ucr_sys6(n, a, b, 0, 0, 0, 0); }
static inline long sys3(long n, long a, long b, long c) { return ucr_sys6(n, a, b, c, 0, 0, 0); }
static inline long sys4(long n, long a, long b, long c, long d) { return ucr_sys6(n, a, b, c, d, 0, 0); }
static inline long sys5(long n, long a, long b, long c, long d, long e) { return ucr_sys6(n, a, b, c, d, e, 0); }

#ifdef __NR_mmap2
#define MMAP_NR __NR_mmap2
#define MMAP_OFF(o, ps) ((long)((o) >> 12))
#else
#define MMAP_NR __NR_mmap
#define MMAP_OFF(o, ps) ((long)(o))
#endif

#define RSEQ_FLAG_UNREGISTER 1
#define READ_CHUNK (1UL << 20)

/* The compiler may emit calls to these for struct copies. */
HIDDEN void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

HIDDEN void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

static inline int is_err(long r) { return (unsigned long)r > -4096UL; }

static __attribute__((noreturn)) void fail(struct ucr_plan *p, int step, long err, uint64_t detail)
{
    struct ucr_status st = { step, (int32_t)-err, detail };
    sys3(__NR_write, p->status_fd, A(&st), sizeof(st));
    sys1(__NR_exit_group, 127);
    __builtin_unreachable();
}

/* Reads exactly len bytes; a short stream is a truncated image. */
static long read_full(int fd, void *buf, uint64_t len)
{
    char *b = buf;
    while (len) {
        long r = sys3(__NR_read, fd, A(b), (long)len);
        if (r == -4 /* EINTR */)
            continue;
        if (r < 0)
            return r;
        if (r == 0)
            return -61; /* ENODATA: truncated */
        b += r;
        len -= (uint64_t)r;
    }
    return 0;
}

static struct ucr_vma *vmas(struct ucr_plan *p) { return (struct ucr_vma *)(uintptr_t)p->vmas; }

/* Page data may only land inside an image mapping that the restorer filled. */
static int pages_target_ok(struct ucr_plan *p, uint64_t addr, uint64_t len)
{
    struct ucr_vma *v = vmas(p);
    if (addr + len < addr)
        return 0;
    for (uint32_t i = 0; i < p->nr_vmas; i++) {
        if (v[i].kind == UCR_VMA_SPECIAL || (v[i].kind == UCR_VMA_FILE && (v[i].mmap_flags & MAP_SHARED)))
            continue;
        if (addr >= v[i].start && addr + len <= v[i].end)
            return 1;
    }
    return 0;
}

static void read_pages(struct ucr_plan *p)
{
    for (;;) {
        struct ucr_rec_pages rec;
        uint64_t at = p->image_offset;
        long r = read_full(p->image_fd, &rec.h, sizeof(rec.h));
        if (r)
            fail(p, UCR_STEP_READ, r, at);
        if (rec.h.type == UCR_REC_TAIL) {
            struct ucr_rec_tail tail;
            if (rec.h.len != sizeof(tail))
                fail(p, UCR_STEP_RECORD, -22, at);
            r = read_full(p->image_fd, (char *)&tail + sizeof(tail.h), sizeof(tail) - sizeof(tail.h));
            if (r)
                fail(p, UCR_STEP_READ, r, at);
            if (tail.magic != UCR_TAIL_MAGIC || tail.csum_a != p->csum[0] || tail.csum_b != p->csum[1])
                fail(p, UCR_STEP_CHECKSUM, 0, at);
            return;
        }
        if (rec.h.type != UCR_REC_PAGES || rec.h.len < sizeof(rec))
            fail(p, UCR_STEP_RECORD, -22, at);
        r = read_full(p->image_fd, (char *)&rec + sizeof(rec.h), sizeof(rec) - sizeof(rec.h));
        if (r)
            fail(p, UCR_STEP_READ, r, at);
        uint64_t len = rec.nr_pages * p->page_size;
        if (rec.h.len != sizeof(rec) + len || !pages_target_ok(p, rec.vaddr, len))
            fail(p, UCR_STEP_RECORD, -22, at);
        ucr_csum_words(p->csum, &rec, sizeof(rec));
        char *dst = (char *)(uintptr_t)rec.vaddr;
        for (uint64_t done = 0; done < len;) {
            uint64_t n = len - done < READ_CHUNK ? len - done : READ_CHUNK;
            r = read_full(p->image_fd, dst + done, n);
            if (r)
                fail(p, UCR_STEP_READ, r, at);
            ucr_csum_words(p->csum, dst + done, n);
            done += n;
        }
        p->image_offset += rec.h.len;
    }
}

static int needs_fill(const struct ucr_vma *v)
{
    return !(v->kind == UCR_VMA_FILE && (v->mmap_flags & MAP_SHARED));
}

static void replace_address_space(struct ucr_plan *p)
{
    struct ucr_vma *v = vmas(p);
    long r;

    /* Park this kernel's special mappings inside the region, drop everything
     * else, then map the image's layout. */
    for (uint32_t i = 0; i < p->nr_vmas; i++) {
        if (v[i].kind != UCR_VMA_SPECIAL || !v[i].cur)
            continue;
        r = sys5(__NR_mremap, A(v[i].cur), A(v[i].end - v[i].start), A(v[i].end - v[i].start),
                 MREMAP_MAYMOVE | MREMAP_FIXED, A(v[i].park));
        if (is_err(r))
            fail(p, UCR_STEP_PARK, r, v[i].cur);
    }
    r = sys2(__NR_munmap, 0, A(p->region_start));
    if (is_err(r))
        fail(p, UCR_STEP_UNMAP, r, 0);
    if (p->unmap_end > p->region_end) {
        r = sys2(__NR_munmap, A(p->region_end), A(p->unmap_end - p->region_end));
        if (is_err(r))
            fail(p, UCR_STEP_UNMAP, r, p->region_end);
    }
    for (uint32_t i = 0; i < p->nr_vmas; i++) {
        uint64_t len = v[i].end - v[i].start;
        if (v[i].kind == UCR_VMA_SPECIAL) {
            if (!v[i].cur)
                continue;
            r = sys5(__NR_mremap, A(v[i].park), A(len), A(len), MREMAP_MAYMOVE | MREMAP_FIXED, A(v[i].start));
            if (is_err(r))
                fail(p, UCR_STEP_SPECIAL, r, v[i].start);
            continue;
        }
        uint32_t prot = needs_fill(&v[i]) ? (v[i].prot | PROT_WRITE) : v[i].prot;
        r = ucr_sys6(MMAP_NR, A(v[i].start), A(len), prot, v[i].mmap_flags | MAP_FIXED, v[i].fd,
                     MMAP_OFF(v[i].offset, p->page_size));
        if (is_err(r) || (uint64_t)(unsigned long)r != v[i].start)
            fail(p, UCR_STEP_MAP, is_err(r) ? r : -17, v[i].start);
    }
    read_pages(p);
    for (uint32_t i = 0; i < p->nr_vmas; i++) {
        if (v[i].kind == UCR_VMA_SPECIAL || !needs_fill(&v[i]) || (v[i].prot & PROT_WRITE))
            continue;
        r = sys3(__NR_mprotect, A(v[i].start), A(v[i].end - v[i].start), v[i].prot);
        if (is_err(r))
            fail(p, UCR_STEP_PROTECT, r, v[i].start);
    }
}

static int fd_is_target(struct ucr_plan *p, int fd)
{
    struct ucr_fd *f = (struct ucr_fd *)(uintptr_t)p->fds;
    for (uint32_t i = 0; i < p->nr_fds; i++)
        if (f[i].dst == fd)
            return 1;
    return 0;
}

static void restore_fds(struct ucr_plan *p)
{
    struct ucr_fd *f = (struct ucr_fd *)(uintptr_t)p->fds;
    long r;
    for (int fd = 0; fd < p->fd_base; fd++)
        if (!fd_is_target(p, fd))
            sys1(__NR_close, fd);
    for (uint32_t i = 0; i < p->nr_fds; i++) {
        if (f[i].src != f[i].dst)
            r = sys3(__NR_dup3, f[i].src, f[i].dst, f[i].cloexec ? O_CLOEXEC : 0);
        else
            r = sys3(__NR_fcntl, f[i].dst, F_SETFD, f[i].cloexec ? FD_CLOEXEC : 0);
        if (is_err(r))
            fail(p, UCR_STEP_FDS, r, (uint64_t)f[i].dst);
    }
}

static void restore_task_state(struct ucr_plan *p)
{
    long r;
    struct prctl_mm_map map = {
        .start_code = p->mm[0], .end_code = p->mm[1], .start_data = p->mm[2], .end_data = p->mm[3],
        .start_brk = p->mm[4], .brk = p->mm[5], .start_stack = p->mm[6], .arg_start = p->mm[7],
        .arg_end = p->mm[8], .env_start = p->mm[9], .env_end = p->mm[10],
        .auxv = (__u64 *)(uintptr_t)p->auxv, .auxv_size = p->auxv_size, .exe_fd = (uint32_t)p->exe_fd,
    };
    r = sys5(__NR_prctl, PR_SET_MM, PR_SET_MM_MAP, A(&map), sizeof(map), 0);
    if (r)
        fail(p, UCR_STEP_MM, r, 0);

    restore_fds(p);
    if (p->root_fd >= 0) {
        r = sys1(__NR_fchdir, p->root_fd);
        if (!r)
            r = sys1(__NR_chroot, A("."));
        if (r)
            fail(p, UCR_STEP_FS, r, 1);
    }
    r = sys1(__NR_fchdir, p->cwd_fd);
    if (r)
        fail(p, UCR_STEP_FS, r, 0);
    sys1(__NR_umask, p->umask);
    sys5(__NR_prctl, PR_SET_NAME, A(p->comm), 0, 0, 0);

    for (uint32_t i = 0; i < p->nr_rlimits; i++) {
        r = sys4(__NR_prlimit64, 0, i, A(&p->rlimits[2 * i]), 0);
        if (r)
            fail(p, UCR_STEP_RLIMIT, r, i);
    }
    for (int sig = 1; sig <= 64; sig++) {
        if (sig == 9 || sig == 19) /* SIGKILL, SIGSTOP */
            continue;
#if UCR_KSIGACTION_SAME_AS_PLAN
        r = sys4(__NR_rt_sigaction, sig, A(&p->sigactions[sig - 1]), 0, 8);
#else
        struct ucr_ksigaction ka;
        ucr_arch_ksigaction(&ka, &p->sigactions[sig - 1]);
        r = sys4(__NR_rt_sigaction, sig, A(&ka), 0, 8);
#endif
        if (r)
            fail(p, UCR_STEP_SIGACTION, r, (uint64_t)sig);
    }
    /* Queued to ourselves, so any si_code is accepted; still blocked here,
     * they are delivered as soon as rt_sigreturn installs the saved mask. */
    struct ucr_siginfo *si = (struct ucr_siginfo *)(uintptr_t)p->siginfo;
    long pid = sys0(__NR_getpid), tid = sys0(__NR_gettid);
    for (uint32_t i = 0; i < p->nr_siginfo; i++) {
        if (si[i].shared)
            r = sys3(__NR_rt_sigqueueinfo, pid, si[i].signo, A(si[i].info));
        else
            r = sys4(__NR_rt_tgsigqueueinfo, pid, tid, si[i].signo, A(si[i].info));
        if (r)
            fail(p, UCR_STEP_SIGQUEUE, r, si[i].signo);
    }
    if (p->rseq) {
        r = sys4(__NR_rseq, A(p->rseq), p->rseq_len, 0, p->rseq_sig);
        if (r)
            fail(p, UCR_STEP_RSEQ, r, p->rseq);
    }
    r = ucr_arch_restore_tls(p->tls);
    if (r)
        fail(p, UCR_STEP_TLS, r, 0);
    if (p->restore_creds) {
        r = sys2(__NR_setgroups, p->nr_groups, A(p->groups));
        if (!r)
            r = sys3(__NR_setresgid, p->gid, p->egid, p->sgid);
        if (!r)
            r = sys3(__NR_setresuid, p->uid, p->euid, p->suid);
        if (r)
            fail(p, UCR_STEP_CREDS, r, 0);
        sys1(__NR_setfsgid, p->fsgid);
        sys1(__NR_setfsuid, p->fsuid);
    }
}

__attribute__((section(".text.entry"), used, noreturn)) void ucr_restorer_entry(struct ucr_plan *p)
{
    uint64_t all = ~0ULL;
    long r;

    sys4(__NR_rt_sigprocmask, 2 /* SIG_SETMASK */, A(&all), 0, 8);
    /* glibc's rseq area is about to be unmapped: the kernel would fault on it. */
    if (p->cur_rseq) {
        r = sys4(__NR_rseq, A(p->cur_rseq), p->cur_rseq_len, RSEQ_FLAG_UNREGISTER, p->cur_rseq_sig);
        if (r)
            fail(p, UCR_STEP_RSEQ_DROP, r, p->cur_rseq);
    }
    replace_address_space(p);
    restore_task_state(p);
    memcpy((void *)(uintptr_t)p->sigframe_dest, (void *)(uintptr_t)p->sigframe, p->sigframe_len);

    struct ucr_status st = { UCR_STEP_READY, 0, 0 };
    sys3(__NR_write, p->status_fd, A(&st), sizeof(st));
    char go = 0;
    r = sys3(__NR_read, p->go_fd, A(&go), 1);
    if (r != 1 || go != 'G')
        sys1(__NR_exit_group, 1);
    sys3(__NR_close_range, p->fd_base, ~0U, 0);
    ucr_arch_sigreturn(p->sigreturn_sp);
}
