/* Memory that keeps changing in ways incremental and pre-copy images must
 * follow: every tick it writes some random pages of a region (each page holds
 * its index and a generation the program remembers elsewhere), zeroes one with
 * MADV_DONTNEED, replaces a small mapping (munmap + mmap), and writes a shared
 * anonymous mapping; then checks everything and prints "tick N" ("BAD ..." and
 * exit 1 on a mismatch). usage: dirty MIB PERCENT_PER_SECOND [nocheck] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define TICK_MS 50
#define CHURN (256 * 1024UL)
#define ZEROED UINT32_MAX

static uint64_t seed = 88172645463325252ULL;
static uint64_t rnd(void) { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; return seed; }

static void fill(char *page, uint64_t tag)
{
    for (size_t i = 0; i < PAGE / 8; i++)
        ((uint64_t *)page)[i] = tag * 31 + i;
}

static int same(const char *page, uint64_t tag)
{
    return ((const uint64_t *)page)[0] == tag * 31 && ((const uint64_t *)page)[PAGE / 8 - 1] == tag * 31 + PAGE / 8 - 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: dirty MIB PERCENT_PER_SECOND [nocheck]\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    size_t npages = strtoul(argv[1], NULL, 10) * (1 << 20) / PAGE;
    double pct = atof(argv[2]);
    int check = argc < 4;
    size_t per_tick = (size_t)(npages * pct / 100.0 * TICK_MS / 1000.0);
    char *mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *gen = calloc(npages, sizeof(*gen));
    char *shared = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    char *churn = mmap(NULL, CHURN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || !gen || shared == MAP_FAILED || churn == MAP_FAILED) { perror("setup"); return 2; }
    for (size_t p = 0; p < npages; p++)
        fill(mem + p * PAGE, (uint64_t)p << 32);
    puts("ready");
    uint64_t churn_tag = 1;
    for (size_t off = 0; off < CHURN; off += PAGE)
        fill(churn + off, churn_tag + off);
    for (uint64_t tick = 0;; tick++) {
        for (size_t k = 0; k < per_tick; k++) {
            size_t p = rnd() % npages;
            gen[p] = gen[p] == ZEROED ? 1 : gen[p] + 1;
            fill(mem + p * PAGE, ((uint64_t)p << 32) + gen[p]);
        }
        if (tick % 5 == 0) {
            size_t p = rnd() % npages;
            madvise(mem + p * PAGE, PAGE, MADV_DONTNEED);
            gen[p] = ZEROED;
        }
        if (tick % 7 == 0) {
            munmap(churn, CHURN);
            churn = mmap(churn, CHURN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            churn_tag = tick + 2;
            for (size_t off = 0; off < CHURN; off += 2 * PAGE)  /* every other page stays zero */
                fill(churn + off, churn_tag + off);
        }
        fill(shared, tick);
        if (check) {
            for (size_t p = 0; p < npages; p++) {
                int ok = gen[p] == ZEROED ? ((uint64_t *)(mem + p * PAGE))[0] == 0 && mem[p * PAGE + PAGE - 1] == 0
                                          : same(mem + p * PAGE, ((uint64_t)p << 32) + gen[p]);
                if (!ok) { printf("BAD page %zu gen %u\n", p, gen[p]); return 1; }
            }
            for (size_t off = 0; off < CHURN; off += PAGE)
                if (off % (2 * PAGE) ? churn[off] != 0 || churn[off + PAGE - 1] != 0 : !same(churn + off, churn_tag + off)) {
                    printf("BAD churn %zu\n", off); return 1;
                }
            if (!same(shared, tick)) { printf("BAD shared\n"); return 1; }
        }
        printf("tick %llu\n", (unsigned long long)tick);
        struct timespec ts = { 0, TICK_MS * 1000000L };
        nanosleep(&ts, NULL);
    }
}
