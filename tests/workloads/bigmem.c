/* Three processes with 64 MiB each. The root fills its region before
 * forking two children, which rewrite the upper half of their copy: the tree
 * holds copy-on-write pages shared by all three as well as private ones.
 * Each process re-checks one eighth of its region per round (all of it every
 * eight rounds) and keeps its round count in the region's last page. */
#include "wl.h"
#include <sys/mman.h>

#define PARTS 8
#define PART (8UL << 20)
#define WORDS (PARTS * PART / 8)

static uint64_t *mem;

/* Owner 0 is the root; children own the upper half of their copy. */
static uint64_t seed(int owner, int part)
{
    return (part < PARTS / 2 ? 0 : owner) * PARTS + part;
}

static void round_check(int owner, uint64_t round)
{
    int part = round % PARTS;
    if (!pattern_ok(mem + part * PART / 8, PART, seed(owner, part)))
        bad("task %d: part %d of its 64 MiB changed", owner, part);
    if (mem[WORDS] != round)
        bad("task %d: round counter in memory is %llu, expected %llu", owner,
            (unsigned long long)mem[WORDS], (unsigned long long)round);
    mem[WORDS] = round + 1;
}

int main(void)
{
    mem = mmap(NULL, PARTS * PART + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        bad("mmap: %s", strerror(errno));
    for (int part = 0; part < PARTS; part++)
        pattern_fill(mem + part * PART / 8, PART, seed(0, part));
    report_init();
    for (int owner = 1; owner <= 2; owner++) {
        if (wl_fork())
            continue;
        for (int part = PARTS / 2; part < PARTS; part++)
            pattern_fill(mem + part * PART / 8, PART, seed(owner, part));
        for (uint64_t round = 0;; round++) {
            round_check(owner, round);
            report(owner, round);
            sleep_ms(20);
        }
    }
    report_seal();
    collect(2);
    say("ready");
    for (uint64_t round = 0;; round++) {
        round_check(0, round);
        collect(2);
        check_children();
        tick();
    }
}
