/* A signalfd (non-blocking, close-on-exec) for SIGUSR1, SIGUSR2 and
 * SIGRTMIN+1, which stay blocked: the process sends itself SIGUSR1 and two
 * queued SIGRTMIN+1 carrying their sequence numbers, sleeps (a checkpoint
 * finds them pending), and reads exactly those back through the signalfd.
 * SIGUSR2 is sent every other round, SIGTERM (not in the mask) never
 * arrives there. */
#include "wl.h"
#include <sys/signalfd.h>

int main(void)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGUSR2);
    sigaddset(&mask, SIGRTMIN + 1);
    if (sigprocmask(SIG_BLOCK, &mask, NULL))
        bad("sigprocmask: %s", strerror(errno));
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        bad("signalfd: %s", strerror(errno));
    say("ready");
    for (int n = 0;; n++) {
        union sigval val;
        if (kill(getpid(), SIGUSR1))
            bad("kill: %s", strerror(errno));
        if (n % 2 && kill(getpid(), SIGUSR2))
            bad("kill: %s", strerror(errno));
        for (int k = 0; k < 2; k++) {
            val.sival_int = 2 * n + k;
            if (sigqueue(getpid(), SIGRTMIN + 1, val))
                bad("sigqueue: %s", strerror(errno));
        }
        sleep_ms(20);
        if ((fcntl(sfd, F_GETFL) & O_NONBLOCK) == 0 || fcntl(sfd, F_GETFD) != FD_CLOEXEC)
            bad("signalfd lost its flags");
        int usr1 = 0, usr2 = 0, rt = 0;
        for (;;) {
            struct signalfd_siginfo si;
            ssize_t r = read(sfd, &si, sizeof(si));
            if (r < 0 && errno == EAGAIN)
                break;
            if (r != sizeof(si))
                bad("read from the signalfd: %s", r < 0 ? strerror(errno) : "short");
            if (si.ssi_signo == SIGUSR1)
                usr1++;
            else if (si.ssi_signo == SIGUSR2)
                usr2++;
            else if ((int)si.ssi_signo == SIGRTMIN + 1) {
                if (si.ssi_int != 2 * n + rt || si.ssi_pid != (uint32_t)getpid())
                    bad("SIGRTMIN+1 with value %d from %u, expected %d from %d", si.ssi_int, si.ssi_pid,
                        2 * n + rt, (int)getpid());
                rt++;
            } else
                bad("signal %u through the signalfd", si.ssi_signo);
        }
        if (usr1 != 1 || usr2 != n % 2 || rt != 2)
            bad("round %d: got SIGUSR1 x%d, SIGUSR2 x%d, SIGRTMIN+1 x%d", n, usr1, usr2, rt);
        tick();
    }
}
