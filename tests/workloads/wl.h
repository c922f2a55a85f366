/* Shared by the self-checking tree workloads. Protocol: the root prints
 * "ready" once everything is set up, then "tick N" (N = 0, 1, ...) each time
 * it has verified the state it owns; any process that finds its state wrong
 * prints "BAD <name>: <detail>" and exits 1, and parents treat a dead child
 * as a failure. A long pause (checkpoint, gap before restore) is never one.
 * Children die with their parent, so a test never leaks processes. */
/* Include it first: it defines _GNU_SOURCE. */
#ifndef WL_H
#define WL_H
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Where lines go; a child that gives fd 1 to a terminal keeps a copy here. */
static int wl_out = 1;
static unsigned long wl_tick;
/* Children report (id, seq) pairs to the root through this pipe. */
static int rep_fd[2] = { -1, -1 };
#define WL_MAX_REPORTERS 64

/* One write(2) per line: no stdio buffer to duplicate across fork, and lines
 * of several processes never interleave in the O_APPEND output file. */
static inline void __attribute__((format(printf, 1, 2))) say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof(buf) - 2)
        n = sizeof(buf) - 2;
    buf[n++] = '\n';
    while (write(wl_out, buf, n) < 0 && errno == EINTR)
        ;
}

static inline void __attribute__((noreturn, format(printf, 1, 2))) bad(const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    say("BAD %s: %s", program_invocation_short_name, msg);
    _exit(1);
}

static inline void tick(void)
{
    say("tick %lu", wl_tick++);
}

/* Sleeps the whole time even when signal handlers run meanwhile. */
static inline void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

static inline uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline pid_t wl_fork(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        bad("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)    /* the parent died before prctl */
            _exit(1);
        if (rep_fd[0] >= 0) {       /* only the root collects reports */
            close(rep_fd[0]);
            rep_fd[0] = -1;
        }
    }
    return pid;
}

/* For a parent: every child runs forever, so one that ended is a failure,
 * and so is having none (they were not restored as our children). */
static inline void check_children(void)
{
    int st;
    pid_t pid = waitpid(-1, &st, WNOHANG);
    if (pid < 0)
        bad("waitpid: %s", strerror(errno));
    if (pid > 0)
        bad("child %d %s %d", (int)pid, WIFEXITED(st) ? "exited with" : "was killed by signal",
            WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
}

/* For a parent: waits until fd is readable, checking on the children
 * meanwhile (a dead one would otherwise only show as silence). */
static inline void await_input(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    for (;;) {
        int r = poll(&p, 1, 100);
        if (r > 0)
            return;
        if (r == 0)
            check_children();
        else if (errno != EINTR)
            bad("poll: %s", strerror(errno));
    }
}

/* Whole-buffer I/O on pipes, FIFOs and terminals; EOF or an error is a failure. */
static inline void xread(int fd, void *buf, size_t len, const char *who)
{
    for (size_t got = 0; got < len;) {
        ssize_t r = read(fd, (char *)buf + got, len - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            bad("%s: read: %s", who, r ? strerror(errno) : "end of file");
        got += r;
    }
}

static inline void xwrite(int fd, const void *buf, size_t len, const char *who)
{
    for (size_t done = 0; done < len;) {
        ssize_t r = write(fd, (const char *)buf + done, len - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            bad("%s: write: %s", who, strerror(errno));
        done += r;
    }
}

/* Word i of the pattern named seed; distinct seeds give distinct contents. */
static inline uint64_t pat(uint64_t seed, size_t i)
{
    return ((seed + 1) * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)i * 0xBF58476D1CE4E5B9ULL);
}

static inline void pattern_fill(void *p, size_t len, uint64_t seed)
{
    uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++)
        w[i] = pat(seed, i);
}

static inline int pattern_ok(const void *p, size_t len, uint64_t seed)
{
    const uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++)
        if (w[i] != pat(seed, i))
            return 0;
    return 1;
}

/* A 64-byte message whose body follows from its sequence number, so a
 * reader detects loss, duplication, reordering and corruption alike.
 * 64 bytes < PIPE_BUF: each write of one is atomic. */
struct msg {
    uint64_t seq;
    uint64_t body[7];
};

static inline void msg_make(struct msg *m, uint64_t seq)
{
    m->seq = seq;
    pattern_fill(m->body, sizeof(m->body), seq);
}

static inline void msg_check(const struct msg *m, uint64_t seq, const char *who)
{
    struct msg want;
    msg_make(&want, seq);
    if (memcmp(m, &want, sizeof(want)))
        bad("%s: got message %llu, expected %llu%s", who, (unsigned long long)m->seq, (unsigned long long)seq,
            m->seq == seq ? " (corrupt body)" : "");
}

/* Root, before forking: children then report through the pipe. */
static inline void report_init(void)
{
    if (pipe(rep_fd))
        bad("pipe: %s", strerror(errno));
}

/* Root, after forking its children: the pipe reads EOF once all reporters are gone. */
static inline void report_seal(void)
{
    close(rep_fd[1]);
    rep_fd[1] = -1;
}

static inline void report(uint32_t id, uint32_t seq)
{
    uint32_t m[2] = { id, seq };
    xwrite(rep_fd[1], m, sizeof(m), "report");
}

/* Returns once each reporter 1..n has sent its next value and nothing more
 * is waiting. Values must be consecutive per reporter, so a lost or repeated
 * report shows. */
static inline void collect(uint32_t n)
{
    static uint32_t next[WL_MAX_REPORTERS];
    char fresh[WL_MAX_REPORTERS] = { 0 };
    for (uint32_t missing = n;;) {
        uint32_t m[2];
        struct pollfd p = { .fd = rep_fd[0], .events = POLLIN };
        if (missing)
            await_input(rep_fd[0]);
        else if (poll(&p, 1, 0) <= 0)
            return;
        xread(rep_fd[0], m, sizeof(m), "collect");
        if (m[0] == 0 || m[0] > n)
            bad("report from unknown reporter %u", m[0]);
        if (m[1] != next[m[0]])
            bad("reporter %u sent %u, expected %u", m[0], m[1], next[m[0]]);
        next[m[0]]++;
        if (!fresh[m[0]]) {
            fresh[m[0]] = 1;
            missing--;
        }
    }
}
#endif
