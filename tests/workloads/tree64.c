/* 64 tasks: the root, 3 children, 12 grandchildren and 48 great-grandchildren.
 * Every task counts in its own memory and reports the count to the root,
 * which checks all 63 counts stay consecutive; parents watch their children. */
#include "wl.h"

static const int fanout[] = { 3, 4, 4 };
#define DEPTH 3

/* Tasks in a subtree rooted at depth d. */
static uint32_t size(int d)
{
    return d == DEPTH ? 1 : 1 + fanout[d] * size(d + 1);
}

/* Spawns the children of task id (at depth d), depth-first numbering. */
static void spawn(uint32_t id, int d)
{
    for (int k = 0; d < DEPTH && k < fanout[d]; k++) {
        uint32_t child = id + 1 + k * size(d + 1);
        if (wl_fork() == 0) {
            spawn(child, d + 1);
            for (uint32_t n = 0;; n++) {
                report(child, n);
                if (d + 1 < DEPTH)
                    check_children();
                sleep_ms(20);
            }
        }
    }
}

int main(void)
{
    report_init();
    spawn(0, 0);
    report_seal();
    collect(size(0) - 1);
    say("ready");
    for (;;) {
        collect(size(0) - 1);
        check_children();
        tick();
    }
}
