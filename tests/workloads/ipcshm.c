/* One SysV shared memory segment (IPC_PRIVATE) attached by the root and two
 * children, and by each child a second time at another address. Each child
 * fills its area once, then counts in its slot (checking that both its views
 * show the count); the root checks the counts advance, every area keeps its
 * contents and IPC_STAT still counts 5 attaches. */
#include "wl.h"
#include <sys/shm.h>

#define AREA (256UL << 10)
#define SIZE (4 * AREA)     /* area 0 holds the counts, area k child k's data, area 3 the root's */

static void *attach(int id)
{
    void *p = shmat(id, NULL, 0);
    if (p == (void *)-1)
        bad("shmat: %s", strerror(errno));
    return p;
}

int main(void)
{
    int id = shmget(IPC_PRIVATE, SIZE, IPC_CREAT | 0600);
    if (id < 0)
        bad("shmget: %s", strerror(errno));
    char *seg = attach(id);
    uint64_t *count = (uint64_t *)seg;
    pattern_fill(seg + 3 * AREA, AREA, 3);
    for (int k = 1; k <= 2; k++) {
        if (wl_fork())
            continue;
        char *view = attach(id);
        pattern_fill(seg + k * AREA, AREA, k);
        for (uint64_t n = 1;; n++) {
            __atomic_store_n(&count[k], n, __ATOMIC_RELEASE);
            if (((volatile uint64_t *)view)[k] != n)
                bad("child %d: its second attach shows count %llu, not %llu", k,
                    (unsigned long long)((volatile uint64_t *)view)[k], (unsigned long long)n);
            if (!pattern_ok(view + 3 * AREA, AREA, 3) || !pattern_ok(view + k * AREA, AREA, k))
                bad("child %d: the segment's contents changed", k);
            sleep_ms(20);
        }
    }
    uint64_t seen[3] = { 0 };
    for (;;) {
        for (int k = 1; k <= 2; k++) {
            uint64_t c;
            while ((c = __atomic_load_n(&count[k], __ATOMIC_ACQUIRE)) == seen[k]) {
                check_children();
                sleep_ms(2);
            }
            if (c < seen[k])
                bad("root: child %d's count went back from %llu to %llu", k, (unsigned long long)seen[k],
                    (unsigned long long)c);
            seen[k] = c;
            if (!pattern_ok(seg + k * AREA, AREA, k))
                bad("root: child %d's area changed", k);
        }
        if (!pattern_ok(seg + 3 * AREA, AREA, 3))
            bad("root: its own area changed");
        struct shmid_ds ds;
        if (shmctl(id, IPC_STAT, &ds))
            bad("root: IPC_STAT of segment %d: %s", id, strerror(errno));
        if (ds.shm_nattch != 5 || ds.shm_segsz != SIZE)
            bad("root: segment has %lu attaches and %zu bytes, expected 5 and %lu", (unsigned long)ds.shm_nattch,
                (size_t)ds.shm_segsz, SIZE);
        if (!wl_tick)
            say("ready");
        tick();
    }
}
