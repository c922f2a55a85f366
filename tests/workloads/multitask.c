/* A 2x2 tree: the root, two children, and two children of each. Every
 * descendant counts in its own memory and reports the count to the root,
 * which checks each one's counts are consecutive; parents watch their
 * children. Nothing depends on PIDs, so it also restores with new ones. */
#include "wl.h"

static void __attribute__((noreturn)) task(uint32_t id, int kids)
{
    for (int k = 0; k < kids; k++)
        if (wl_fork() == 0)
            task(2 * id + 1 + k, 0);    /* 1 -> 3, 4 and 2 -> 5, 6 */
    for (uint32_t count = 0;; count++) {
        report(id, count);
        if (kids)
            check_children();
        sleep_ms(20);
    }
}

int main(void)
{
    report_init();
    for (uint32_t id = 1; id <= 2; id++)
        if (wl_fork() == 0)
            task(id, 2);
    report_seal();
    collect(6);
    say("ready");
    for (;;) {
        collect(6);
        check_children();
        tick();
    }
}
