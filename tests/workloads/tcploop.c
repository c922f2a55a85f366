/* TCP on loopback: the root listens on 127.0.0.1 and, when the machine has
 * it, on ::1 (it says which in a "families" line); a child connects to each
 * listener and streams numbered messages (wl.h's struct msg) that the root
 * checks and echoes back, and checks the echoes. Both ends have small socket
 * buffers, the child sends far ahead and reads the echoes slower than the
 * root reads, so at any moment bytes wait in both directions: in the receive
 * queues, and in the send queues behind a full window (neither end ever
 * blocks: the root reads no more from a connection whose echo waits to be
 * sent). Every byte must arrive once and in order. The root
 * ticks each time every connection has carried TICK_MSGS more messages. */
#include "wl.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define BUF 4096            /* SO_SNDBUF and SO_RCVBUF; the kernel doubles them */
#define AHEAD 4096          /* messages the child sends ahead of the echoes it has read: more than the buffers hold */
#define ROOT_BATCH 6        /* messages the root reads per step */
#define CHILD_BATCH 2       /* echoes the child reads per step */
#define STEP_MS 10
#define TICK_MSGS 50

struct end {
    int fd;
    uint64_t rseq;                  /* next message expected */
    size_t have;                    /* bytes of it read so far */
    unsigned char buf[sizeof(struct msg)];
    uint64_t wseq;                  /* child: next message to send */
    int pending;                    /* out is not all sent yet */
    size_t wdone;                   /* bytes of it sent so far */
    struct msg out;
};

/* Sends the rest of out without waiting: 1 once all is sent, 0 when the socket takes no more now. */
static int flush(struct end *e, const char *who)
{
    while (e->pending) {
        ssize_t r = send(e->fd, (char *)&e->out + e->wdone, sizeof(e->out) - e->wdone, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return 0;
        if (r <= 0)
            bad("%s: send: %s", who, strerror(errno));
        e->wdone += r;
        if (e->wdone == sizeof(e->out))
            e->pending = e->wdone = 0;
    }
    return 1;
}

static int small_buffers(int fd)
{
    int size = BUF;
    return setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size)) ||
           setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
}

static int listener(int family, const char *addr)
{
    struct sockaddr_storage ss = { 0 };
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        inet_pton(AF_INET, addr, &a->sin_addr);
        len = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        inet_pton(AF_INET6, addr, &a->sin6_addr);
        len = sizeof(*a);
    }
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    if (small_buffers(fd) || bind(fd, (struct sockaddr *)&ss, len) ||
        listen(fd, 4)) {
        close(fd);
        return -1;
    }
    return fd;
}

static int client(int lfd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(lfd, (struct sockaddr *)&ss, &len))
        bad("getsockname: %s", strerror(errno));
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0 || small_buffers(fd) ||
        connect(fd, (struct sockaddr *)&ss, len))
        bad("connect: %s", strerror(errno));
    return fd;
}

/* Reads the rest of the next message without waiting: 1 once it is whole
 * (and checked), 0 when nothing more is there yet. */
static int next_msg(struct end *e, struct msg *m, const char *who)
{
    while (e->have < sizeof(*m)) {
        ssize_t r = recv(e->fd, e->buf + e->have, sizeof(*m) - e->have, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return 0;
        if (r <= 0)
            bad("%s: recv: %s", who, r ? strerror(errno) : "end of file");
        e->have += r;
    }
    memcpy(m, e->buf, sizeof(*m));
    e->have = 0;
    msg_check(m, e->rseq++, who);
    return 1;
}

/* The child: sends ahead as far as the socket takes, reads a few echoes. */
static void __attribute__((noreturn)) run_child(struct end *ends, int n)
{
    for (;;) {
        for (int i = 0; i < n; i++) {
            struct end *e = &ends[i];
            const char *who = i ? "child (ipv6)" : "child (ipv4)";
            while (flush(e, who) && e->wseq - e->rseq < AHEAD) {
                msg_make(&e->out, e->wseq++);
                e->pending = 1;
            }
            struct msg m;
            for (int k = 0; k < CHILD_BATCH && next_msg(e, &m, who); k++)
                ;
        }
        sleep_ms(STEP_MS);
    }
}

int main(void)
{
    struct end ends[2] = { { .fd = -1 }, { .fd = -1 } };
    int lfd[2], n = 0;
    signal(SIGPIPE, SIG_IGN);   /* a closed peer is a failed write, reported */
    if ((lfd[n++] = listener(AF_INET, "127.0.0.1")) < 0)
        bad("listening on 127.0.0.1: %s", strerror(errno));
    if ((lfd[n] = listener(AF_INET6, "::1")) >= 0)
        n++;
    else if (errno != EADDRNOTAVAIL && errno != EAFNOSUPPORT)
        bad("listening on ::1: %s", strerror(errno));
    pid_t child = wl_fork();
    if (child == 0) {
        for (int i = 0; i < n; i++)
            ends[i].fd = client(lfd[i]);
        for (int i = 0; i < n; i++)
            close(lfd[i]);
        run_child(ends, n);
    }
    for (int i = 0; i < n; i++)
        if ((ends[i].fd = accept(lfd[i], NULL, NULL)) < 0)
            bad("accept: %s", strerror(errno));
    say("families %s", n == 2 ? "ipv4 ipv6" : "ipv4");
    say("ready");
    for (uint64_t next_tick = TICK_MSGS;;) {
        for (int i = 0; i < n; i++) {
            const char *who = i ? "root (ipv6)" : "root (ipv4)";
            for (int k = 0; k < ROOT_BATCH && flush(&ends[i], who) && next_msg(&ends[i], &ends[i].out, who); k++)
                ends[i].pending = 1;
            flush(&ends[i], who);
        }
        check_children();
        int all = 1;
        for (int i = 0; i < n; i++)
            all &= ends[i].rseq >= next_tick;
        if (all) {
            next_tick += TICK_MSGS;
            tick();
        }
        sleep_ms(STEP_MS);
    }
}
