/* Sequence-numbered messages go producer -> relay -> root through two pipes.
 * The producer writes bursts faster than the relay reads, so the first pipe
 * holds data at any checkpoint and the producer is often blocked in write;
 * the relay and the root check every message, so loss or duplication shows. */
#include "wl.h"

#define BURST 256

int main(void)
{
    int a[2], b[2];
    if (pipe(a) || pipe(b))
        bad("pipe: %s", strerror(errno));
    struct msg m;
    if (wl_fork() == 0) {
        close(a[0]);
        close(b[0]);
        close(b[1]);
        for (uint64_t seq = 0;;) {
            for (int i = 0; i < BURST; i++) {
                msg_make(&m, seq++);
                xwrite(a[1], &m, sizeof(m), "producer");
            }
            sleep_ms(40);
        }
    }
    if (wl_fork() == 0) {
        close(a[1]);
        close(b[0]);
        for (uint64_t seq = 0;; seq++) {
            xread(a[0], &m, sizeof(m), "relay");
            msg_check(&m, seq, "relay");
            xwrite(b[1], &m, sizeof(m), "relay");
            sleep_ms(1);
        }
    }
    close(a[0]);
    close(a[1]);
    close(b[1]);
    uint64_t next_tick = 0;
    for (uint64_t seq = 0;; seq++) {
        await_input(b[0]);
        xread(b[0], &m, sizeof(m), "root");
        msg_check(&m, seq, "root");
        if (seq == 0)
            say("ready");
        if (now_ms() >= next_tick) {
            check_children();
            tick();
            next_tick = now_ms() + 20;
        }
    }
}
