/* timerfds on CLOCK_MONOTONIC, all polled in one loop:
 * - abs: periodic, 50 ms, set with TFD_TIMER_ABSTIME from a start time. Its
 *   expirations are counted against the clock: after every read the total
 *   is exactly what the time since the start explains (none lost, none
 *   invented), across checkpoint, gap and restart alike.
 * - rel: periodic, 30 ms, relative, non-blocking and close-on-exec. Its
 *   total never exceeds what the time since it was set explains, and falls
 *   short by no more than the time the process was stopped (gaps seen by
 *   the loop): for a relative timer time stops while the tree is gone.
 * - lazy: periodic, 10 ms, relative, read only every 500 ms, so a checkpoint
 *   usually finds expirations not yet read; counted as rel is.
 * - once: a one-shot set with TFD_TIMER_ABSTIME 400 ms ahead ("armed N"),
 *   read ("fired N") once it expired, then set again. One that expires in
 *   the gap between checkpoint and restart is read after the restart:
 *   exactly one expiration, never early.
 * The flags and clock are checked in the process's own fdinfo. */
#include "wl.h"
#include <sys/timerfd.h>

#define MS 1000000LL
#define ABS_IV (50 * MS)
#define REL_IV (30 * MS)
#define LAZY_IV (10 * MS)
#define ONCE_AHEAD (400 * MS)
#define SLACK (20 * MS)  /* a timer interrupt served late (an emulated CPU under load) is not a lost expiration */
#define GAP (100 * MS)

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Time spent stopped (checkpoint to restart) lands between two readings of
 * the clock, wherever in the loop the freeze came: every reading counts it. */
static int64_t gaps, last;

static int64_t seen(void)
{
    int64_t t = now_ns();
    if (last && t - last > GAP)
        gaps += t - last;
    last = t;
    return t;
}

static struct timespec ts_of(int64_t ns)
{
    struct timespec ts = { ns / 1000000000LL, ns % 1000000000LL };
    return ts;
}

static void set(int fd, int flags, int64_t value, int64_t interval)
{
    struct itimerspec its = { ts_of(interval), ts_of(value) };
    if (timerfd_settime(fd, flags, &its, NULL))
        bad("timerfd_settime: %s", strerror(errno));
}

static uint64_t take(int fd, const char *who)
{
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));
    if (r < 0 && errno == EAGAIN)
        return 0;
    if (r != sizeof(v))
        bad("%s: read: %s", who, r < 0 ? strerror(errno) : "short");
    if (v == 0)
        bad("%s: read 0 expirations", who);
    return v;
}

static int64_t expected(int64_t t, int64_t start)
{
    return t < start ? 0 : (t - start) / ABS_IV + 1;
}

static void check_fdinfo(int fd, const char *who, unsigned flags)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    int f = open(path, O_RDONLY);
    ssize_t n = f < 0 ? -1 : read(f, buf, sizeof(buf) - 1);
    if (f >= 0)
        close(f);
    if (n <= 0)
        bad("%s: reading fdinfo: %s", who, strerror(errno));
    buf[n] = 0;
    char want[64];
    snprintf(want, sizeof(want), "settime flags: 0%o\n", flags);
    if (!strstr(buf, "clockid: 1\n") || !strstr(buf, want))
        bad("%s: fdinfo does not say clockid 1 and %.*s: %s", who, (int)strlen(want) - 1, want, buf);
}

int main(void)
{
    int abs_fd = timerfd_create(CLOCK_MONOTONIC, 0);
    int rel_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    int once_fd = timerfd_create(CLOCK_MONOTONIC, 0);
    int lazy_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if (abs_fd < 0 || rel_fd < 0 || once_fd < 0 || lazy_fd < 0)
        bad("timerfd_create: %s", strerror(errno));
    int64_t start = now_ns() + ABS_IV;
    set(abs_fd, TFD_TIMER_ABSTIME, start, ABS_IV);
    int64_t rel_start = now_ns();
    set(rel_fd, 0, REL_IV, REL_IV);
    set(lazy_fd, 0, LAZY_IV, LAZY_IV);
    unsigned armed = 0;
    int64_t deadline = now_ns() + ONCE_AHEAD;
    set(once_fd, TFD_TIMER_ABSTIME, deadline, 0);
    say("ready");
    say("armed %u", armed);
    int64_t abs_total = 0, rel_total = 0, lazy_total = 0, ticked = 0;
    seen();
    for (;;) {
        struct pollfd p[3] = { { abs_fd, POLLIN, 0 }, { rel_fd, POLLIN, 0 }, { once_fd, POLLIN, 0 } };
        if (poll(p, 3, 10) < 0 && errno != EINTR)
            bad("poll: %s", strerror(errno));
        int64_t before = seen();
        if (p[0].revents & POLLIN) {
            abs_total += take(abs_fd, "abs");
            int64_t after = seen();
            if (abs_total < expected(before - SLACK, start) || abs_total > expected(after + SLACK, start))
                bad("abs: %lld expirations, the clock explains %lld to %lld", (long long)abs_total,
                    (long long)expected(before - SLACK, start), (long long)expected(after + SLACK, start));
        }
        rel_total += take(rel_fd, "rel");
        int lazy = (p[0].revents & POLLIN) && abs_total % 10 == 0;
        if (lazy)
            lazy_total += take(lazy_fd, "lazy");
        /* At most what the time up to now explains; at least what the time
         * up to the reads explains, less the time stopped and an interrupt
         * served late. */
        int64_t after = seen(), elapsed = after - rel_start, running = before - SLACK - rel_start - gaps;
        if (rel_total > elapsed / REL_IV + 1)
            bad("rel: %lld expirations in %lld ms", (long long)rel_total, (long long)(elapsed / MS));
        if (rel_total < running / REL_IV - 1)
            bad("rel: only %lld expirations in %lld ms, %lld of them stopped", (long long)rel_total,
                (long long)(elapsed / MS), (long long)(gaps / MS));
        if (lazy && (lazy_total > elapsed / LAZY_IV + 1 || lazy_total < running / LAZY_IV - 1))
            bad("lazy: %lld expirations in %lld ms, %lld of them stopped", (long long)lazy_total,
                (long long)(elapsed / MS), (long long)(gaps / MS));
        if (p[2].revents & POLLIN) {
            uint64_t v = take(once_fd, "once");
            if (v != 1)
                bad("once: %llu expirations of a one-shot timer", (unsigned long long)v);
            int64_t at = seen();
            if (at < deadline)
                bad("once: fired %lld us early", (long long)(deadline - at) / 1000);
            struct itimerspec its;
            if (timerfd_gettime(once_fd, &its) || its.it_value.tv_sec || its.it_value.tv_nsec)
                bad("once: still armed after it fired");
            say("fired %u", armed);
            deadline = seen() + ONCE_AHEAD;
            set(once_fd, TFD_TIMER_ABSTIME, deadline, 0);
            say("armed %u", ++armed);
        }
        if ((fcntl(rel_fd, F_GETFL) & O_NONBLOCK) == 0 || fcntl(rel_fd, F_GETFD) != FD_CLOEXEC)
            bad("rel lost its flags");
        if (abs_total >= ticked + 1) {
            check_fdinfo(abs_fd, "abs", TFD_TIMER_ABSTIME);
            check_fdinfo(rel_fd, "rel", 0);
            check_fdinfo(once_fd, "once", TFD_TIMER_ABSTIME);
            ticked = abs_total;
            tick();
        }
        seen();
    }
}
