/* Blocked, pending signals in two processes, queued by each for the other
 * with sigqueue: SIGUSR1 twice (a standard signal: the second is dropped)
 * and realtime signals RTMIN+2 x3 and RTMIN+1 x2 with values, interleaved.
 * Both tick along while the signals stay pending. Once the file argv[1]
 * exists the root unblocks its signals and tells the child to do the same;
 * each must then see SIGUSR1 first, then RTMIN+1, then RTMIN+2, each in
 * sending order with its value and sender. Prints "delivered WHO SIG VALUE"
 * per signal, and "ok" at the end, or BAD. */
#include "wl.h"

#define NSENT 7
#define NEXPECT 6

static sigset_t set;
static volatile sig_atomic_t nlog;
static struct {
    int sig, value, code;
    pid_t pid;
} got[NSENT];

static void handler(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    if (nlog < NSENT) {
        got[nlog].sig = sig;
        got[nlog].value = si->si_value.sival_int;
        got[nlog].code = si->si_code;
        got[nlog].pid = si->si_pid;
    }
    nlog++;
}

static void send_all(pid_t to, int base)
{
    static const int sigs[NSENT] = { 2, 0, 1, 2, 0, 1, 2 };    /* 0: SIGUSR1, n: SIGRTMIN+n */
    static const int values[NSENT] = { 21, 1, 11, 22, 2, 12, 23 };
    for (int i = 0; i < NSENT; i++) {
        union sigval v = { .sival_int = base + values[i] };
        if (sigqueue(to, sigs[i] ? SIGRTMIN + sigs[i] : SIGUSR1, v))
            bad("sigqueue to %d: %s", (int)to, strerror(errno));
    }
}

static int all_pending(void)
{
    sigset_t p;
    sigpending(&p);
    for (int s = 1; s < NSIG; s++)
        if (sigismember(&p, s) != sigismember(&set, s))
            return 0;
    return 1;
}

/* Unblocks the signals (which are delivered before sigprocmask returns, one
 * at a time since each handler blocks the others) and checks them. */
static void deliver(const char *who, pid_t sender, int base)
{
    static const int sigs[NEXPECT] = { 0, 1, 1, 2, 2, 2 };
    static const int values[NEXPECT] = { 1, 11, 12, 21, 22, 23 };
    if (!all_pending())
        bad("%s: the signals are no longer all pending", who);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    for (int i = 0; i < nlog && i < NSENT; i++)
        say("delivered %s %d %d", who, got[i].sig, got[i].value);
    if (nlog != NEXPECT)
        bad("%s: %d signals delivered, expected %d", who, (int)nlog, NEXPECT);
    for (int i = 0; i < NEXPECT; i++) {
        int sig = sigs[i] ? SIGRTMIN + sigs[i] : SIGUSR1;
        if (got[i].sig != sig || got[i].value != base + values[i] || got[i].code != SI_QUEUE ||
            got[i].pid != sender)
            bad("%s: signal %d was %d value %d code %d from %d, expected %d value %d code %d from %d", who, i,
                got[i].sig, got[i].value, got[i].code, (int)got[i].pid, sig, base + values[i], SI_QUEUE,
                (int)sender);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        say("usage: sigpending GO_FILE");
        return 2;
    }
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGRTMIN + 1);
    sigaddset(&set, SIGRTMIN + 2);
    struct sigaction sa = { 0 };
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO;
    sa.sa_mask = set;
    for (int s = 1; s < NSIG; s++)
        if (sigismember(&set, s))
            sigaction(s, &sa, NULL);
    sigprocmask(SIG_BLOCK, &set, NULL);     /* the child inherits mask and handlers */
    pid_t root = getpid();
    int go[2];
    if (pipe(go))
        bad("pipe: %s", strerror(errno));
    report_init();
    pid_t child = wl_fork();
    if (child == 0) {
        close(go[1]);
        fcntl(go[0], F_SETFL, O_NONBLOCK);
        send_all(root, 200);
        while (!all_pending())      /* until the root has sent ours */
            sleep_ms(1);
        for (uint32_t n = 0;; n++) {
            if (!all_pending())
                bad("child: the signals are no longer all pending");
            report(1, n);
            sleep_ms(20);
            char c;
            ssize_t r = read(go[0], &c, 1);
            if (r == 1)
                break;
            if (r == 0 || errno != EAGAIN)
                bad("child: read of the go pipe: %s", r ? strerror(errno) : "end of file");
        }
        deliver("child", root, 100);
        _exit(0);
    }
    close(go[0]);
    send_all(child, 100);
    report_seal();
    collect(1);     /* the child has sent ours and has all of its own */
    say("ready");
    while (access(argv[1], F_OK)) {
        if (!all_pending())
            bad("root: the signals are no longer all pending");
        collect(1);
        tick();
    }
    deliver("root", child, 200);
    xwrite(go[1], "g", 1, "root");
    int st;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st))
        bad("root: the child failed");
    say("ok");
    return 0;
}
