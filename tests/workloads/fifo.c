/* A FIFO in the directory argv[1], opened by a writer and a reader child.
 * The writer sends sequence-numbered bursts faster than the reader reads,
 * so the FIFO holds data at any checkpoint; the reader checks every message.
 * Both report their progress to the root. */
#include "wl.h"

#define BURST 64

int main(int argc, char **argv)
{
    if (argc < 2) {
        say("usage: fifo DIR");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/fifo", argv[1]);
    unlink(path);
    if (mkfifo(path, 0600))
        bad("mkfifo %s: %s", path, strerror(errno));
    report_init();
    struct msg m;
    if (wl_fork() == 0) {
        int fd = open(path, O_WRONLY);
        if (fd < 0)
            bad("writer: open %s: %s", path, strerror(errno));
        for (uint32_t burst = 0;; burst++) {
            for (int i = 0; i < BURST; i++) {
                msg_make(&m, (uint64_t)burst * BURST + i);
                xwrite(fd, &m, sizeof(m), "writer");
            }
            report(1, burst);
            sleep_ms(10);
        }
    }
    if (wl_fork() == 0) {
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            bad("reader: open %s: %s", path, strerror(errno));
        for (uint64_t seq = 0;; seq++) {
            xread(fd, &m, sizeof(m), "reader");
            msg_check(&m, seq, "reader");
            if (seq % BURST == BURST - 1)
                report(2, seq / BURST);
            if (seq % 4 == 3)
                sleep_ms(1);
        }
    }
    report_seal();
    collect(2);
    say("ready");
    for (;;) {
        collect(2);
        check_children();
        tick();
    }
}
