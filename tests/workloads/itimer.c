/* ITIMER_REAL every 10 ms (SIGALRM) and a POSIX timer on CLOCK_MONOTONIC
 * every 5 ms (SIGUSR1, with a value); handlers count them. Every tick it
 * checks both timers are still armed with their intervals and every SIGUSR1
 * carried the timer's value, and prints "timers ALRM USR1 MS" so a test can
 * check the counts go on at about the right rates. */
#include "wl.h"
#include <sys/time.h>

#define VALUE 0x5eed

static volatile unsigned long alrm, usr1;
static volatile sig_atomic_t wrong;

static void on_alrm(int sig)
{
    (void)sig;
    alrm++;
}

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    if (si->si_code != SI_TIMER || si->si_value.sival_int != VALUE)
        wrong = 1;
    usr1 += 1 + si->si_overrun;     /* expirations merged into this signal */
}

int main(void)
{
    struct sigaction sa = { 0 };
    sa.sa_handler = on_alrm;
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR1, &sa, NULL);
    struct itimerval it = { { 0, 10000 }, { 0, 10000 } };
    if (setitimer(ITIMER_REAL, &it, NULL))
        bad("setitimer: %s", strerror(errno));
    struct sigevent sev = { 0 };
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGUSR1;
    sev.sigev_value.sival_int = VALUE;
    timer_t timer;
    struct itimerspec ts = { { 0, 5000000 }, { 0, 5000000 } };
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer) || timer_settime(timer, 0, &ts, NULL))
        bad("timer_create: %s", strerror(errno));
    while (!alrm || !usr1)
        sleep_ms(1);
    say("ready");
    for (;;) {
        sleep_ms(20);
        if (getitimer(ITIMER_REAL, &it))
            bad("getitimer: %s", strerror(errno));
        if (it.it_interval.tv_sec || it.it_interval.tv_usec != 10000 || !timerisset(&it.it_value))
            bad("ITIMER_REAL is now %ld us every %ld us", (long)it.it_value.tv_usec, (long)it.it_interval.tv_usec);
        if (timer_gettime(timer, &ts))
            bad("timer_gettime: %s", strerror(errno));
        if (ts.it_interval.tv_sec || ts.it_interval.tv_nsec != 5000000 || (!ts.it_value.tv_sec && !ts.it_value.tv_nsec))
            bad("the POSIX timer is now %ld ns every %ld ns", ts.it_value.tv_nsec, ts.it_interval.tv_nsec);
        if (wrong)
            bad("a SIGUSR1 did not come from the timer with its value");
        say("timers %lu %lu %llu", alrm, usr1, (unsigned long long)now_ms());
        tick();
    }
}
