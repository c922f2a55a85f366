/* Per-thread kernel state that only shows once it is used, after a go file
 * (argv[1]) appears: a signal left pending on one thread must be handled by
 * that thread; a thread on its own sigaltstack must take a signal there; and
 * a thread that exits then must be joinable (pthread_join waits for the
 * kernel to clear the TID at clear_child_tid). Prints "ok" at the end. */
#include "wl.h"
#include <pthread.h>
#include <sys/syscall.h>

static const char *go_file;
static volatile pid_t handled_by;
static volatile int on_altstack;
static char altstack[1 << 16];
static pid_t pending_tid;

static pid_t tid(void)
{
    return syscall(SYS_gettid);
}

static void on_usr1(int sig)
{
    (void)sig;
    handled_by = tid();
}

static void on_usr2(int sig)
{
    char here;
    (void)sig;
    on_altstack = &here >= altstack && &here < altstack + sizeof(altstack);
}

static void wait_go(void)
{
    while (access(go_file, F_OK))
        sleep_ms(10);
}

static void *pending_holder(void *arg)
{
    (void)arg;
    pending_tid = tid();
    wait_go();
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);  /* the pending SIGUSR1 runs here */
    return NULL;
}

static void *alt_user(void *arg)
{
    (void)arg;
    stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack) };
    if (sigaltstack(&ss, NULL))
        bad("sigaltstack: %s", strerror(errno));
    wait_go();
    raise(SIGUSR2);
    return NULL;
}

static void *leaver(void *arg)
{
    (void)arg;
    wait_go();
    return (void *)42;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        bad("usage: threadstate GO_FILE");
    go_file = argv[1];
    struct sigaction sa = { .sa_handler = on_usr1 };
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR2, &sa, NULL);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);   /* inherited by every thread */
    pthread_t holder, alt, gone;
    pthread_create(&holder, NULL, pending_holder, NULL);
    pthread_create(&alt, NULL, alt_user, NULL);
    pthread_create(&gone, NULL, leaver, NULL);
    while (!pending_tid)
        sleep_ms(1);
    pthread_kill(holder, SIGUSR1);
    say("ready");
    while (access(go_file, F_OK)) {
        tick();
        sleep_ms(20);
    }
    void *ret;
    pthread_join(gone, &ret);
    pthread_join(holder, NULL);
    pthread_join(alt, NULL);
    if (ret != (void *)42)
        bad("the leaving thread returned %p", ret);
    if (handled_by != pending_tid)
        bad("the pending SIGUSR1 was handled by thread %d, not %d", (int)handled_by, (int)pending_tid);
    if (!on_altstack)
        bad("SIGUSR2 was not handled on the thread's alternate stack");
    say("ok");
    return 0;
}
