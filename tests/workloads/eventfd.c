/* eventfds: one the root writes to and reads back itself (non-blocking,
 * close-on-exec, with a count beyond 32 bits), one in EFD_SEMAPHORE mode, and
 * two shared with a child (ping/pong: the child reads ping and writes back
 * the value plus one to pong). Each is left holding a value while the
 * process sleeps, so a checkpoint finds it there. */
#include "wl.h"
#include <sys/eventfd.h>

static uint64_t ev_read(int fd, const char *who)
{
    uint64_t v;
    xread(fd, &v, sizeof(v), who);
    return v;
}

static void ev_write(int fd, uint64_t v, const char *who)
{
    xwrite(fd, &v, sizeof(v), who);
}

static int readable(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, 0) > 0;
}

int main(void)
{
    int counter = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int sem = eventfd(0, EFD_SEMAPHORE);
    int ping = eventfd(0, 0), pong = eventfd(0, 0);
    if (counter < 0 || sem < 0 || ping < 0 || pong < 0)
        bad("eventfd: %s", strerror(errno));
    if (wl_fork() == 0) {
        for (;;) {
            uint64_t v = ev_read(ping, "child");
            ev_write(pong, v + 1, "child");
        }
    }
    say("ready");
    for (uint64_t n = 1;; n++) {
        uint64_t big = (n << 32) + n;
        ev_write(counter, big, "counter");
        ev_write(counter, 7, "counter");
        ev_write(sem, 3, "sem");
        ev_write(ping, n, "ping");
        sleep_ms(20);   /* a checkpoint finds every counter holding something */
        if ((fcntl(counter, F_GETFL) & O_NONBLOCK) == 0 || fcntl(counter, F_GETFD) != FD_CLOEXEC)
            bad("counter lost its flags: fl %#x fd %#x", fcntl(counter, F_GETFL), fcntl(counter, F_GETFD));
        if (fcntl(sem, F_GETFL) & O_NONBLOCK || fcntl(sem, F_GETFD) != 0)
            bad("sem gained flags");
        uint64_t v = ev_read(counter, "counter");
        if (v != big + 7)
            bad("counter read %#llx, expected %#llx", (unsigned long long)v, (unsigned long long)(big + 7));
        if (read(counter, &v, sizeof(v)) != -1 || errno != EAGAIN)
            bad("counter: a second read did not fail with EAGAIN");
        for (int i = 0; i < 3; i++)
            if ((v = ev_read(sem, "sem")) != 1)
                bad("semaphore read %d gave %llu, expected 1", i, (unsigned long long)v);
        if (readable(sem))
            bad("semaphore still readable after 3 reads of 3");
        await_input(pong);
        if ((v = ev_read(pong, "pong")) != n + 1)
            bad("pong %llu, expected %llu", (unsigned long long)v, (unsigned long long)(n + 1));
        tick();
    }
}
