/* A pseudo-terminal: the child is a session leader with the slave as its
 * controlling terminal, stdin and stdout, in canonical mode without echo and
 * output processing. The root writes "ping N" lines to the master, up to
 * WINDOW ahead (so input is buffered in the terminal at any checkpoint); the
 * child answers "pong N" after checking N, the terminal modes, the window
 * size and that it still has the terminal in the foreground. */
#include "wl.h"
#include <pty.h>
#include <sys/ioctl.h>
#include <termios.h>

#define WINDOW 20

static void child(int slave)
{
    if (setsid() < 0 || ioctl(slave, TIOCSCTTY, 0))
        bad("child: taking the terminal: %s", strerror(errno));
    wl_out = dup(1);    /* keep the output file for our own lines */
    if (wl_out < 0 || dup2(slave, 0) < 0 || dup2(slave, 1) < 0)
        bad("child: dup: %s", strerror(errno));
    close(slave);
    char line[64];
    for (unsigned n = 0;; n++) {
        ssize_t len;
        while ((len = read(0, line, sizeof(line) - 1)) < 0 && errno == EINTR)
            ;
        if (len <= 0)
            bad("child: read from the terminal: %s", len ? strerror(errno) : "end of file");
        line[len] = 0;
        unsigned got;
        if (sscanf(line, "ping %u\n", &got) != 1 || got != n)
            bad("child: read \"%.*s\", expected ping %u", (int)strcspn(line, "\n"), line, n);
        struct termios t;
        struct winsize ws;
        if (tcgetattr(0, &t) || ioctl(0, TIOCGWINSZ, &ws))
            bad("child: terminal attributes: %s", strerror(errno));
        if ((t.c_lflag & (ICANON | ECHO)) != ICANON || (t.c_oflag & OPOST))
            bad("child: terminal modes changed: lflag %#x oflag %#x", (unsigned)t.c_lflag, (unsigned)t.c_oflag);
        if (ws.ws_row != 33 || ws.ws_col != 77)
            bad("child: window size is %ux%u, expected 33x77", ws.ws_row, ws.ws_col);
        if (tcgetsid(0) != getpid() || tcgetpgrp(0) != getpgrp())
            bad("child: the terminal's session %d or foreground group %d are not ours", (int)tcgetsid(0),
                (int)tcgetpgrp(0));
        int k = snprintf(line, sizeof(line), "pong %u\n", n);
        xwrite(1, line, k, "child");
        sleep_ms(1);
    }
}

int main(void)
{
    int master, slave;
    if (openpty(&master, &slave, NULL, NULL, NULL))     /* the slave is opened O_NOCTTY */
        bad("openpty: %s", strerror(errno));
    struct termios t;
    struct winsize ws = { .ws_row = 33, .ws_col = 77 };
    tcgetattr(slave, &t);
    t.c_lflag = (t.c_lflag | ICANON) & ~(ECHO | ECHOE | ECHOK | ECHONL);
    t.c_oflag &= ~OPOST;
    if (tcsetattr(slave, TCSANOW, &t) || ioctl(slave, TIOCSWINSZ, &ws))
        bad("setting up the terminal: %s", strerror(errno));
    if (wl_fork() == 0) {
        close(master);
        child(slave);
    }
    close(slave);
    char buf[4096];
    size_t have = 0;
    unsigned sent = 0, got = 0, got_at_tick = 0;
    uint64_t next_tick = 0;
    for (;;) {
        for (; sent < got + WINDOW; sent++) {
            char ping[32];
            int k = snprintf(ping, sizeof(ping), "ping %u\n", sent);
            xwrite(master, ping, k, "root");
        }
        await_input(master);
        ssize_t len = read(master, buf + have, sizeof(buf) - 1 - have);
        if (len < 0 && errno == EINTR)
            continue;
        if (len <= 0)
            bad("root: read from the master: %s", len ? strerror(errno) : "end of file");
        have += len;
        char *line = buf, *nl;
        while ((nl = memchr(line, '\n', buf + have - line))) {
            unsigned n;
            *nl = 0;
            if (sscanf(line, "pong %u", &n) != 1 || n != got)
                bad("root: read \"%s\", expected pong %u", line, got);
            got++;
            line = nl + 1;
        }
        have -= line - buf;
        memmove(buf, line, have);
        check_children();
        if (got > got_at_tick && now_ms() >= next_tick) {
            if (!wl_tick)
                say("ready");
            tick();
            got_at_tick = got;
            next_tick = now_ms() + 20;
        }
    }
}
