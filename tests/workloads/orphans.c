/* Sessions and groups whose leader is gone (a daemon's double fork). The
 * root R is a subreaper and leads its session. A calls setsid(), forks B (in
 * A's session and group) and C (its own group in A's session), and exits. E
 * makes its own group in R's session, forks F (in E's group) and exits. So
 * B, C and F end up R's children in a session or group led by a PID nobody
 * has any more; each checks getsid(0)/getpgrp() against those every round
 * and reports to the root. */
#include "wl.h"

static void __attribute__((noreturn)) orphan(uint32_t id, pid_t sid, pid_t pgid, pid_t root)
{
    while (getppid() != root)   /* until its parent is gone and R adopted it */
        sleep_ms(5);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != root)
        _exit(1);
    for (uint32_t n = 0;; n++) {
        if (getsid(0) != sid || getpgrp() != pgid)
            bad("orphan %u: session %d group %d, expected %d and %d", id, (int)getsid(0), (int)getpgrp(),
                (int)sid, (int)pgid);
        report(id, n);
        sleep_ms(20);
    }
}

static void reap(pid_t pid)
{
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
        bad("root: the leader %d did not exit cleanly", (int)pid);
}

int main(void)
{
    pid_t r = getpid();
    if (getsid(0) != r)
        bad("the root must lead its session (start it with setsid)");
    if (prctl(PR_SET_CHILD_SUBREAPER, 1))
        bad("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
    report_init();
    pid_t a = fork();
    if (a == 0) {
        a = getpid();
        if (setsid() != a)
            bad("A: setsid: %s", strerror(errno));
        if (fork() == 0)
            orphan(1, a, a, r);
        if (fork() == 0) {
            setpgid(0, 0);
            orphan(2, a, getpid(), r);
        }
        _exit(0);
    }
    pid_t e = fork();
    if (e == 0) {
        e = getpid();
        if (setpgid(0, 0))
            bad("E: setpgid: %s", strerror(errno));
        if (fork() == 0)
            orphan(3, r, e, r);
        _exit(0);
    }
    reap(a);
    reap(e);
    report_seal();
    collect(3);
    say("ready");
    for (;;) {
        collect(3);
        check_children();
        tick();
        sleep_ms(20);
    }
}
