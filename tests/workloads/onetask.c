/* One process: a heap block and a stack array with known contents, a counter
 * that must equal the tick number, and its own PID, all checked every tick. */
#include "wl.h"

#define HEAP (4UL << 20)

int main(void)
{
    uint64_t *heap = malloc(HEAP);
    uint64_t stack[512];
    if (!heap)
        bad("malloc failed");
    pattern_fill(heap, HEAP, 1);
    pattern_fill(stack, sizeof(stack), 2);
    pid_t pid = getpid();
    unsigned long count = 0;
    say("ready");
    for (;;) {
        if (!pattern_ok(heap, HEAP, 1))
            bad("heap contents changed");
        if (!pattern_ok(stack, sizeof(stack), 2))
            bad("stack contents changed");
        if (count != wl_tick)
            bad("counter %lu at tick %lu", count, wl_tick);
        if (getpid() != pid)
            bad("PID %d became %d", (int)pid, (int)getpid());
        tick();
        count++;
        sleep_ms(20);
    }
}
