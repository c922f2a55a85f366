/* Opens the file argv[1] argv[2] times, each an open file description of its
 * own at its own offset (fd 3 + i at offset i), then checks every tick that
 * each fd is still there, at its offset, reading the byte it should. */
#include "wl.h"

int main(int argc, char **argv)
{
    if (argc < 3) {
        say("usage: manyfds FILE COUNT");
        return 2;
    }
    int n = atoi(argv[2]);
    for (int i = 0; i < n; i++) {
        int fd = open(argv[1], O_RDONLY);
        if (fd != 3 + i)
            bad("open %d gave fd %d: %s", i, fd, fd < 0 ? strerror(errno) : "not the next fd");
        if (lseek(fd, i, SEEK_SET) != i)
            bad("lseek fd %d: %s", fd, strerror(errno));
    }
    say("ready");
    for (;;) {
        for (int i = 0; i < n; i++) {
            unsigned char c;
            if (pread(3 + i, &c, 1, i) != 1 || c != (unsigned char)i)
                bad("fd %d: byte %d unreadable or changed", 3 + i, i);
            if (lseek(3 + i, 0, SEEK_CUR) != i)
                bad("fd %d: offset moved", 3 + i);
        }
        tick();
        sleep_ms(50);
    }
}
