/* Three SysV segments (IPC_PRIVATE) attached differently:
 *   A (64 KiB): attached by the root before the fork, so by all three; every
 *     task counts in its own slot there.
 *   B (1 MiB): filled by the root, which then detaches it; child 1 attaches it
 *     read-write and counts in it, child 2 attaches it SHM_RDONLY and checks
 *     the count never goes back and the mapping stays read-only.
 *   C (4 MiB): attached twice by the root, detached by both children.
 * The root checks contents, that its two views of C are one memory, and each
 * segment's attach count (A 3, B 2, C 2). */
#include "wl.h"
#include <sys/shm.h>

#define A_SIZE (64UL << 10)
#define B_SIZE (1UL << 20)
#define C_SIZE (4UL << 20)
#define DATA 4096   /* each segment: counters in the first page, a pattern after */

static int segment(size_t size, const char *name)
{
    int id = shmget(IPC_PRIVATE, size, IPC_CREAT | 0600);
    if (id < 0)
        bad("shmget %s: %s", name, strerror(errno));
    return id;
}

static char *attach(int id, int flags)
{
    char *p = shmat(id, NULL, flags);
    if (p == (void *)-1)
        bad("shmat: %s", strerror(errno));
    return p;
}

static void contents(const char *p, size_t size, uint64_t seed, const char *who)
{
    if (!pattern_ok(p + DATA, size - DATA, seed))
        bad("%s: segment contents changed (pattern %llu)", who, (unsigned long long)seed);
}

/* The permissions /proc/self/maps shows for the mapping at p. */
static void perms(const void *p, const char *want, const char *who)
{
    char buf[16384] = "\n", key[32];
    size_t len = 1;
    ssize_t n;
    int fd = open("/proc/self/maps", O_RDONLY);
    if (fd < 0)
        bad("%s: cannot open /proc/self/maps: %s", who, strerror(errno));
    while (len < sizeof(buf) - 1 && (n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
        len += n;
    close(fd);
    snprintf(key, sizeof(key), "\n%lx-", (unsigned long)p);
    char *line = strstr(buf, key);
    char *sp = line ? strchr(line + 1, ' ') : NULL;
    if (!sp || strncmp(sp + 1, want, strlen(want)))
        bad("%s: the mapping at %p is not %s", who, p, want);
}

static void nattch(int id, unsigned long want, const char *name)
{
    struct shmid_ds ds;
    if (shmctl(id, IPC_STAT, &ds))
        bad("root: IPC_STAT of %s: %s", name, strerror(errno));
    if (ds.shm_nattch != want)
        bad("root: %s has %lu attaches, expected %lu", name, (unsigned long)ds.shm_nattch, want);
}

int main(void)
{
    int a_id = segment(A_SIZE, "A"), b_id = segment(B_SIZE, "B"), c_id = segment(C_SIZE, "C");
    char *a = attach(a_id, 0), *b = attach(b_id, 0), *c = attach(c_id, 0), *c2 = attach(c_id, 0);
    pattern_fill(a + DATA, A_SIZE - DATA, 1);
    pattern_fill(b + DATA, B_SIZE - DATA, 2);
    pattern_fill(c + DATA, C_SIZE - DATA, 3);
    shmdt(b);
    uint64_t *slot = (uint64_t *)a;
    report_init();
    for (int k = 1; k <= 2; k++) {
        if (wl_fork())
            continue;
        const char *who = k == 1 ? "child 1" : "child 2";
        if (shmdt(c) || shmdt(c2))
            bad("%s: shmdt: %s", who, strerror(errno));
        volatile uint64_t *bcount = (uint64_t *)attach(b_id, k == 1 ? 0 : SHM_RDONLY);
        uint64_t last = 0;
        for (uint32_t n = 0;; n++) {
            contents(a, A_SIZE, 1, who);
            contents((char *)bcount, B_SIZE, 2, who);
            if (slot[k] != n)
                bad("%s: its count in A is %llu, expected %u", who, (unsigned long long)slot[k], n);
            slot[k] = n + 1;
            if (k == 1) {
                *bcount = n + 1;
            } else {
                if (*bcount < last)
                    bad("%s: child 1's count in B went back from %llu to %llu", who,
                        (unsigned long long)last, (unsigned long long)*bcount);
                last = *bcount;
                perms((const void *)bcount, "r--s", who);
            }
            report(k, n);
            sleep_ms(20);
        }
    }
    report_seal();
    collect(2);
    say("ready");
    for (uint64_t n = 0;; n++) {
        collect(2);
        check_children();
        contents(a, A_SIZE, 1, "root");
        contents(c2, C_SIZE, 3, "root");
        if (slot[0] != n)
            bad("root: its count in A is %llu, expected %llu", (unsigned long long)slot[0], (unsigned long long)n);
        slot[0] = n + 1;
        ((volatile uint64_t *)c)[0] = n;
        if (((volatile uint64_t *)c2)[0] != n)
            bad("root: its two attaches of C are no longer one memory");
        nattch(a_id, 3, "A");
        nattch(b_id, 2, "B");
        nattch(c_id, 2, "C");
        tick();
    }
}
