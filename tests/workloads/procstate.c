/* Process state beyond memory and files, checked every tick (tests/test_procstate.py).
 *   procstate secure  root: bounding set, capability sets, an ambient cap, securebits,
 *                     no_new_privs, two seccomp filters (getppid fails with EHOSTDOWN, uname
 *                     with EHOSTUNREACH), and a thread created after them that checks too
 *   procstate threads as secure, and the thread adds a filter of its own (getpgid fails
 *                     with ENOLINK there only)
 *   procstate uid     root turned uid/gid 1000 with KEEPCAPS: keeps CAP_NET_BIND_SERVICE and
 *                     CAP_KILL, a seccomp filter installed with CAP_SYS_ADMIN (no no_new_privs)
 *   procstate parent  a child ticks; the parent reports its stops ("stopped N") and
 *                     continues it on SIGUSR1 ("continued")
 *   procstate strict  seccomp strict mode: a tick for every byte read from stdin
 *   procstate notify  a user-notification seccomp filter */
#include "wl.h"
#include <grp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>

#define BIT(c) (1ULL << (c))

static uint64_t want_eff, want_prm, want_inh;
static int want_securebits, want_nnp, uid_mode, thread_filter;

static int capset3(uint64_t eff, uint64_t prm, uint64_t inh)
{
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2] = { { eff, prm, inh }, { eff >> 32, prm >> 32, inh >> 32 } };
    return syscall(SYS_capset, &h, d);
}

/* A filter that makes syscall nr return action (flags for seccomp(2)). */
static long filter(int nr, uint32_t action, unsigned flags)
{
    struct sock_filter insns[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, action),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { 4, insns };
    long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
    if (r < 0)
        bad("seccomp: %s", strerror(errno));
    return r;
}

static void check_filters(const char *who)
{
    int in_thread = !strcmp(who, "thread");
    errno = 0;
    if (thread_filter && (syscall(SYS_getpgid, 0) == -1) != in_thread)
        bad("%s: getpgid %s filtered (errno %d)", who, in_thread ? "was not" : "was", errno);
    errno = 0;
    if (syscall(SYS_getppid) != -1 || errno != EHOSTDOWN)
        bad("%s: getppid was not filtered (errno %d)", who, errno);
    struct utsname u;
    if (!uid_mode && (uname(&u) != -1 || errno != EHOSTUNREACH))
        bad("%s: uname was not filtered (errno %d)", who, errno);
}

static void check_state(const char *who)
{
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d))
        bad("capget: %s", strerror(errno));
    uint64_t eff = d[0].effective | (uint64_t)d[1].effective << 32;
    uint64_t prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
    uint64_t inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
    if (eff != want_eff || prm != want_prm || inh != want_inh)
        bad("%s: capabilities %llx/%llx/%llx", who, (unsigned long long)eff, (unsigned long long)prm,
            (unsigned long long)inh);
    if (prctl(PR_GET_SECUREBITS) != want_securebits)
        bad("%s: securebits %d", who, prctl(PR_GET_SECUREBITS));
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != want_nnp)
        bad("%s: no_new_privs changed", who);
    if (prctl(PR_CAPBSET_READ, CAP_NET_RAW) != 0 || prctl(PR_CAPBSET_READ, CAP_CHOWN) != 1)
        bad("%s: bounding set changed", who);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_BIND_SERVICE, 0, 0) != !uid_mode)
        bad("%s: ambient set changed", who);
    if (uid_mode && (getuid() != 1000 || geteuid() != 1000 || getgid() != 1000))
        bad("%s: uid %d gid %d", who, (int)getuid(), (int)getgid());
    check_filters(who);
}

static void *checker(void *arg)
{
    (void)arg;
    if (thread_filter)
        filter(SYS_getpgid, SECCOMP_RET_ERRNO | ENOLINK, 0);
    for (;;) {
        check_state("thread");
        sleep_ms(20);
    }
    return NULL;
}

static void secure(void)
{
    if (prctl(PR_CAPBSET_DROP, CAP_NET_RAW) || prctl(PR_CAPBSET_DROP, CAP_MKNOD))
        bad("PR_CAPBSET_DROP: %s", strerror(errno));
    want_securebits = SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS;
    if (prctl(PR_SET_SECUREBITS, want_securebits))
        bad("PR_SET_SECUREBITS: %s", strerror(errno));
    want_inh = BIT(CAP_NET_BIND_SERVICE);
    want_prm = BIT(CAP_CHOWN) | BIT(CAP_DAC_OVERRIDE) | BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_KILL);
    want_eff = BIT(CAP_CHOWN) | BIT(CAP_NET_BIND_SERVICE);
    if (capset3(want_eff, want_prm, want_inh))
        bad("capset: %s", strerror(errno));
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
        bad("PR_CAP_AMBIENT_RAISE: %s", strerror(errno));
    want_nnp = 1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        bad("PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
    filter(SYS_getppid, SECCOMP_RET_ERRNO | EHOSTDOWN, 0);
    filter(SYS_uname, SECCOMP_RET_ERRNO | EHOSTUNREACH, 0);
    pthread_t t;
    if (pthread_create(&t, NULL, checker, NULL))
        bad("pthread_create failed");
}

static void uid(void)
{
    uid_mode = 1;
    if (prctl(PR_CAPBSET_DROP, CAP_NET_RAW))
        bad("PR_CAPBSET_DROP: %s", strerror(errno));
    filter(SYS_getppid, SECCOMP_RET_ERRNO | EHOSTDOWN, 0);  /* with CAP_SYS_ADMIN, no no_new_privs */
    if (prctl(PR_SET_KEEPCAPS, 1) || setgroups(0, NULL) || setresgid(1000, 1000, 1000) ||
        setresuid(1000, 1000, 1000))
        bad("becoming uid 1000: %s", strerror(errno));
    want_securebits = SECBIT_KEEP_CAPS;
    want_prm = want_eff = BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_KILL);
    if (capset3(want_eff, want_prm, 0))
        bad("capset: %s", strerror(errno));
}

static volatile sig_atomic_t usr1;

static void on_usr1(int sig)
{
    (void)sig;
    usr1 = 1;
}

static void parent(void)
{
    pid_t child = wl_fork();
    if (child == 0) {
        say("ready");
        for (;;) {
            tick();
            sleep_ms(20);
        }
    }
    struct sigaction sa = { .sa_handler = on_usr1 };  /* no SA_RESTART: waitpid returns EINTR */
    sigaction(SIGUSR1, &sa, NULL);
    for (;;) {
        int st;
        pid_t r = waitpid(child, &st, WUNTRACED | WCONTINUED);
        if (r < 0 && errno == EINTR) {
            if (usr1 && kill(child, SIGCONT))
                bad("kill: %s", strerror(errno));
            usr1 = 0;
            continue;
        }
        if (r != child)
            bad("waitpid: %s", strerror(errno));
        if (WIFSTOPPED(st))
            say("stopped %d", WSTOPSIG(st));
        else if (WIFCONTINUED(st))
            say("continued");
        else
            bad("child ended");
    }
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "parent"))
        parent();
    if (!strcmp(mode, "strict")) {
        say("ready");
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT);
        char c;
        while (read(0, &c, 1) == 1)
            tick();
        syscall(SYS_exit, 0);
    }
    if (!strcmp(mode, "notify")) {
        if (filter(SYS_getppid, SECCOMP_RET_USER_NOTIF, SECCOMP_FILTER_FLAG_NEW_LISTENER) < 0)
            bad("no listener");
    } else if (!strcmp(mode, "secure") || !strcmp(mode, "threads")) {
        thread_filter = !strcmp(mode, "threads");
        secure();
    } else if (!strcmp(mode, "uid")) {
        uid();
    } else {
        bad("unknown mode %s", mode);
    }
    say("ready");
    for (;;) {
        if (strcmp(mode, "notify"))
            check_state("main");
        tick();
        sleep_ms(20);
    }
}
