/* A root and one child that both tick; SIGTERM makes the root print
 * "root got SIGTERM" and exit with status 42 (the child then dies with it).
 * The child must never get SIGTERM: if it does, it prints a BAD line. */
#include "wl.h"

static volatile sig_atomic_t term;

static void on_term(int sig)
{
    (void)sig;
    term = 1;
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    report_init();
    if (wl_fork() == 0) {
        for (uint32_t n = 0;; n++) {
            if (term)
                bad("child got SIGTERM");
            report(1, n);
            sleep_ms(20);
        }
    }
    report_seal();
    collect(1);
    say("ready");
    for (;;) {
        collect(1);
        check_children();
        if (term) {
            say("root got SIGTERM");
            exit(42);
        }
        tick();
    }
}
