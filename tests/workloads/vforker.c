/* A parent that spends most of its time in vfork, waiting for a child that
 * sleeps before it exits (as dash's `sh -c` runs commands): ckpt must wait
 * for the child to leave rather than freeze it and the parent with it. Each
 * child's exit status is checked, and so is a counter, every tick. */
#include "wl.h"
#include <sys/syscall.h>

int main(void)
{
    unsigned long count = 0;
    say("ready");
    for (;;) {
        pid_t child = vfork();
        if (child == 0) {
            /* Only raw syscalls in a vfork child: nothing of the parent's libc state. */
            struct timespec ts = { 0, 150 * 1000000L };
            syscall(SYS_nanosleep, &ts, NULL);
            syscall(SYS_exit, 7);
        }
        if (child < 0)
            bad("vfork: %s", strerror(errno));
        int status;
        if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 7)
            bad("child %d: status %#x", (int)child, status);
        if (count != wl_tick)
            bad("counter %lu at tick %lu", count, wl_tick);
        tick();
        count++;
        sleep_ms(5);
    }
}
