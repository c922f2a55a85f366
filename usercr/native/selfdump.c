/* Self-checkpoint without ptrace (qemu-user has none): the program answers
 * the helper's questions itself, from inside a signal handler whose ucontext
 * is the state a restored copy comes back to (just after the tgkill that
 * raised it). The helper (usercr-selfckpt --inside, usercr/selfdump.py)
 * asks for syscalls run here (the answers land in a scratch buffer it reads
 * back), memory, and files such as /proc/self/maps, which qemu-user shows as
 * the guest sees them; it writes the image. Only raw syscalls in the handler. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>
#ifdef __x86_64__
#include <asm/prctl.h>
#endif

#include "selfdump.h"

#define SELF_SIG SIGUSR2
#define CHUNK 65536
#define SELF_HELLO_MAGIC 0x55435253u
enum { OP_SYSCALL = 1, OP_READ = 2, OP_FILE = 3, OP_END = 4 };

struct self_req {
    uint32_t op, len;     /* len: bytes of path after an OP_FILE request */
    uint64_t a[7];
};

/* What the helper learns first; the layout usercr/selfdump.py reads. */
struct self_hello {
    uint32_t magic, uc_size;
    uint64_t scratch, scratch_size;
    uint64_t pid, tid, tls;
    uint64_t fds[2];      /* the pipe ends of this exchange, not part of the image */
    uint64_t exe_link;    /* "/proc/self/exe", for readlinkat run here (qemu-user answers it for the guest) */
};

static const char exe_link[] = "/proc/self/exe";

static char scratch[4096] __attribute__((aligned(64)));
static char filebuf[4096];
static const char zeros[4096];
static volatile int dumped;
static int req_fd = -1, rep_fd = -1;
static struct sigaction old_action;

static int write_all(int fd, const void *buf, size_t len)
{
    const char *b = buf;
    while (len) {
        ssize_t n = write(fd, b, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
    char *b = buf;
    while (len) {
        ssize_t n = read(fd, b, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Memory as it is; a page that cannot be read (it should not be asked for) goes as zeros. */
static int send_memory(uint64_t addr, uint64_t len)
{
    while (len) {
        size_t n = len < CHUNK ? (size_t)len : CHUNK;
        ssize_t w = write(rep_fd, (const void *)(uintptr_t)addr, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EFAULT) {
            w = n < sizeof(zeros) ? (ssize_t)n : (ssize_t)sizeof(zeros);
            if (write_all(rep_fd, zeros, (size_t)w))
                return -1;
        } else if (w <= 0)
            return -1;
        addr += (uint64_t)w;
        len -= (uint64_t)w;
    }
    return 0;
}

/* A file in chunks, each preceded by its length; 0 ends it, -errno fails it. */
static int send_file(uint32_t len)
{
    int64_t n;
    if (len >= sizeof(filebuf) || read_all(req_fd, filebuf, len))
        return -1;
    filebuf[len] = 0;
    int fd = open(filebuf, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        n = -errno;
        return write_all(rep_fd, &n, sizeof(n));
    }
    do {
        n = read(fd, filebuf, sizeof(filebuf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            n = -errno;
        if (write_all(rep_fd, &n, sizeof(n)) || (n > 0 && write_all(rep_fd, filebuf, (size_t)n))) {
            close(fd);
            return -1;
        }
    } while (n > 0);
    close(fd);
    return 0;
}

static void serve(void)
{
    struct self_req r;
    while (read_all(req_fd, &r, sizeof(r)) == 0) {
        int64_t res;
        switch (r.op) {
        case OP_SYSCALL:
            res = syscall((long)r.a[0], (long)r.a[1], (long)r.a[2], (long)r.a[3], (long)r.a[4], (long)r.a[5],
                          (long)r.a[6]);
            if (res == -1)
                res = -errno;
            if (write_all(rep_fd, &res, sizeof(res)))
                return;
            break;
        case OP_READ:
            if (send_memory(r.a[0], r.a[1]))
                return;
            break;
        case OP_FILE:
            if (send_file(r.len))
                return;
            break;
        default:
            return;
        }
    }
}

static uint64_t thread_pointer(void)
{
#ifdef __x86_64__
    unsigned long fs = 0;
    syscall(SYS_arch_prctl, ARCH_GET_FS, &fs);
    return fs;
#else
    return (uint64_t)(uintptr_t)__builtin_thread_pointer();
#endif
}

static void on_signal(int sig, siginfo_t *si, void *uc)
{
    int e = errno;
    (void)sig;
    (void)si;
    sigaction(SELF_SIG, &old_action, NULL);  /* the helper must see the program's own action */
    struct self_hello h = { SELF_HELLO_MAGIC, sizeof(ucontext_t), (uint64_t)(uintptr_t)scratch, sizeof(scratch),
                            (uint64_t)getpid(), (uint64_t)syscall(SYS_gettid), thread_pointer(),
                            { (uint64_t)req_fd, (uint64_t)rep_fd }, (uint64_t)(uintptr_t)exe_link };
    if (write_all(rep_fd, &h, sizeof(h)) == 0 && write_all(rep_fd, uc, sizeof(ucontext_t)) == 0)
        serve();
    dumped = 1;  /* after the copy: a restored copy sees 0 */
    errno = e;
}

/* A write to a helper that died raised SIGPIPE while everything was blocked:
 * take it back unless the program had one pending itself. */
static void drop_sigpipe(const sigset_t *before)
{
    sigset_t pending, pipe_set;
    struct timespec zero = { 0, 0 };
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    if (!sigismember(before, SIGPIPE) && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE))
        sigtimedwait(&pipe_set, NULL, &zero);
}

int ucr_self_inside(char *const argv[], char *err, uint32_t errlen)
{
    int to_helper[2], from_helper[2];
    sigset_t all, orig, only, pending_before;
    struct sigaction sa;

    if (pipe2(to_helper, O_CLOEXEC) < 0)
        return -errno;
    if (pipe2(from_helper, O_CLOEXEC) < 0) {
        int e = errno;
        close(to_helper[0]);
        close(to_helper[1]);
        return -e;
    }
    pid_t helper = fork();
    if (helper == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(to_helper[0], 0);
        dup2(from_helper[1], 1);
        execvp(argv[0], argv);
        _exit(127);
    }
    int fork_err = errno;
    close(to_helper[0]);
    close(from_helper[1]);
    if (helper < 0) {
        close(to_helper[1]);
        close(from_helper[0]);
        return -fork_err;
    }
    rep_fd = to_helper[1];
    req_fd = from_helper[0];
    dumped = 0;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &orig);
    sigpending(&pending_before);
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO;
    sigfillset(&sa.sa_mask);
    sigaction(SELF_SIG, &sa, &old_action);
    only = all;
    sigdelset(&only, SELF_SIG);
    pthread_sigmask(SIG_SETMASK, &only, NULL);
    syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SELF_SIG);
    /* A restored copy comes back here, its memory as the handler left it
     * before dumped was set. */
    if (!dumped) {
        pthread_sigmask(SIG_SETMASK, &orig, NULL);
        return 1;
    }
    close(rep_fd);  /* the helper writes the image, then its verdict */
    int32_t verdict[2] = { EIO, 0 };
    int r = read_all(req_fd, verdict, sizeof(verdict));
    size_t got = 0;
    if (r == 0 && verdict[0]) {
        uint32_t n = (uint32_t)verdict[1] < errlen ? (uint32_t)verdict[1] : errlen - 1;
        if (read_all(req_fd, err, n) == 0)
            got = n;
    }
    if (errlen)
        err[got] = 0;
    close(req_fd);
    while (waitpid(helper, NULL, 0) < 0 && errno == EINTR)
        ;
    drop_sigpipe(&pending_before);
    pthread_sigmask(SIG_SETMASK, &orig, NULL);
    if (r)
        return -EPIPE;  /* the helper died */
    return verdict[0] ? -verdict[0] : 0;
}
