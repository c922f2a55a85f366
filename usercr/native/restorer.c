/* The restorer: a freestanding, position-independent blob that runs inside the
 * new tasks. Each process's restorer first creates its children (which run
 * their own copy of it with their own plan), then replaces its address space
 * with the image's, reads its page contents straight from the image stream
 * when its turn comes, restores the per-process kernel state, creates its
 * threads, and every thread ends in rt_sigreturn once rstr says go.
 * No libc, no globals, no relocations: it is copied to a free address range
 * and entered there, so it also works where ptrace does not (qemu-user). */
#include <stdint.h>
#include <stddef.h>
#include <asm/unistd.h>
#include <linux/mman.h>
#include <linux/prctl.h>
#include <linux/fcntl.h>
#include <linux/fs.h>
#include <linux/futex.h>
#include <linux/rseq.h>
#include <linux/sched.h>
#include <linux/shm.h>
#include <linux/wait.h>
#include <linux/errno.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <linux/seccomp.h>
#include <linux/filter.h>
#include <asm/ioctls.h>
#include <asm/resource.h>
#include <asm/signal.h>
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

#define READ_CHUNK (256UL << 10)  /* read, then summed while in the cache */
#ifndef PR_TIMER_CREATE_RESTORE_IDS
#define PR_TIMER_CREATE_RESTORE_IDS 77  /* Linux 6.14 UAPI, newer than the toolchains' headers */
#endif
#define THREAD_FLAGS (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM)

/* The kernel's struct clone_args (v2, with set_tid). */
struct kclone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size;
};

struct ksigevent {
    uintptr_t value;
    int32_t signo, notify, tid;
    int32_t pad[13];
};

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

static struct ucr_shared *shared(struct ucr_plan *p) { return (struct ucr_shared *)(uintptr_t)p->shared; }

static void report(struct ucr_plan *p, int step, long err, uint64_t detail)
{
    struct ucr_status st = { step, (int32_t)-err, detail, p->index, shared(p)->slots[p->index].pid };
    sys3(__NR_write, p->status_fd, A(&st), sizeof(st));
}

static __attribute__((noreturn)) void fail(struct ucr_plan *p, int step, long err, uint64_t detail)
{
    report(p, step, err, detail);
    sys1(__NR_exit_group, 127);
    __builtin_unreachable();
}

static void futex_wait(uint32_t *addr, uint32_t val)
{
    sys4(__NR_futex, A(addr), FUTEX_WAIT, val, 0);
}

static void futex_wake(uint32_t *addr)
{
    sys3(__NR_futex, A(addr), FUTEX_WAKE, 0x7fffffff);
}

static void wait_until_equal(uint32_t *addr, uint32_t want)
{
    uint32_t v;
    while ((v = __atomic_load_n(addr, __ATOMIC_ACQUIRE)) != want)
        futex_wait(addr, v);
}

static void wait_at_least(uint32_t *addr, uint32_t want)
{
    uint32_t v;
    while ((v = __atomic_load_n(addr, __ATOMIC_ACQUIRE)) < want)
        futex_wait(addr, v);
}

static void publish(uint32_t *addr, uint32_t val)
{
    __atomic_store_n(addr, val, __ATOMIC_RELEASE);
    futex_wake(addr);
}

/* Reads exactly len bytes; a short stream is a truncated image. */
static long read_full(int fd, void *buf, uint64_t len)
{
    char *b = buf;
    while (len) {
        long r = sys3(__NR_read, fd, A(b), (long)len);
        if (r == -EINTR)
            continue;
        if (r < 0)
            return r;
        if (r == 0)
            return -ENODATA; /* truncated */
        b += r;
        len -= (uint64_t)r;
    }
    return 0;
}

static struct ucr_vma *vmas(struct ucr_plan *p) { return (struct ucr_vma *)(uintptr_t)p->vmas; }

/* Mappings whose contents come from the image's page data. */
static int needs_fill(const struct ucr_vma *v)
{
    return !(v->kind == UCR_VMA_SPECIAL || v->kind == UCR_VMA_SYSV ||
             (v->kind == UCR_VMA_FILE && (v->mmap_flags & MAP_SHARED)));
}

/* Page data may only land inside an image mapping that the restorer filled. */
static int pages_target_ok(struct ucr_plan *p, uint64_t addr, uint64_t len)
{
    struct ucr_vma *v = vmas(p);
    if (addr + len < addr)
        return 0;
    for (uint32_t i = 0; i < p->nr_vmas; i++) {
        if (!needs_fill(&v[i]))
            continue;
        if (addr >= v[i].start && addr + len <= v[i].end)
            return 1;
    }
    return 0;
}

/* Incremental images (usercr/incremental.py): a run of pages held by an
 * ancestor image, read from it at the recorded offset and checked against
 * the run's own checksum (the record itself is part of this image's). */
static long seek_to(int fd, uint64_t off)
{
#ifdef __NR__llseek
    uint64_t res;
    return sys5(__NR__llseek, fd, (long)(uint32_t)(off >> 32), (long)(uint32_t)off, A(&res), SEEK_SET);
#else
    return sys3(__NR_lseek, fd, (long)off, SEEK_SET);
#endif
}

static void read_parent_pages(struct ucr_plan *p, const struct ucr_rec_hdr *h, uint64_t at)
{
    struct ucr_rec_pages_parent rec;
    rec.h = *h;
    if (rec.h.len != sizeof(rec))
        fail(p, UCR_STEP_RECORD, -EINVAL, at);
    long r = read_full(p->image_fd, (char *)&rec + sizeof(rec.h), sizeof(rec) - sizeof(rec.h));
    if (r)
        fail(p, UCR_STEP_READ, r, at);
    uint64_t len = rec.nr_pages * p->page_size;
    if (!rec.depth || rec.depth > p->nr_chain || !pages_target_ok(p, rec.vaddr, len))
        fail(p, UCR_STEP_RECORD, -EINVAL, at);
    ucr_csum_words(p->csum, &rec, sizeof(rec));
    int fd = p->chain_fds[rec.depth - 1];
    char *dst = (char *)(uintptr_t)rec.vaddr;
    uint64_t sum[2] = { 0, 0 };
    sys3(__NR_madvise, A(rec.vaddr), A(len), MADV_POPULATE_WRITE);
    if ((r = seek_to(fd, rec.offset)) < 0 || (r = read_full(fd, dst, len)))
        fail(p, UCR_STEP_PARENT, r, rec.depth);
    ucr_csum_words(sum, dst, len);
    if (sum[0] != rec.csum_a || sum[1] != rec.csum_b)
        fail(p, UCR_STEP_PARENT, 0, rec.depth);
    p->image_offset += sizeof(rec);
}

/* Reads this process's section of PAGES records, up to its PAGES_END; the
 * last section is followed by the TAIL, whose checksum covers the stream. */
static void read_pages(struct ucr_plan *p)
{
    for (;;) {
        struct ucr_rec_pages rec;
        uint64_t at = p->image_offset;
        long r = read_full(p->image_fd, &rec.h, sizeof(rec.h));
        if (r)
            fail(p, UCR_STEP_READ, r, at);
        if (rec.h.type == UCR_REC_PAGES_END) {
            struct ucr_rec_pages_end end;
            if (rec.h.len != sizeof(end))
                fail(p, UCR_STEP_RECORD, -EINVAL, at);
            end.h = rec.h;
            r = read_full(p->image_fd, (char *)&end + sizeof(end.h), sizeof(end) - sizeof(end.h));
            if (r)
                fail(p, UCR_STEP_READ, r, at);
            if (end.pid != p->image_pid)
                fail(p, UCR_STEP_RECORD, -EINVAL, at);
            ucr_csum_words(p->csum, &end, sizeof(end));
            p->image_offset += sizeof(end);
            if (!p->last_pages)
                return;
            struct ucr_rec_tail tail;
            at = p->image_offset;
            r = read_full(p->image_fd, &tail, sizeof(tail));
            if (r)
                fail(p, UCR_STEP_READ, r, at);
            if (tail.h.type != UCR_REC_TAIL || tail.h.len != sizeof(tail))
                fail(p, UCR_STEP_RECORD, -EINVAL, at);
            if (tail.magic != UCR_TAIL_MAGIC || tail.csum_a != p->csum[0] || tail.csum_b != p->csum[1])
                fail(p, UCR_STEP_CHECKSUM, 0, at);
            return;
        }
        if (rec.h.type == UCR_REC_PAGES_PARENT) {
            read_parent_pages(p, &rec.h, at);
            continue;
        }
        if (rec.h.type != UCR_REC_PAGES || rec.h.len < sizeof(rec))
            fail(p, UCR_STEP_RECORD, -EINVAL, at);
        r = read_full(p->image_fd, (char *)&rec + sizeof(rec.h), sizeof(rec) - sizeof(rec.h));
        if (r)
            fail(p, UCR_STEP_READ, r, at);
        uint64_t len = rec.nr_pages * p->page_size;
        if (rec.h.len != sizeof(rec) + len || !pages_target_ok(p, rec.vaddr, len))
            fail(p, UCR_STEP_RECORD, -EINVAL, at);
        ucr_csum_words(p->csum, &rec, sizeof(rec));
        /* The pages in one call rather than a fault per page during the read
         * (~15-25 % of a restore of fresh memory); without it (before Linux
         * 5.14, qemu-user) the read faults them in. */
        sys3(__NR_madvise, A(rec.vaddr), A(len), MADV_POPULATE_WRITE);
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

/* The image is one stream: processes read their sections in turn, each
 * handing the running checksum and offset to the next. */
static void read_pages_in_turn(struct ucr_plan *p)
{
    struct ucr_shared *sh = shared(p);
    wait_until_equal(&sh->turn, (uint32_t)p->pages_turn);
    p->csum[0] = sh->csum[0];
    p->csum[1] = sh->csum[1];
    p->image_offset = sh->image_offset;
    read_pages(p);
    sh->csum[0] = p->csum[0];
    sh->csum[1] = p->csum[1];
    sh->image_offset = p->image_offset;
    publish(&sh->turn, (uint32_t)p->pages_turn + 1);
}


static uint64_t parse_hex(const char **s)
{
    uint64_t v = 0;
    for (;; (*s)++) {
        char c = **s;
        uint32_t d = c >= '0' && c <= '9' ? (uint32_t)(c - '0') : c >= 'a' && c <= 'f' ? (uint32_t)(c - 'a' + 10) : 16;
        if (d == 16)
            return v;
        v = (v << 4) | d;
    }
}

static void unmap_range(struct ucr_plan *p, uint64_t lo, uint64_t hi)
{
    if (hi > lo) {
        long r = sys2(__NR_munmap, A(lo), A(hi - lo));
        if (is_err(r))
            fail(p, UCR_STEP_UNMAP, r, lo);
    }
}

/* The next "lo-hi" line of /proc/self/maps text at *s; 0 at its end. */
static int next_listed(const char **s, uint64_t *lo, uint64_t *hi)
{
    if (!**s)
        return 0;
    *lo = parse_hex(s);
    (*s)++;
    *hi = parse_hex(s);
    while (**s && **s != '\n')
        (*s)++;
    if (**s)
        (*s)++;
    return 1;
}

/* This process's /proc/self/maps (qemu-user's view of the guest), read once
 * into maps_buf before anything changes. */
static void read_listed(struct ucr_plan *p)
{
    char *buf = (char *)(uintptr_t)p->maps_buf;
    uint32_t len = 0;
    long fd = sys4(__NR_openat, AT_FDCWD, A("/proc/self/maps"), O_RDONLY, 0), r;
    if (is_err(fd))
        fail(p, UCR_STEP_UNMAP, fd, 0);
    while (len < p->maps_size - 1 && (r = sys3(__NR_read, fd, A(buf + len), p->maps_size - 1 - len)) > 0)
        len += (uint32_t)r;
    sys1(__NR_close, fd);
    if (len >= p->maps_size - 1)
        fail(p, UCR_STEP_UNMAP, -E2BIG, 0);
    buf[len] = 0;
}

/* Unmaps every listed mapping outside the region (and below unmap_end, where
 * the gate mappings begin), but for the emulator's kept page. */
static void unmap_listed(struct ucr_plan *p)
{
    const char *s = (const char *)(uintptr_t)p->maps_buf;
    uint64_t lo, hi;
    while (next_listed(&s, &lo, &hi)) {
        if (hi > p->unmap_end)
            hi = p->unmap_end;
        if (lo >= p->keep_start && hi <= p->keep_end)
            continue;
        unmap_range(p, lo, hi < p->region_start ? hi : p->region_start);
        unmap_range(p, lo > p->region_end ? lo : p->region_end, hi);
    }
}

/* qemu-user keeps the brk itself: its end (target_brk) and the end of what it
 * reserved for the heap (brk_page, which only grows). Moving the end up zeroes
 * the memory between, written by the emulator itself, so it must be mapped
 * then (else qemu faults inside the syscall and aborts: "cpu_exec: assertion
 * failed: (cpu == current_cpu)"), and [brk, brk_page) must stay mapped. Below
 * the emulator's first brk (that of rstr's executable) brk() is ignored; -ENOMEM:
 * it could not map the heap's growth. */
static void brk_to(struct ucr_plan *p, uint64_t to)
{
    if ((uint64_t)(unsigned long)sys1(__NR_brk, A(to)) != to)
        fail(p, UCR_STEP_BRK, -ENOMEM, to);
}

/* The lowest brk the emulator takes in [above, now], where brk(above) was
 * ignored (below its first brk): found by halving, each taken value only
 * lowering the brk (nothing zeroed); the brk is left there. */
static uint64_t lowest_brk(struct ucr_plan *p, uint64_t above, uint64_t now)
{
    uint64_t lo = above, hi = now;
    while (hi - lo > p->page_size) {
        uint64_t mid = (lo + (hi - lo) / 2) & ~(p->page_size - 1);
        if (mid <= lo)
            break;
        if ((uint64_t)(unsigned long)sys1(__NR_brk, A(mid)) == mid)
            hi = mid;
        else
            lo = mid;
    }
    return hi;
}

/* brk_page: the end of the listed mapping holding the last byte below the brk. */
static uint64_t brk_reserved_end(struct ucr_plan *p, uint64_t brk)
{
    const char *s = (const char *)(uintptr_t)p->maps_buf;
    uint64_t lo, hi, end = (brk + p->page_size - 1) & ~(p->page_size - 1);
    while (next_listed(&s, &lo, &hi))
        if (lo < brk && brk <= hi && hi > end)
            end = hi;
    return end;
}

/* The emulator's heap reservation beyond the image's heap, [from, to): mapped
 * empty, so that the program's brk can grow into it; an image mapping there
 * (other than the heap itself) would be zeroed by that growth: refused. */
static void hold_brk_reserve(struct ucr_plan *p, uint64_t from, uint64_t to)
{
    struct ucr_vma *v = vmas(p);
    uint64_t brk = p->mm[5];
    for (uint32_t i = 0; i < p->nr_vmas; i++) {
        if (v[i].start < brk && brk <= v[i].end && v[i].end > from)
            from = v[i].end;  /* the heap's own mapping */
    }
    if (from >= to)
        return;
    for (uint32_t i = 0; i < p->nr_vmas; i++)
        if (v[i].start < to && from < v[i].end)
            fail(p, UCR_STEP_BRK, -EEXIST, v[i].start);
    long r = ucr_sys6(MMAP_NR, A(from), A(to - from), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                      -1, 0);
    if (is_err(r))
        fail(p, UCR_STEP_MAP, r, from);
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
    uint64_t brk_page = 0;
    if (p->forked) {
        read_listed(p);
        uint64_t brk = p->mm[5];
        uint64_t now = (uint64_t)(unsigned long)sys1(__NR_brk, 0), to;
        brk_page = brk_reserved_end(p, now);
        to = brk < brk_page ? brk : brk_page;  /* what it zeroes is still rstr's memory */
        if ((uint64_t)(unsigned long)sys1(__NR_brk, A(to)) != to)
            p->brk_raised = lowest_brk(p, to, now);  /* the heap room up to it is held below */
        unmap_listed(p);
        if (brk > brk_page)
            brk_to(p, brk);  /* it maps [brk_page, brk) itself, free now, and zeroes nothing */
    } else {
        r = sys2(__NR_munmap, 0, A(p->region_start));
        if (is_err(r))
            fail(p, UCR_STEP_UNMAP, r, 0);
        if (p->unmap_end > p->region_end) {
            r = sys2(__NR_munmap, A(p->region_end), A(p->unmap_end - p->region_end));
            if (is_err(r))
                fail(p, UCR_STEP_UNMAP, r, p->region_end);
        }
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
        if (v[i].kind == UCR_VMA_SYSV) {
            int flags = (v[i].prot & PROT_WRITE ? 0 : SHM_RDONLY) | (v[i].prot & PROT_EXEC ? SHM_EXEC : 0);
            r = sys3(__NR_shmat, v[i].fd, A(v[i].start), flags);
            /* 32-bit ARM wants SHMLBA (16 KiB) alignment at a given address,
             * though its own choices need not have it: attach anywhere and
             * move it there, with the place held meanwhile so that the
             * attachment cannot overlap it (mremap refuses an overlap). */
            if (r == -EINVAL) {
                r = ucr_sys6(MMAP_NR, A(v[i].start), A(len), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                             -1, 0);
                if (!is_err(r))
                    r = sys3(__NR_shmat, v[i].fd, 0, flags);
                if (!is_err(r) && (uint64_t)(unsigned long)r != v[i].start)
                    r = sys5(__NR_mremap, r, A(len), A(len), MREMAP_MAYMOVE | MREMAP_FIXED, A(v[i].start));
            }
            if (is_err(r) || (uint64_t)(unsigned long)r != v[i].start)
                fail(p, UCR_STEP_MAP, is_err(r) ? r : -EEXIST, v[i].start);
            continue;
        }
        uint32_t prot = needs_fill(&v[i]) ? (v[i].prot | PROT_WRITE) : v[i].prot;
        r = ucr_sys6(MMAP_NR, A(v[i].start), A(len), prot, v[i].mmap_flags | MAP_FIXED, v[i].fd,
                     MMAP_OFF(v[i].offset, p->page_size));
        if (is_err(r) || (uint64_t)(unsigned long)r != v[i].start)
            fail(p, UCR_STEP_MAP, is_err(r) ? r : -EEXIST, v[i].start);
    }
    if (p->forked)
        hold_brk_reserve(p, (p->mm[5] + p->page_size - 1) & ~(p->page_size - 1), brk_page);
    read_pages_in_turn(p);
    for (uint32_t i = 0; i < p->nr_vmas; i++) {
        if (!needs_fill(&v[i]) || (v[i].prot & PROT_WRITE))
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

/* A file of the task's own /proc entry names the task by its new PID only
 * once the task exists, so the task opens it (after its memory is back, so
 * that a seq_file's offset is replayed against the final mappings). */
static void open_own_proc_file(struct ucr_plan *p, struct ucr_fd *f, uint32_t i)
{
    long r = -1, opened = -1;
    for (uint32_t j = 0; j < i && r < 0; j++)
        if (f[j].path == f[i].path)
            r = sys3(__NR_dup3, f[j].dst, f[i].dst, f[i].cloexec ? O_CLOEXEC : 0);
    if (r < 0) {
        opened = sys4(__NR_openat, AT_FDCWD, f[i].path, f[i].flags | O_CLOEXEC, 0);
        if (is_err(opened))
            fail(p, UCR_STEP_FDS, opened, (uint64_t)f[i].dst);
        if (opened == f[i].dst)
            r = f[i].cloexec ? 0 : sys3(__NR_fcntl, opened, F_SETFD, 0);
        else {
            r = sys3(__NR_dup3, opened, f[i].dst, f[i].cloexec ? O_CLOEXEC : 0);
            sys1(__NR_close, opened);
        }
        if (!is_err(r) && f[i].pos)
            r = seek_to(f[i].dst, f[i].pos);
    }
    if (is_err(r))
        fail(p, UCR_STEP_FDS, r, (uint64_t)f[i].dst);
}

static void restore_fds(struct ucr_plan *p)
{
    struct ucr_fd *f = (struct ucr_fd *)(uintptr_t)p->fds;
    long r;
    for (int fd = 0; fd < p->fd_base; fd++)
        if (!fd_is_target(p, fd))
            sys1(__NR_close, fd);
    for (uint32_t i = 0; i < p->nr_fds; i++) {
        if (f[i].path)
            continue;
        if (f[i].src != f[i].dst)
            r = sys3(__NR_dup3, f[i].src, f[i].dst, f[i].cloexec ? O_CLOEXEC : 0);
        else
            r = sys3(__NR_fcntl, f[i].dst, F_SETFD, f[i].cloexec ? FD_CLOEXEC : 0);
        if (is_err(r))
            fail(p, UCR_STEP_FDS, r, (uint64_t)f[i].dst);
    }
    for (uint32_t i = 0; i < p->nr_fds; i++)
        if (f[i].path)
            open_own_proc_file(p, f, i);
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
    r = p->skip_mm ? 0 : sys5(__NR_prctl, PR_SET_MM, PR_SET_MM_MAP, A(&map), sizeof(map), 0);
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
        if (sig == SIGKILL || sig == SIGSTOP)
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
    for (int which = 0; which < 3; which++) {
        long tv[4];
        for (int k = 0; k < 4; k++)
            tv[k] = (long)p->itimers[4 * which + k];
        if (!tv[2] && !tv[3])
            continue;
        r = sys3(__NR_setitimer, which, A(tv), 0);
        if (r)
            fail(p, UCR_STEP_TIMER, r, 100 + which);
    }
}

#ifdef __NR_fcntl64
#define FCNTL_NR __NR_fcntl64
#define SETLK64 F_SETLK64
#else
#define FCNTL_NR __NR_fcntl
#define SETLK64 F_SETLK
#endif

/* Closes every fd rstr handed down (fd_base and up) but the status and go
 * pipes: a POSIX lock goes away when its process closes any fd of the file,
 * so that must be over before the locks are taken. */
static void close_handed_down(struct ucr_plan *p)
{
    uint32_t lo = (uint32_t)p->status_fd, hi = (uint32_t)p->go_fd;
    if (lo > hi) {
        lo = hi;
        hi = (uint32_t)p->status_fd;
    }
    if (lo > (uint32_t)p->fd_base)
        sys3(__NR_close_range, p->fd_base, lo - 1, 0);
    if (hi > lo + 1)
        sys3(__NR_close_range, lo + 1, hi - 1, 0);
    sys3(__NR_close_range, hi + 1, ~0U, 0);
}

static void take_posix_locks(struct ucr_plan *p)
{
    struct ucr_lock *l = (struct ucr_lock *)(uintptr_t)p->locks;
    for (uint32_t i = 0; i < p->nr_locks; i++) {
        struct flock64 fl;
        memset(&fl, 0, sizeof(fl));
        fl.l_type = (short)l[i].type;
        fl.l_whence = 0; /* SEEK_SET */
        fl.l_start = l[i].start;
        fl.l_len = l[i].len;
        long r = sys3(FCNTL_NR, l[i].fd, SETLK64, A(&fl));
        if (r)
            fail(p, UCR_STEP_LOCK, r, i);
    }
}

static struct ucr_thread *threads(struct ucr_plan *p) { return (struct ucr_thread *)(uintptr_t)p->threads; }

/* POSIX timers keep their ids: asked for explicitly where the kernel allows
 * it (6.14+), otherwise ids are handed out in increasing order from 0. */
static void restore_timers(struct ucr_plan *p)
{
    struct ucr_timer *t = (struct ucr_timer *)(uintptr_t)p->timers;
    int explicit_ids = p->nr_timers && !sys2(__NR_prctl, PR_TIMER_CREATE_RESTORE_IDS, 1);
    for (uint32_t i = 0; i < p->nr_timers; i++) {
        struct ksigevent ev;
        memset(&ev, 0, sizeof(ev));
        ev.value = (uintptr_t)t[i].value;
        ev.signo = t[i].signo;
        ev.notify = t[i].notify;
        if (t[i].thread >= 0)
            ev.tid = threads(p)[t[i].thread].new_tid;
        int32_t id;
        long r;
        do {
            id = t[i].id;
            r = sys3(__NR_timer_create, t[i].clockid, A(&ev), A(&id));
            if (!r && !explicit_ids && id < t[i].id)
                sys1(__NR_timer_delete, id);
        } while (!r && !explicit_ids && id < t[i].id);
        if (!r && id != t[i].id)
            r = -EEXIST; /* the id is taken */
        if (r)
            fail(p, UCR_STEP_TIMER, r, (uint64_t)t[i].id);
        long its[4] = { (long)t[i].its[0], (long)t[i].its[1], (long)t[i].its[2], (long)t[i].its[3] };
        if ((its[2] || its[3]) && (r = sys4(__NR_timer_settime, id, 0, A(its), 0)))
            fail(p, UCR_STEP_TIMER, r, (uint64_t)t[i].id);
    }
    if (explicit_ids)
        sys2(__NR_prctl, PR_TIMER_CREATE_RESTORE_IDS, 0);
}

/* The kernel takes a siginfo with any si_code only from the thread it is
 * queued to (a process-wide one: from the main thread, whose tid is the
 * tgid), so each thread queues its own. Still blocked, they are delivered as
 * soon as rt_sigreturn installs each thread's saved mask. */
static void queue_signals(struct ucr_plan *p, uint32_t thread)
{
    struct ucr_siginfo *si = (struct ucr_siginfo *)(uintptr_t)p->siginfo;
    long pid = sys0(__NR_getpid), tid = sys0(__NR_gettid), r;
    for (uint32_t i = 0; i < p->nr_siginfo; i++) {
        if (si[i].shared && thread == 0)
            r = sys3(__NR_rt_sigqueueinfo, pid, si[i].signo, A(si[i].info));
        else if (!si[i].shared && si[i].thread == thread)
            r = sys4(__NR_rt_tgsigqueueinfo, pid, tid, si[i].signo, A(si[i].info));
        else
            continue;
        if (r)
            fail(p, UCR_STEP_SIGQUEUE, r, si[i].signo);
    }
}

/* Bit n of a capability set, without a 64-bit shift by a variable (32-bit ARM). */
static int cap_bit(uint64_t set, uint32_t n)
{
    uint32_t w = n < 32 ? (uint32_t)set : (uint32_t)(set >> 32);
    return (w >> (n & 31)) & 1;
}

static long capset3(uint64_t eff, uint64_t prm, uint64_t inh)
{
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2] = {
        { (uint32_t)eff, (uint32_t)prm, (uint32_t)inh },
        { (uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32) },
    };
    return sys2(__NR_capset, A(&h), A(d));
}

/* Installing a seccomp filter needs no_new_privs or CAP_SYS_ADMIN: a thread
 * that will have neither keeps CAP_SYS_ADMIN until its filters are in. */
static int admin_for_filters(struct ucr_thread *t)
{
    return t->nr_filters && !t->no_new_privs && !(t->cap_eff & (1ULL << CAP_SYS_ADMIN));
}

static void final_caps(struct ucr_plan *p, struct ucr_thread *t)
{
    long r = capset3(t->cap_eff, t->cap_prm, t->cap_inh);
    if (r)
        fail(p, UCR_STEP_CAPS, r, 2);
}

/* Credentials of the calling thread; the kernel keeps them per thread. The
 * bounding set is narrowed while CAP_SETPCAP is there; KEEPCAPS keeps the
 * permitted set across setresuid; an interim capset with CAP_SETPCAP allows
 * the ambient raises and the securebits; the last capset gives the exact sets. */
/* A user other than root keeps its own credentials: the thread only drops
 * what rstr has beyond the image (CAP_CHECKPOINT_RESTORE given to rstr).
 * Python checked that the image's sets are within rstr's and its bounding
 * set the same; securebits are set only if they differ (that needs
 * CAP_SETPCAP, which such a user lacks). */
static void drop_caps(struct ucr_plan *p, struct ucr_thread *t)
{
    long r = capset3(t->cap_eff, t->cap_prm, t->cap_inh);
    if (!r)
        r = sys5(__NR_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (r)
        fail(p, UCR_STEP_CAPS, r, 5);
    for (uint32_t c = 0; c <= p->cap_last_cap; c++)
        if (cap_bit(t->cap_amb, c) && (r = sys5(__NR_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0)))
            fail(p, UCR_STEP_CAPS, r, 200 + c);
    if (sys2(__NR_prctl, PR_GET_SECUREBITS, 0) != (long)t->securebits &&
        (r = sys2(__NR_prctl, PR_SET_SECUREBITS, t->securebits)))
        fail(p, UCR_STEP_CAPS, r, 3);
}

static void restore_creds(struct ucr_plan *p, struct ucr_thread *t)
{
    long r;
    if (!p->restore_creds) {
        if (t->restore_caps)
            drop_caps(p, t);
        return;
    }
    if (t->restore_caps) {
        r = sys2(__NR_prctl, PR_SET_KEEPCAPS, 1);
        if (r)
            fail(p, UCR_STEP_CAPS, r, 0);
        for (uint32_t c = 0; c <= p->cap_last_cap; c++)
            if (!cap_bit(t->cap_bset, c) && (r = sys2(__NR_prctl, PR_CAPBSET_DROP, c)))
                fail(p, UCR_STEP_CAPS, r, 100 + c);
    }
    r = sys2(__NR_setgroups, p->nr_groups, A(p->groups));
    if (!r)
        r = sys3(__NR_setresgid, p->gid, p->egid, p->sgid);
    if (!r)
        r = sys3(__NR_setresuid, p->uid, p->euid, p->suid);
    if (r)
        fail(p, UCR_STEP_CREDS, r, 0);
    sys1(__NR_setfsgid, p->fsgid);
    sys1(__NR_setfsuid, p->fsuid);
    if (!t->restore_caps)
        return;
    uint64_t extra = (1ULL << CAP_SETPCAP) | (admin_for_filters(t) ? 1ULL << CAP_SYS_ADMIN : 0);
    r = capset3(t->cap_prm | extra, t->cap_prm | extra, t->cap_inh);
    if (r)
        fail(p, UCR_STEP_CAPS, r, 1);
    for (uint32_t c = 0; c <= p->cap_last_cap; c++)
        if (cap_bit(t->cap_amb, c) && (r = sys5(__NR_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0)))
            fail(p, UCR_STEP_CAPS, r, 200 + c);
    r = sys2(__NR_prctl, PR_SET_SECUREBITS, t->securebits);
    if (r)
        fail(p, UCR_STEP_CAPS, r, 3);
    if (!admin_for_filters(t))
        final_caps(p, t);
}

/* The last thing a thread does before it reports ready: a filter may forbid
 * syscalls the restorer still makes. What remains after it (docs/
 * architecture.md): capset when CAP_SYS_ADMIN was kept for it, futex,
 * write and read (the ready/go handshake), close_range, kill (a stopped
 * process) and rt_sigreturn. */
static void restore_seccomp(struct ucr_plan *p, struct ucr_thread *t)
{
    struct ucr_filter *f = (struct ucr_filter *)(uintptr_t)t->filters;
    long r;
    if (t->no_new_privs && (r = sys5(__NR_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)))
        fail(p, UCR_STEP_CAPS, r, 4);
    for (uint32_t i = 0; i < t->nr_filters; i++) {
        struct sock_fprog prog = { (unsigned short)f[i].len, (struct sock_filter *)(uintptr_t)f[i].insns };
        r = sys3(__NR_seccomp, SECCOMP_SET_MODE_FILTER, f[i].flags, A(&prog));
        if (r > 0)  /* TSYNC: the thread that could not follow */
            r = -ESRCH;
        if (r)
            fail(p, UCR_STEP_SECCOMP, r, i);
    }
    if (p->restore_creds && t->restore_caps && admin_for_filters(t))
        final_caps(p, t);
}

/* Per-thread state, the same for the main thread and the others. */
static void restore_thread_state(struct ucr_plan *p, struct ucr_thread *t)
{
    long r;
    if (t->rseq) {
        r = sys4(__NR_rseq, A(t->rseq), t->rseq_len, 0, t->rseq_sig);
        if (r)
            fail(p, UCR_STEP_RSEQ, r, t->rseq);
    }
    r = ucr_arch_restore_tls(t->tls);
    if (r)
        fail(p, UCR_STEP_TLS, r, 0);
    sys1(__NR_set_tid_address, A(t->clear_child_tid));
    if (t->robust_list)
        sys2(__NR_set_robust_list, A(t->robust_list), A(t->robust_len));
    restore_creds(p, t);
    memcpy((void *)(uintptr_t)t->sigframe_dest, (void *)(uintptr_t)t->sigframe, t->sigframe_len);
}

static __attribute__((noreturn)) void thread_main(void *arg)
{
    struct ucr_thread *t = arg;
    struct ucr_plan *p = (struct ucr_plan *)(uintptr_t)t->plan;
    queue_signals(p, (uint32_t)(t - threads(p)));
    restore_thread_state(p, t);
    restore_seccomp(p, t);
    __atomic_fetch_add(&p->threads_ready, 1, __ATOMIC_ACQ_REL);
    futex_wake(&p->threads_ready);
    wait_until_equal(&p->threads_go, 1);
    ucr_arch_sigreturn(t->sigreturn_sp);
}

static void create_threads(struct ucr_plan *p)
{
    struct ucr_thread *t = threads(p);
    t[0].new_tid = (int32_t)sys0(__NR_gettid);
    for (uint32_t i = 1; i < p->nr_threads; i++) {
        struct kclone_args args;
        memset(&args, 0, sizeof(args));
        args.flags = THREAD_FLAGS;
        args.stack = t[i].stack_top - 16384;
        args.stack_size = 16384;
        if (t[i].tid) {
            args.set_tid = (uint64_t)(uintptr_t)&t[i].tid;
            args.set_tid_size = 1;
        }
        long r = ucr_arch_clone_thread(&args, sizeof(args), thread_main, &t[i]);
        if (r < 0)
            fail(p, UCR_STEP_THREAD, r, (uint64_t)t[i].tid);
        t[i].new_tid = (int32_t)r;
    }
    wait_until_equal(&p->threads_ready, p->nr_threads - 1);
}

/* A zombie comes back only to die again the same way. */
static __attribute__((noreturn)) void become_zombie(struct ucr_plan *p)
{
    int status = p->exit_status, sig = status & 0x7f;
    sys5(__NR_prctl, PR_SET_NAME, A(p->comm), 0, 0, 0);
    publish(&shared(p)->slots[p->index].state, UCR_SLOT_ZOMBIE);
    if (sig) {
        uint64_t no_core[2] = { 0, 0 }, none = 0, unblock = 1ULL << (sig - 1);
        struct ucr_sigaction dfl = { 0, 0, 0, 0 };
        sys4(__NR_prlimit64, 0, RLIMIT_CORE, A(no_core), 0);
#if UCR_KSIGACTION_SAME_AS_PLAN
        sys4(__NR_rt_sigaction, sig, A(&dfl), 0, 8);
#else
        struct ucr_ksigaction ka;
        ucr_arch_ksigaction(&ka, &dfl);
        sys4(__NR_rt_sigaction, sig, A(&ka), 0, 8);
#endif
        sys2(__NR_kill, sys0(__NR_getpid), sig);
        sys4(__NR_rt_sigprocmask, SIG_UNBLOCK, A(&unblock), A(&none), 8);
    }
    sys1(__NR_exit_group, (status >> 8) & 0xff);
    __builtin_unreachable();
}

static void set_ids(struct ucr_plan *p)
{
    struct ucr_shared *sh = shared(p);
    long r = 0;
    if (p->setsid) {
        r = sys0(__NR_setsid);
        if (!is_err(r) && p->ctty_fd >= 0)
            r = sys3(__NR_ioctl, p->ctty_fd, TIOCSCTTY, 0);
    } else if (p->pgid_action == 1) {
        r = sys2(__NR_setpgid, 0, 0);
        int32_t me = (int32_t)sys0(__NR_getpid);
        if (!r && p->ctty_fd >= 0 && p->ctty_fg)
            r = sys3(__NR_ioctl, p->ctty_fd, TIOCSPGRP, A(&me));
    }
    else if (p->pgid_action == 2) {
        struct ucr_slot *leader = &sh->slots[p->pgid_leader];
        wait_at_least(&leader->state, UCR_SLOT_IDS);
        r = sys2(__NR_setpgid, 0, leader->pid);
    }
    if (is_err(r))
        fail(p, UCR_STEP_IDS, r, (uint64_t)p->image_pid);
    publish(&sh->slots[p->index].state, UCR_SLOT_IDS);
}

static __attribute__((noreturn)) void restore_process(struct ucr_plan *p);

static void create_children(struct ucr_plan *p)
{
    struct ucr_child *c = (struct ucr_child *)(uintptr_t)p->children;
    for (uint32_t i = 0; i < p->nr_children; i++) {
        struct kclone_args args;
        if (c[i].adopted)
            continue;
        memset(&args, 0, sizeof(args));
        args.exit_signal = (uint64_t)c[i].exit_signal;
        if (c[i].clone_parent) {  /* clone3 wants no exit signal here: the child takes its creator's */
            args.flags = CLONE_PARENT;
            args.exit_signal = 0;
        }
        if (c[i].pid) {
            args.set_tid = (uint64_t)(uintptr_t)&c[i].pid;
            args.set_tid_size = 1;
        }
        long r = sys2(__NR_clone3, A(&args), sizeof(args));
        if (r == 0)  /* a fresh stack, however deep the tree */
            ucr_arch_jump((uint64_t)(uintptr_t)restore_process, c[i].plan, p->stack_top);
        if (r < 0)
            fail(p, UCR_STEP_CLONE, r, (uint64_t)c[i].pid);
        /* the child writes it too, but maybe not before we need it */
        shared(p)->slots[((struct ucr_plan *)(uintptr_t)c[i].plan)->index].pid = (int32_t)r;
    }
}

/* A child that is a zombie exits at once, a placeholder once it made its
 * children (also one a placeholder made for us with CLONE_PARENT); their exits must not add a SIGCHLD the image did not have
 * pending, so wait for each and drop the signal (a pending one in the image
 * is queued again afterwards). */
static void settle_zombie_children(struct ucr_plan *p)
{
    struct ucr_child *c = (struct ucr_child *)(uintptr_t)p->children;
    int any = 0;
    for (uint32_t i = 0; i < p->nr_children; i++) {
        if (!c[i].zombie && !c[i].placeholder)
            continue;
        struct ucr_plan *cp = (struct ucr_plan *)(uintptr_t)c[i].plan;
        if (c[i].adopted)  /* its creator may not have made it yet */
            wait_at_least(&shared(p)->slots[cp->index].state, UCR_SLOT_IDS);
        int32_t pid = shared(p)->slots[cp->index].pid;
        char info[128];
        long r;
        do  /* a zombie stays one; a placeholder is reaped */
            r = sys5(__NR_waitid, P_PID, pid, A(info), WEXITED | (c[i].zombie ? WNOWAIT : 0), 0);
        while (r == -EINTR);
        if (r)
            fail(p, UCR_STEP_ZOMBIE, r, (uint64_t)c[i].pid);
        any = 1;
    }
    if (any) {
        uint64_t chld = 1ULL << (SIGCHLD - 1);
        long zero[2] = { 0, 0 };
        char info[128];
        sys4(__NR_rt_sigtimedwait, A(&chld), A(info), A(zero), 8);
    }
}

static __attribute__((noreturn)) void restore_process(struct ucr_plan *p)
{
    long r;
    struct ucr_slot *slot = &shared(p)->slots[p->index];
    /* Until the end, a restorer dies with its parent: nothing is left
     * half-restored if rstr or a parent fails. */
    sys2(__NR_prctl, PR_SET_PDEATHSIG, 9);
    slot->pid = (int32_t)sys0(__NR_getpid);
    set_ids(p);
    if (p->zombie)
        become_zombie(p);
    create_children(p);
    if (p->placeholder)
        sys1(__NR_exit_group, 0);
    replace_address_space(p);
    restore_task_state(p);
    close_handed_down(p);
    take_posix_locks(p);
    settle_zombie_children(p);
    create_threads(p);
    restore_timers(p);
    queue_signals(p, 0);
    restore_thread_state(p, &threads(p)[0]);
    sys2(__NR_prctl, PR_SET_PDEATHSIG, p->pdeathsig);
    /* Every thread has its credentials by now (each change set the flag to
     * fs.suid_dumpable); 2 cannot be set, and stays what that gave. */
    if (p->dumpable <= 1 && (r = sys2(__NR_prctl, PR_SET_DUMPABLE, p->dumpable)))
        fail(p, UCR_STEP_CREDS, r, 1);
    restore_seccomp(p, &threads(p)[0]);

    publish(&slot->state, UCR_SLOT_READY);
    report(p, UCR_STEP_READY, 0, p->brk_raised);
    char go = 0;
    r = sys3(__NR_read, p->go_fd, A(&go), 1);
    if (r != 1 || go != 'G')
        sys1(__NR_exit_group, 1);
    sys1(__NR_close, p->status_fd);
    sys1(__NR_close, p->go_fd);
    /* A stopped process stops here, its threads still waiting for go, so
     * that after SIGCONT every thread runs on from where it was (rstr, when
     * it follows the release to unmap the region, holds this stop and sends
     * it again once the program's state is back). */
    if (p->stopped)
        sys2(__NR_kill, slot->pid, SIGSTOP);
    if (p->nr_threads > 1)  /* rstr follows these syscalls one by one: none to spare */
        publish(&p->threads_go, 1);
    ucr_arch_sigreturn(threads(p)[0].sigreturn_sp);
}

__attribute__((section(".text.entry"), used, noreturn)) void ucr_restorer_entry(struct ucr_plan *p)
{
    uint64_t all = ~0ULL;
    long r;

    sys4(__NR_rt_sigprocmask, SIG_SETMASK, A(&all), 0, 8);
    /* glibc's rseq area in rstr is about to be unmapped: the kernel would
     * fault on it. Children are created after this, without it. */
    if (p->cur_rseq) {
        r = sys4(__NR_rseq, A(p->cur_rseq), p->cur_rseq_len, RSEQ_FLAG_UNREGISTER, p->cur_rseq_sig);
        if (r)
            fail(p, UCR_STEP_RSEQ_DROP, r, p->cur_rseq);
    }
    restore_process(p);
}
