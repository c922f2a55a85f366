/* Many fast periodic timerfds (64, 1 ms, relative, non-blocking), all read
 * every few ms: a checkpoint often finds one due whose expiry the timer
 * interrupt has not served yet (it then reads as disarmed). Each timer must
 * keep expiring after every restart: one that gives nothing for IDLE of
 * running time (stopped time excluded) was brought back disarmed. One more
 * timerfd, disarmed but with an interval, reads 0 left as a due one does: it
 * must never expire. */
#include "wl.h"
#include <sys/timerfd.h>

#define N 64
#define MS 1000000LL
#define PERIOD (1 * MS)
#define IDLE (200 * MS)
#define GAP (100 * MS)

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(void)
{
    int fds[N];
    int64_t last_expiry[N], gaps_then[N], gaps = 0;
    struct itimerspec its = { { 0, PERIOD }, { 0, PERIOD } };
    for (int i = 0; i < N; i++) {
        fds[i] = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
        if (fds[i] < 0 || timerfd_settime(fds[i], 0, &its, NULL))
            bad("timerfd %d: %s", i, strerror(errno));
    }
    int disarmed = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec off = { { 0, PERIOD }, { 0, 0 } };
    if (disarmed < 0 || timerfd_settime(disarmed, 0, &off, NULL))
        bad("disarmed timerfd: %s", strerror(errno));
    int64_t last = now_ns(), since_tick = last;
    for (int i = 0; i < N; i++)
        last_expiry[i] = last, gaps_then[i] = 0;
    say("ready");
    for (;;) {
        struct timespec nap = { 0, 5 * MS };
        nanosleep(&nap, NULL);
        int64_t t = now_ns();
        if (t - last > GAP)
            gaps += t - last;  /* stopped: a checkpoint, the gap before the restart */
        last = t;
        for (int i = 0; i < N; i++) {
            uint64_t v;
            ssize_t r = read(fds[i], &v, sizeof(v));
            if (r == sizeof(v)) {
                last_expiry[i] = t, gaps_then[i] = gaps;
                continue;
            }
            if (r >= 0 || errno != EAGAIN)
                bad("timer %d: read: %s", i, r < 0 ? strerror(errno) : "short");
            int64_t idle = t - last_expiry[i] - (gaps - gaps_then[i]);
            if (idle > IDLE)
                bad("timer %d: no expiration for %lld ms of running time (disarmed?)", i, (long long)(idle / MS));
        }
        uint64_t v;
        if (read(disarmed, &v, sizeof(v)) >= 0 || errno != EAGAIN)
            bad("the disarmed timerfd expired or failed: %s", strerror(errno));
        if (t - since_tick > 50 * MS) {
            since_tick = t;
            tick();
        }
    }
}
