/* File locks of two processes on FILE: the root holds a POSIX write lock on
 * bytes 0-9, an OFD write lock on bytes 20-29 (on a description it also
 * dup'ed) and a flock shared with its child by fork; the child holds a POSIX
 * read lock on bytes 40-49. Each tick the root checks all of them through
 * descriptions of its own that hold no lock. With a second argument it also
 * holds a read lease on that file. Usage: locks FILE [LEASE_FILE] */
#include "wl.h"
#include <sys/file.h>

static void lock(int fd, int cmd, short type, off_t start, off_t len, const char *what)
{
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
    if (fcntl(fd, cmd, &fl))
        bad("%s lock: %s", what, strerror(errno));
}

/* What an OFD lock request for bytes start..start+9 on probe would meet. */
static void expect(int probe, off_t start, short type, pid_t pid, const char *what)
{
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = start, .l_len = 10 };
    if (fcntl(probe, F_OFD_GETLK, &fl))
        bad("F_OFD_GETLK: %s", strerror(errno));
    if (fl.l_type != type || fl.l_pid != pid)
        bad("%s: lock type %d held by %d, expected type %d held by %d", what, fl.l_type, (int)fl.l_pid, type,
            (int)pid);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        bad("usage: locks FILE [LEASE_FILE]");
    int posix = open(argv[1], O_RDWR), ofd = open(argv[1], O_RDWR), shared = open(argv[1], O_RDONLY);
    int probe = open(argv[1], O_RDWR), flock_probe = open(argv[1], O_RDONLY);
    if (posix < 0 || ofd < 0 || shared < 0 || probe < 0 || flock_probe < 0)
        bad("open %s: %s", argv[1], strerror(errno));
    lock(posix, F_SETLK, F_WRLCK, 0, 10, "POSIX");
    lock(ofd, F_OFD_SETLK, F_WRLCK, 20, 10, "OFD");
    if (dup(ofd) < 0)
        bad("dup: %s", strerror(errno));
    if (flock(shared, LOCK_EX | LOCK_NB))
        bad("flock: %s", strerror(errno));
    if (argc > 2) {
        int leased = open(argv[2], O_RDONLY);
        if (leased < 0 || fcntl(leased, F_SETLEASE, F_RDLCK))
            bad("lease on %s: %s", argv[2], strerror(errno));
    }
    int up[2];
    if (pipe(up))
        bad("pipe: %s", strerror(errno));
    pid_t child = wl_fork();
    if (child == 0) {
        int mine = open(argv[1], O_RDONLY);
        if (mine < 0)
            bad("open %s: %s", argv[1], strerror(errno));
        lock(mine, F_SETLK, F_RDLCK, 40, 10, "child's POSIX");
        xwrite(up[1], "L", 1, "child");
        close(up[0]);
        close(up[1]);
        for (;;)
            sleep_ms(1000);
    }
    char c;
    close(up[1]);
    xread(up[0], &c, 1, "root");
    close(up[0]);
    say("ready");
    for (;;) {
        check_children();
        expect(probe, 0, F_WRLCK, getpid(), "POSIX lock of the root");
        expect(probe, 20, F_WRLCK, -1, "OFD lock");
        if (!flock(flock_probe, LOCK_SH | LOCK_NB))
            bad("the flock is gone");
        if (errno != EWOULDBLOCK)
            bad("flock probe: %s", strerror(errno));
        struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 40, .l_len = 10 };
        if (fcntl(probe, F_OFD_GETLK, &fl))
            bad("F_OFD_GETLK: %s", strerror(errno));
        if (fl.l_type != F_RDLCK || fl.l_pid != child)
            bad("child's POSIX lock: type %d held by %d", fl.l_type, (int)fl.l_pid);
        tick();
        sleep_ms(50);
    }
}
