/* An epoll set checked through restarts. The root's epoll `ep` watches:
 *   - pipe A's read end (level-triggered, data A_DATA), fed by child 1,
 *     which keeps A full of messages, so data is pending at any checkpoint;
 *   - pipe B's read end, registered under fd number `b_old`, which was then
 *     closed (a dup keeps the description open; the registration stays),
 *     edge-triggered, data B_DATA, fed by child 2 in bursts;
 *   - a nested epoll `inner` (data INNER_DATA) that watches pipe C's read
 *     end (EPOLLONESHOT, data C_DATA, re-armed with EPOLL_CTL_MOD after each
 *     read), fed by child 3;
 *   - pipe D's read end with EPOLLONESHOT, fired once at start and never
 *     re-armed: it must stay silent although D always holds data.
 * Each source's messages are checked in sequence; a tick is printed once
 * every source has delivered since the last one. Data values and fdinfo
 * are checked on every event. */
#include "wl.h"
#include <sys/epoll.h>

#define A_DATA 0x1111aaaa2222bbbbULL
#define B_DATA 0x3333cccc4444ddddULL
#define C_DATA 0x5555eeee6666ffffULL
#define INNER_DATA 0x7777000088889999ULL
#define D_DATA 0x0123456789abcdefULL

static void feeder(int fd, long pause_ms, int burst)
{
    struct msg m;
    for (uint64_t seq = 0;;) {
        for (int i = 0; i < burst; i++, seq++) {
            msg_make(&m, seq);
            xwrite(fd, &m, sizeof(m), "feeder");
        }
        sleep_ms(pause_ms);
    }
}

static void ctl(int ep, int op, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev = { .events = events, .data.u64 = data };
    if (epoll_ctl(ep, op, fd, &ev))
        bad("epoll_ctl(%d, %d, %d): %s", ep, op, fd, strerror(errno));
}

static void make_pipe(int p[2], int nonblock_read)
{
    if (pipe(p))
        bad("pipe: %s", strerror(errno));
    if (nonblock_read)
        fcntl(p[0], F_SETFL, O_NONBLOCK);
}

/* Reads whole messages while there are any; returns how many. */
static long drain(int fd, uint64_t *seq, const char *who)
{
    struct msg m;
    long n = 0;
    for (;;) {
        ssize_t r = read(fd, &m, sizeof(m));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return n;
        if (r != sizeof(m))
            bad("%s: read %zd: %s", who, r, r < 0 ? strerror(errno) : "short");
        msg_check(&m, (*seq)++, who);
        n++;
    }
}

int main(void)
{
    int a[2], b[2], c[2], d[2];
    make_pipe(a, 1);
    make_pipe(b, 1);
    make_pipe(c, 1);
    make_pipe(d, 1);
    if (wl_fork() == 0) {
        close(a[0]);
        feeder(a[1], 5, 64);   /* 64 x 64 bytes per round: A stays full */
    }
    if (wl_fork() == 0) {
        close(b[0]);
        feeder(b[1], 20, 3);
    }
    if (wl_fork() == 0) {
        close(c[0]);
        feeder(c[1], 15, 2);
    }
    close(a[1]);
    close(b[1]);
    close(c[1]);
    struct msg m;
    msg_make(&m, 0);
    xwrite(d[1], &m, sizeof(m), "d");

    int ep = epoll_create1(EPOLL_CLOEXEC);
    int inner = epoll_create1(0);
    if (ep < 0 || inner < 0)
        bad("epoll_create1: %s", strerror(errno));
    ctl(ep, EPOLL_CTL_ADD, a[0], EPOLLIN, A_DATA);
    int b_old = b[0];
    ctl(ep, EPOLL_CTL_ADD, b_old, EPOLLIN | EPOLLET, B_DATA);
    int b_rd = dup(b_old);
    close(b_old);   /* the registration stays under the old number */
    ctl(inner, EPOLL_CTL_ADD, c[0], EPOLLIN | EPOLLONESHOT, C_DATA);
    ctl(ep, EPOLL_CTL_ADD, inner, EPOLLIN, INNER_DATA);
    ctl(ep, EPOLL_CTL_ADD, d[0], EPOLLIN | EPOLLONESHOT, D_DATA);

    uint64_t seq_a = 0, seq_b = 0, seq_c = 0;
    long got[4] = { 0, 0, 0, 0 };
    int d_fired = 0, said = 0;
    for (;;) {
        struct epoll_event evs[8];
        int n = epoll_wait(ep, evs, 8, 200);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            bad("epoll_wait: %s", strerror(errno));
        check_children();
        for (int i = 0; i < n; i++) {
            uint64_t data = evs[i].data.u64;
            if (data == A_DATA) {
                got[0] += drain(a[0], &seq_a, "a");
            } else if (data == B_DATA) {
                got[1] += drain(b_rd, &seq_b, "b");
            } else if (data == INNER_DATA) {
                struct epoll_event iev;
                int k = epoll_wait(inner, &iev, 1, 0);
                if (k < 0 && errno != EINTR)
                    bad("inner epoll_wait: %s", strerror(errno));
                if (k == 1) {
                    if (iev.data.u64 != C_DATA)
                        bad("inner data %llx", (unsigned long long)iev.data.u64);
                    got[2] += drain(c[0], &seq_c, "c");
                    ctl(inner, EPOLL_CTL_MOD, c[0], EPOLLIN | EPOLLONESHOT, C_DATA);
                }
            } else if (data == D_DATA) {
                if (d_fired++)
                    bad("the disarmed one-shot registration of pipe D fired again");
                got[3]++;
            } else {
                bad("unknown data %llx (events %x)", (unsigned long long)data, evs[i].events);
            }
        }
        if (got[0] && got[1] && got[2] && d_fired) {
            if (!said++)
                say("ready");
            say("counts a=%ld b=%ld c=%ld d=%d", got[0], got[1], got[2], d_fired);
            tick();
            got[0] = got[1] = got[2] = 0;
        }
    }
}
