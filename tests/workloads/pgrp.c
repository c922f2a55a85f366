/* Sessions and process groups. The root R leads its session (the test
 * starts it with a new session). Its children:
 *   A calls setsid() and forks A1, which makes its own group in A's session;
 *   B makes its own group; C joins its sibling B's group; D stays in R's.
 * Every task checks getsid(0)/getpgrp() each round against the expected
 * values and reports to the root, which also checks them from outside. */
#include "wl.h"

static void __attribute__((noreturn)) task(uint32_t id, pid_t sid, pid_t pgid, int has_kid)
{
    for (uint32_t n = 0;; n++) {
        if (getsid(0) != sid || getpgrp() != pgid)
            bad("task %u: session %d group %d, expected %d and %d", id, (int)getsid(0), (int)getpgrp(), (int)sid,
                (int)pgid);
        report(id, n);
        if (has_kid)
            check_children();
        sleep_ms(20);
    }
}

static void same(const char *what, pid_t pid, pid_t got, pid_t want)
{
    if (got != want)
        bad("root: %s of %d is %d, expected %d", what, (int)pid, (int)got, (int)want);
}

int main(void)
{
    pid_t r = getpid();
    if (getsid(0) != r)
        bad("the root must lead its session (start it with setsid)");
    report_init();
    pid_t a = wl_fork();
    if (a == 0) {
        a = getpid();
        if (setsid() != a)
            bad("A: setsid: %s", strerror(errno));
        if (wl_fork() == 0) {
            if (setpgid(0, 0))
                bad("A1: setpgid: %s", strerror(errno));
            task(5, a, getpid(), 0);
        }
        task(1, a, a, 1);
    }
    pid_t b = wl_fork();
    if (b == 0) {
        setpgid(0, 0);
        task(2, r, getpid(), 0);
    }
    if (setpgid(b, b))      /* also here, so the group exists before C joins it */
        bad("setpgid(B): %s", strerror(errno));
    pid_t c = wl_fork();
    if (c == 0) {
        if (setpgid(0, b))
            bad("C: setpgid into B's group: %s", strerror(errno));
        task(3, r, b, 0);
    }
    pid_t d = wl_fork();
    if (d == 0)
        task(4, r, r, 0);
    report_seal();
    collect(5);
    say("ready");
    for (;;) {
        collect(5);
        check_children();
        same("session", r, getsid(0), r);
        same("group", r, getpgrp(), r);
        same("session", a, getsid(a), a);
        same("group", a, getpgid(a), a);
        same("session", b, getsid(b), r);
        same("group", b, getpgid(b), b);
        same("group", c, getpgid(c), b);
        same("group", d, getpgid(d), r);
        tick();
    }
}
