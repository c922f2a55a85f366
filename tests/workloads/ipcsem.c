/* A SysV semaphore set (IPC_PRIVATE) of two: semaphore 0 is a lock taken
 * with SEM_UNDO by three children and the root; under it a child bumps a
 * total in shared memory, its own count there, and semaphore 1, so that
 * semaphore 1 always equals the total mod MOD. The root, holding the lock,
 * checks that and that the children's counts add up to the total. */
#include "wl.h"
#include <sys/mman.h>
#include <sys/sem.h>

#define KIDS 3
#define MOD 10000

struct shared {
    uint64_t total, count[KIDS + 1];
};

static int sem;

static void op(unsigned short num, short delta, short flags)
{
    struct sembuf b = { num, delta, flags };
    while (semop(sem, &b, 1))
        if (errno != EINTR)
            bad("semop: %s", strerror(errno));
}

static int val(int num)
{
    int v = semctl(sem, num, GETVAL);
    if (v < 0)
        bad("GETVAL: %s", strerror(errno));
    return v;
}

/* Holding the lock: the semaphores agree with the shared total. */
static void check(const struct shared *sh, const char *who)
{
    if (val(0) != 0)
        bad("%s: holds the lock but semaphore 0 is %d", who, val(0));
    if ((uint64_t)val(1) != sh->total % MOD)
        bad("%s: semaphore 1 is %d, total is %llu", who, val(1), (unsigned long long)sh->total);
}

int main(void)
{
    sem = semget(IPC_PRIVATE, 2, IPC_CREAT | 0600);
    if (sem < 0)
        bad("semget: %s", strerror(errno));
    if (semctl(sem, 0, SETVAL, 1))
        bad("SETVAL: %s", strerror(errno));
    struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        bad("mmap: %s", strerror(errno));
    report_init();
    for (int k = 1; k <= KIDS; k++) {
        if (wl_fork())
            continue;
        for (uint32_t n = 0;; n++) {
            op(0, -1, SEM_UNDO);
            check(sh, "child");
            sh->total++;
            sh->count[k]++;
            op(1, sh->total % MOD ? 1 : -(MOD - 1), 0);
            op(0, 1, SEM_UNDO);
            report(k, n);
            sleep_ms(1 + k);
        }
    }
    report_seal();
    collect(KIDS);
    say("ready");
    for (;;) {
        collect(KIDS);
        check_children();
        op(0, -1, SEM_UNDO);
        check(sh, "root");
        uint64_t sum = 0;
        for (int k = 1; k <= KIDS; k++)
            sum += sh->count[k];
        if (sum != sh->total)
            bad("root: children's counts add up to %llu, total is %llu", (unsigned long long)sum,
                (unsigned long long)sh->total);
        op(0, 1, SEM_UNDO);
        tick();
        sleep_ms(20);
    }
}
