/* One epoll set over every anonymous-fd and Unix socket kind, each event
 * counted. The root's epoll `ep` watches:
 *   - a timerfd, periodic every 10 ms (relative), non-blocking;
 *   - an eventfd the root writes (round % 7) + 1 to in each round;
 *   - a signalfd for SIGRTMIN+2 (blocked), which the root queues to itself
 *     once a round with the round number as its value;
 *   - one end of a stream socketpair; the root sends message `round` on the
 *     other end once a round;
 *   - a listening Unix socket (abstract name) whose client is a child: it
 *     connects, waits for the greeting (the connection's number), sends
 *     PER_CONN messages (numbered on across connections), each echoed back,
 *     and closes; the root accepts, adds the connection to `ep`, echoes,
 *     and closes its end at end of file.
 * A round produces, sleeps 20 ms (a checkpoint finds the eventfd count, the
 * socketpair message, the queued signal and timer expirations pending),
 * then handles events until that round's three have come, each exactly once
 * with its exact value. Every 5 rounds the root prints
 *   "counts round=R timer=T event=E signal=S pair=P conns=C msgs=M"
 * (totals so far) and a tick. The timer total never exceeds what the time
 * since it was set explains. */
#include "wl.h"
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>

#define TIMER_IV_NS 10000000LL
#define PER_CONN 8
#define MAX_CONNS 4
#define ROUNDS_PER_TICK 5
enum { T_TIMER = 1, T_EVENT, T_SIGNAL, T_PAIR, T_LISTEN, T_CONN };
#define DATA(tag, slot) (((uint64_t)(tag) << 32) | (uint32_t)(slot))

static void ctl(int ep, int op, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev = { .events = events, .data.u64 = data };
    if (epoll_ctl(ep, op, fd, &ev))
        bad("epoll_ctl(%d, %d, %d): %s", ep, op, fd, strerror(errno));
}

static void client(const struct sockaddr_un *addr, socklen_t len)
{
    uint64_t seq = 0;
    for (uint64_t k = 0;; k++) {
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (const struct sockaddr *)addr, len))
            bad("client: connect: %s", strerror(errno));
        /* Nothing is sent before the root accepted: data on a connection
         * waiting in the backlog cannot be checkpointed. */
        struct msg m;
        xread(c, &m, sizeof(m), "client greeting");
        msg_check(&m, k, "client greeting");
        for (int i = 0; i < PER_CONN; i++, seq++) {
            msg_make(&m, seq);
            xwrite(c, &m, sizeof(m), "client");
            xread(c, &m, sizeof(m), "client echo");
            msg_check(&m, seq, "client echo");
            sleep_ms(10);
        }
        close(c);
    }
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(void)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    int n = snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, "usercr-epollmix-%d", (int)getpid());
    socklen_t alen = offsetof(struct sockaddr_un, sun_path) + 1 + n;
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, alen) || listen(lfd, 4))
        bad("listener: %s", strerror(errno));
    if (wl_fork() == 0) {
        close(lfd);
        client(&addr, alen);
    }

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGRTMIN + 2);
    if (sigprocmask(SIG_BLOCK, &mask, NULL))
        bad("sigprocmask: %s", strerror(errno));
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK);
    int efd = eventfd(0, EFD_NONBLOCK);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    int sp[2];
    if (sfd < 0 || efd < 0 || tfd < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sp))
        bad("creating the fds: %s", strerror(errno));
    int ep = epoll_create1(0);
    if (ep < 0)
        bad("epoll_create1: %s", strerror(errno));
    ctl(ep, EPOLL_CTL_ADD, tfd, EPOLLIN, DATA(T_TIMER, 0));
    ctl(ep, EPOLL_CTL_ADD, efd, EPOLLIN, DATA(T_EVENT, 0));
    ctl(ep, EPOLL_CTL_ADD, sfd, EPOLLIN, DATA(T_SIGNAL, 0));
    ctl(ep, EPOLL_CTL_ADD, sp[0], EPOLLIN, DATA(T_PAIR, 0));
    ctl(ep, EPOLL_CTL_ADD, lfd, EPOLLIN, DATA(T_LISTEN, 0));
    struct itimerspec its = { { 0, TIMER_IV_NS }, { 0, TIMER_IV_NS } };
    int64_t timer_set = now_ns();
    if (timerfd_settime(tfd, 0, &its, NULL))
        bad("timerfd_settime: %s", strerror(errno));

    int conn_fd[MAX_CONNS];
    uint64_t conn_no[MAX_CONNS];
    for (int i = 0; i < MAX_CONNS; i++)
        conn_fd[i] = -1;
    uint64_t timer = 0, event = 0, sigs = 0, pair = 0, conns = 0, msgs = 0;
    for (uint64_t round = 0;; round++) {
        uint64_t add = round % 7 + 1;
        struct msg m;
        msg_make(&m, round);
        xwrite(efd, &add, sizeof(add), "eventfd");
        xwrite(sp[1], &m, sizeof(m), "socketpair");
        union sigval val = { .sival_int = (int)round };
        if (sigqueue(getpid(), SIGRTMIN + 2, val))
            bad("sigqueue: %s", strerror(errno));
        sleep_ms(20);
        int got_event = 0, got_signal = 0, got_pair = 0;
        while (!(got_event && got_signal && got_pair)) {
            struct epoll_event evs[8];
            int k = epoll_wait(ep, evs, 8, 100);
            if (k < 0 && errno == EINTR)
                continue;
            if (k < 0)
                bad("epoll_wait: %s", strerror(errno));
            if (k == 0)
                bad("round %llu: nothing ready after 100 ms (event %d signal %d pair %d)",
                    (unsigned long long)round, got_event, got_signal, got_pair);
            check_children();
            for (int i = 0; i < k; i++) {
                uint32_t tag = evs[i].data.u64 >> 32, slot = (uint32_t)evs[i].data.u64;
                uint64_t v;
                if (tag == T_TIMER) {
                    if (read(tfd, &v, sizeof(v)) != sizeof(v) || v == 0)
                        bad("timerfd: read: %s", strerror(errno));
                    timer += v;
                    int64_t elapsed = now_ns() - timer_set;
                    if ((int64_t)timer > elapsed / TIMER_IV_NS)
                        bad("timer: %llu expirations in %lld ms", (unsigned long long)timer,
                            (long long)(elapsed / 1000000));
                } else if (tag == T_EVENT) {
                    if (read(efd, &v, sizeof(v)) != sizeof(v))
                        bad("eventfd: read: %s", strerror(errno));
                    if (got_event++ || v != add)
                        bad("round %llu: eventfd read %llu (read %d before), expected %llu once",
                            (unsigned long long)round, (unsigned long long)v, got_event - 1,
                            (unsigned long long)add);
                    event += v;
                } else if (tag == T_SIGNAL) {
                    struct signalfd_siginfo si;
                    if (read(sfd, &si, sizeof(si)) != sizeof(si))
                        bad("signalfd: read: %s", strerror(errno));
                    if (got_signal++ || (int)si.ssi_signo != SIGRTMIN + 2 || si.ssi_int != (int32_t)round
                        || si.ssi_pid != (uint32_t)getpid())
                        bad("round %llu: signal %u value %d from %u (read %d before), expected %d value %llu "
                            "from %d once", (unsigned long long)round, si.ssi_signo, si.ssi_int, si.ssi_pid,
                            got_signal - 1, SIGRTMIN + 2, (unsigned long long)round, (int)getpid());
                    sigs++;
                } else if (tag == T_PAIR) {
                    if (read(sp[0], &m, sizeof(m)) != sizeof(m))
                        bad("socketpair: read: %s", strerror(errno));
                    if (got_pair++)
                        bad("round %llu: a second socketpair message", (unsigned long long)round);
                    msg_check(&m, round, "socketpair");
                    pair++;
                } else if (tag == T_LISTEN) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0 && errno == EAGAIN)
                        continue;
                    if (c < 0)
                        bad("accept: %s", strerror(errno));
                    int s = 0;
                    while (s < MAX_CONNS && conn_fd[s] >= 0)
                        s++;
                    if (s == MAX_CONNS)
                        bad("more than %d connections open", MAX_CONNS);
                    conn_fd[s] = c;
                    conn_no[s] = conns++;
                    ctl(ep, EPOLL_CTL_ADD, c, EPOLLIN | EPOLLRDHUP, DATA(T_CONN, s));
                    msg_make(&m, conn_no[s]);
                    xwrite(c, &m, sizeof(m), "greeting");
                } else if (tag == T_CONN && slot < MAX_CONNS && conn_fd[slot] >= 0) {
                    ssize_t r = read(conn_fd[slot], &m, sizeof(m));
                    if (r < 0 && errno == EAGAIN)
                        continue;
                    if (r == 0) {   /* the client is done with it */
                        if (msgs != (conn_no[slot] + 1) * PER_CONN)
                            bad("connection %llu closed after message %llu", (unsigned long long)conn_no[slot],
                                (unsigned long long)msgs);
                        close(conn_fd[slot]);   /* also leaves ep */
                        conn_fd[slot] = -1;
                        continue;
                    }
                    if (r != sizeof(m))
                        bad("connection %llu: read %zd: %s", (unsigned long long)conn_no[slot], r,
                            r < 0 ? strerror(errno) : "short");
                    msg_check(&m, msgs, "connection");
                    if (msgs / PER_CONN != conn_no[slot])
                        bad("message %llu on connection %llu", (unsigned long long)msgs,
                            (unsigned long long)conn_no[slot]);
                    msgs++;
                    xwrite(conn_fd[slot], &m, sizeof(m), "echo");
                } else {
                    bad("unexpected event %x, data %llx", evs[i].events, (unsigned long long)evs[i].data.u64);
                }
            }
        }
        if (round == 0)
            say("ready");
        if (round % ROUNDS_PER_TICK == 0) {
            say("counts round=%llu timer=%llu event=%llu signal=%llu pair=%llu conns=%llu msgs=%llu",
                (unsigned long long)round, (unsigned long long)timer, (unsigned long long)event,
                (unsigned long long)sigs, (unsigned long long)pair, (unsigned long long)conns,
                (unsigned long long)msgs);
            tick();
        }
    }
}
