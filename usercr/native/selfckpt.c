/* libusercr: usercr_checkpoint_self(), the protocol of usercr/selfckpt.py in C.
 * The block lives in the program's static memory, so it is in the image: the
 * helper writes RESTORED there once the program is frozen and DONE before it
 * lets it go. No fd and no child of the handshake outlives the call. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "usercr.h"
#include "selfdump.h"

#ifndef PR_SET_PTRACER
#define PR_SET_PTRACER 0x59616d61
#endif

enum { PENDING, RESTORED, DONE, FAILED };
#define MSG_SIZE 248
#define POLL_NS 2000000L
#define HELPER_CHECK_POLLS 50

/* The layout usercr/selfckpt.py's _Block has. */
struct usercr_self_block {
    volatile uint32_t state;
    volatile int32_t err;
    volatile char msg[MSG_SIZE];
};

static struct usercr_self_block block;
static char last_error[MSG_SIZE];
static int busy;

const char *usercr_last_error(void)
{
    return last_error;
}

static int fail(int err, const char *msg)
{
    snprintf(last_error, sizeof(last_error), "%s", msg);
    errno = err;
    return -1;
}

/* Field 22 of /proc/self/stat: a restored process is a new task with a later one. */
static int start_time(unsigned long long *out)
{
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    for (int field = 2; field < 22; field++) {
        p = strchr(p + 1, ' ');
        if (!p)
            return -1;
    }
    *out = strtoull(p + 1, NULL, 10);
    return 0;
}

static int alive(pid_t pid)
{
    return kill(pid, 0) == 0 || errno == EPERM;
}

/* Writes "go" with SIGPIPE held back: a helper that died must not kill the program. */
static void send_go(int fd)
{
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    if (write(fd, "go", 2) < 0 && errno == EPIPE && !sigismember(&old, SIGPIPE)) {
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe_set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static int wait_helper(pid_t helper, unsigned long long began)
{
    for (unsigned polls = 1;; polls++) {
        uint32_t state = block.state;
        unsigned long long now;
        if (state == DONE)
            return 0;
        if (state == FAILED) {
            int i;
            for (i = 0; i < MSG_SIZE - 1 && block.msg[i]; i++)
                last_error[i] = block.msg[i];
            last_error[i] = 0;
            errno = block.err ? block.err : EIO;
            return -1;
        }
        if (state == RESTORED && start_time(&now) == 0 && now != began)
            return 1;
        if (polls % HELPER_CHECK_POLLS == 0 && !alive(helper) && block.state <= RESTORED)
            return fail(EIO, "self-checkpoint: the helper died before the image was complete");
        struct timespec ts = {0, POLL_NS};
        nanosleep(&ts, NULL);
    }
}

static int checkpoint_self(const char *path)
{
    char dest[PATH_MAX], pidbuf[24], addrbuf[24], out[32];
    unsigned long long began;
    int in[2], res[2];

    if (!path || !*path)
        return fail(EINVAL, "self-checkpoint: no image path");
    if (path[0] == '/') {
        if (snprintf(dest, sizeof(dest), "%s", path) >= (int)sizeof(dest))
            return fail(ENAMETOOLONG, "self-checkpoint: image path too long");
    } else {
        if (!getcwd(dest, sizeof(dest)))
            return fail(errno, "self-checkpoint: cannot read the current directory");
        size_t len = strlen(dest);
        if (snprintf(dest + len, sizeof(dest) - len, "/%s", path) >= (int)(sizeof(dest) - len))
            return fail(ENAMETOOLONG, "self-checkpoint: image path too long");
    }
    const char *helper_cmd = getenv("USERCR_SELFCKPT");
    if (!helper_cmd || !*helper_cmd)
        helper_cmd = "usercr-selfckpt";
    /* The helper traces us; where ptrace is missing (qemu-user: a kernel with
     * ptrace answers ESRCH, we are nobody's tracee) the program dumps itself. */
    if (syscall(SYS_ptrace, PTRACE_GETEVENTMSG, getpid(), 0, 0) < 0 && errno == ENOSYS) {
        char *argv[] = { (char *)helper_cmd, "--inside", dest, NULL };
        int r = ucr_self_inside(argv, last_error, sizeof(last_error));
        if (r >= 0)
            return r;
        if (!last_error[0])
            snprintf(last_error, sizeof(last_error), "self-checkpoint: the helper %s died before the image was "
                     "complete (is usercr installed? $USERCR_SELFCKPT names another)", helper_cmd);
        errno = -r;
        return -1;
    }
    if (start_time(&began) < 0)
        return fail(errno ? errno : EIO, "self-checkpoint: cannot read /proc/self/stat");
    block.state = PENDING;
    block.err = 0;
    block.msg[0] = 0;
    snprintf(pidbuf, sizeof(pidbuf), "%ld", (long)getpid());
    snprintf(addrbuf, sizeof(addrbuf), "%lu", (unsigned long)(uintptr_t)&block);
    if (pipe2(in, O_CLOEXEC) < 0)
        return fail(errno, "self-checkpoint: pipe failed");
    if (pipe2(res, O_CLOEXEC) < 0) {
        int e = errno;
        close(in[0]);
        close(in[1]);
        return fail(e, "self-checkpoint: pipe failed");
    }
    pid_t child = fork();
    if (child == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(in[0], 0);
        dup2(res[1], 1);
        execlp(helper_cmd, helper_cmd, pidbuf, addrbuf, dest, (char *)NULL);
        _exit(127);
    }
    int fork_err = errno;
    close(in[0]);
    close(res[1]);
    size_t got = 0;
    if (child > 0) {
        ssize_t n;
        while (got < sizeof(out) - 1 && ((n = read(res[0], out + got, sizeof(out) - 1 - got)) > 0 ||
                                         (n < 0 && errno == EINTR)))
            if (n > 0)
                got += n;
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    close(res[0]);
    out[got] = 0;
    long helper = strtol(out, NULL, 10);
    if (child < 0 || helper <= 0) {
        close(in[1]);
        if (child < 0)
            return fail(fork_err, "self-checkpoint: fork failed");
        snprintf(last_error, sizeof(last_error), "self-checkpoint: the helper %s did not start "
                 "(is usercr installed? $USERCR_SELFCKPT names another)", helper_cmd);
        errno = ENOENT;
        return -1;
    }
    prctl(PR_SET_PTRACER, (unsigned long)helper, 0, 0, 0); /* EINVAL without Yama: nothing needed then */
    send_go(in[1]);
    close(in[1]);
    int r = wait_helper((pid_t)helper, began);
    int e = errno;
    prctl(PR_SET_PTRACER, 0, 0, 0, 0);
    errno = e;
    return r;
}

int usercr_checkpoint_self(const char *path)
{
    if (__atomic_exchange_n(&busy, 1, __ATOMIC_ACQUIRE))
        return fail(EBUSY, "self-checkpoint: another one is under way in this process");
    int r = checkpoint_self(path);
    int e = errno;
    __atomic_store_n(&busy, 0, __ATOMIC_RELEASE);
    errno = e;
    return r;
}
