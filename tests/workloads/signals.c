/* A handler installed and SIGUSR1 blocked and pending at checkpoint time; once
 * the file named by argv[1] exists it unblocks SIGUSR1, and the handler must run. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t handled;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    if (sig == SIGUSR1 && si->si_code == SI_TKILL)
        handled = 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: signals GO_FILE\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR1, &sa, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    raise(SIGUSR1);
    sigset_t pend;
    sigpending(&pend);
    printf("pending %d\n", sigismember(&pend, SIGUSR1));
    struct timespec ts = { 0, 20 * 1000000L };
    while (access(argv[1], F_OK) != 0)
        nanosleep(&ts, NULL);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    printf("handled %d\n", (int)handled);
    return handled ? 0 : 1;
}
