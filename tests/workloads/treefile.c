/* A root and one child; only the child has a file open (argv[1], which must
 * hold only 'x' bytes). Each round it reads the next byte, going back to the
 * start at the end, checks it and reports to the root, which ticks. */
#include "wl.h"

int main(int argc, char **argv)
{
    if (argc < 2)
        bad("usage: treefile FILE");
    report_init();
    if (wl_fork() == 0) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0)
            bad("child: open %s: %s", argv[1], strerror(errno));
        for (uint32_t n = 0;; n++) {
            char c;
            ssize_t r = read(fd, &c, 1);
            if (r == 0 && lseek(fd, 0, SEEK_SET) == 0)
                r = read(fd, &c, 1);
            if (r != 1 || c != 'x')
                bad("child: read %zd byte(s) of %s: '%c'", r, argv[1], r == 1 ? c : '?');
            report(1, n);
            sleep_ms(20);
        }
    }
    report_seal();
    collect(1);
    say("ready");
    for (;;) {
        collect(1);
        check_children();
        tick();
    }
}
