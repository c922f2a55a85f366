/* Children that exit with 3, 4 and 5, one killed by SIGTERM, and a live
 * child with a zombie of its own (exit 6). Nobody reaps: every round each
 * parent checks with waitid(WNOWAIT) that its zombies are still there with
 * their status and its live child is alive. The live child shows progress
 * through a counter in shared memory. */
#include "wl.h"
#include <sys/mman.h>

struct kid {
    pid_t pid;
    int code, status;   /* as waitid reports them; code 0: must still run */
};

static void check(const struct kid *k, int n, const char *who)
{
    for (int i = 0; i < n; i++) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, k[i].pid, &si, WEXITED | WNOHANG | WNOWAIT))
            bad("%s: waitid for child %d: %s", who, (int)k[i].pid, strerror(errno));
        if (!k[i].code && si.si_pid)
            bad("%s: live child %d ended (code %d status %d)", who, (int)k[i].pid, si.si_code, si.si_status);
        if (k[i].code && (si.si_pid != k[i].pid || si.si_code != k[i].code || si.si_status != k[i].status))
            bad("%s: zombie %d shows pid %d code %d status %d, expected code %d status %d", who, (int)k[i].pid,
                (int)si.si_pid, si.si_code, si.si_status, k[i].code, k[i].status);
    }
}

/* Forks a child that exits with code, or waits to be killed if code is 0. */
static pid_t spawn(int code)
{
    pid_t pid = wl_fork();
    if (pid == 0) {
        if (code)
            _exit(code);
        for (;;)
            pause();
    }
    return pid;
}

/* Blocks until the child has ended, without reaping it. */
static void await_exit(pid_t pid)
{
    siginfo_t si;
    while (waitid(P_PID, pid, &si, WEXITED | WNOWAIT))
        if (errno != EINTR)
            bad("waitid for child %d: %s", (int)pid, strerror(errno));
}

int main(void)
{
    volatile uint64_t *progress = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (progress == MAP_FAILED)
        bad("mmap: %s", strerror(errno));
    struct kid kids[5] = {
        { spawn(3), CLD_EXITED, 3 }, { spawn(4), CLD_EXITED, 4 }, { spawn(5), CLD_EXITED, 5 },
        { spawn(0), CLD_KILLED, SIGTERM }, { 0, 0, 0 },
    };
    kill(kids[3].pid, SIGTERM);
    kids[4].pid = wl_fork();
    if (kids[4].pid == 0) {
        struct kid own = { spawn(6), CLD_EXITED, 6 };
        await_exit(own.pid);
        for (uint64_t n = 1;; n++) {
            check(&own, 1, "live child");
            *progress = n;
            sleep_ms(20);
        }
    }
    for (int i = 0; i < 4; i++)
        await_exit(kids[i].pid);
    uint64_t seen = 0;
    for (;;) {
        while (*progress == seen) {
            check(kids, 5, "root");
            sleep_ms(2);
        }
        if (*progress < seen)
            bad("root: the live child's count went back from %llu to %llu", (unsigned long long)seen,
                (unsigned long long)*progress);
        seen = *progress;
        check(kids, 5, "root");
        if (!wl_tick)
            say("ready");
        tick();
    }
}
