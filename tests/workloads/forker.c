/* A tree that never stops forking: the root and its two children each fork
 * short-lived children in a tight loop, and reap each one before the next,
 * checking it exited with the code it was given (so a zombie restored with
 * the wrong status, or a lost child, shows). Children report to the root
 * every 20 ms; the root ticks once both reported.
 *
 * forker [LINGER_MS [HEAP_MB]]: with LINGER_MS, each short-lived child lives
 * that long and only the root's children fork (the root just checks). A
 * short-lived child killed by SIGKILL is no failure: its parent prints
 * "lost PID" and goes on, so a test can kill one and see the rest continue.
 * HEAP_MB of patterned heap in the root, checked every tick, makes the
 * image large. */
#include "wl.h"

static long linger;

static void spawn_one(void)
{
    static unsigned long spawned;
    int code = (int)(spawned++ % 100) + 1;
    pid_t pid = wl_fork();
    if (pid == 0) {
        if (linger)
            sleep_ms(linger);
        _exit(code);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            bad("waitpid for short-lived child %d: %s", (int)pid, strerror(errno));
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
        say("lost %d", (int)pid);
        return;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != code)
        bad("short-lived child %d: wait status 0x%x, expected exit code %d", (int)pid, st, code);
}

static void __attribute__((noreturn)) worker(uint32_t id)
{
    uint64_t next = now_ms();
    for (uint32_t n = 0;;) {
        spawn_one();
        if (now_ms() >= next) {
            report(id, n++);
            next = now_ms() + 20;
        }
    }
}

int main(int argc, char **argv)
{
    linger = argc > 1 ? atol(argv[1]) : 0;
    size_t heap_len = (argc > 2 ? (size_t)atol(argv[2]) : 0) << 20;
    void *heap = heap_len ? malloc(heap_len) : NULL;
    if (heap_len && !heap)
        bad("malloc failed");
    pattern_fill(heap, heap_len, 7);
    report_init();
    for (uint32_t id = 1; id <= 2; id++)
        if (wl_fork() == 0)
            worker(id);
    report_seal();
    collect(2);
    say("ready");
    for (;;) {
        if (!linger)
            for (uint64_t until = now_ms() + 20; now_ms() < until;)
                spawn_one();
        collect(2);
        check_children();
        if (!pattern_ok(heap, heap_len, 7))
            bad("root: heap contents changed");
        tick();
    }
}
