/* A ping pipe (parent -> child) and a pong pipe (child -> parent), with both
 * processes holding both ends of both pipes plus dup'ed write ends. Restore
 * must give them the same pipes and the same open file descriptions:
 * O_NONBLOCK set on the pong read end in the parent must show in the child's
 * copy, FD_CLOEXEC stays per fd. The parent keeps up to WINDOW pings ahead of
 * the pongs, so the ping pipe holds data at any checkpoint. */
#include "wl.h"

#define PING_DUP 40     /* dup of ping[1] with FD_CLOEXEC: the parent writes here */
#define PONG_DUP 41     /* dup of pong[1]: the child writes here */
#define WINDOW 200

static int ping[2], pong[2];

static void same_pipe(int x, int y, const char *who)
{
    struct stat a, b, again;
    /* A restore between the two fstat calls gives the pipe a new inode
     * number: compare only a pair taken while x's stayed the same. */
    do {
        if (fstat(x, &a) || fstat(y, &b) || fstat(x, &again))
            bad("%s: fstat: %s", who, strerror(errno));
    } while (a.st_dev != again.st_dev || a.st_ino != again.st_ino);
    if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
        bad("%s: fds %d and %d are no longer the same pipe", who, x, y);
}

static void check_fds(const char *who)
{
    same_pipe(ping[0], ping[1], who);
    same_pipe(ping[0], PING_DUP, who);
    same_pipe(pong[0], pong[1], who);
    same_pipe(pong[0], PONG_DUP, who);
    struct stat a, b;
    fstat(ping[0], &a);
    fstat(pong[0], &b);
    if (a.st_ino == b.st_ino)
        bad("%s: the ping and pong pipes became one", who);
    if (!(fcntl(pong[0], F_GETFL) & O_NONBLOCK))
        bad("%s: the pong read end lost O_NONBLOCK", who);
    if (fcntl(ping[0], F_GETFL) & O_NONBLOCK)
        bad("%s: the ping read end became non-blocking", who);
    if (!(fcntl(PING_DUP, F_GETFD) & FD_CLOEXEC) || (fcntl(ping[1], F_GETFD) & FD_CLOEXEC))
        bad("%s: FD_CLOEXEC changed", who);
}

int main(void)
{
    if (pipe(ping) || pipe(pong))
        bad("pipe: %s", strerror(errno));
    if (dup2(ping[1], PING_DUP) < 0 || dup2(pong[1], PONG_DUP) < 0)
        bad("dup2: %s", strerror(errno));
    fcntl(PING_DUP, F_SETFD, FD_CLOEXEC);
    fcntl(pong[0], F_SETFL, O_NONBLOCK);    /* one open file description, shared with the child */
    uint64_t m[2];
    if (wl_fork() == 0) {
        for (uint64_t seq = 0;; seq++) {
            xread(ping[0], m, sizeof(m), "child");
            if (m[0] != seq || m[1] != ~seq)
                bad("child: ping %llu, expected %llu", (unsigned long long)m[0], (unsigned long long)seq);
            check_fds("child");
            xwrite(PONG_DUP, m, sizeof(m), "child");
            sleep_ms(1);
        }
    }
    uint64_t sent = 0, got = 0, got_at_tick = 0, next_tick = 0;
    for (;;) {
        for (; sent < got + WINDOW; sent++) {
            m[0] = sent;
            m[1] = ~sent;
            xwrite(PING_DUP, m, sizeof(m), "parent");
        }
        ssize_t r;
        while ((r = read(pong[0], m, sizeof(m))) == sizeof(m)) {
            if (m[0] != got || m[1] != ~got)
                bad("parent: pong %llu, expected %llu", (unsigned long long)m[0], (unsigned long long)got);
            got++;
        }
        if (r != -1 || (errno != EAGAIN && errno != EINTR))
            bad("parent: read of a pong returned %zd (%s)", r, r < 0 ? strerror(errno) : "short");
        check_fds("parent");
        check_children();
        if (got > got_at_tick && now_ms() >= next_tick) {
            if (!wl_tick)
                say("ready");
            tick();
            got_at_tick = got;
            next_tick = now_ms() + 20;
        }
        sleep_ms(2);
    }
}
