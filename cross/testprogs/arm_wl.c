/* ARM workloads for cross/test_arm.py (armhf and aarch64), one binary:
 *   arm_wl counter N   prints 0..N-1, one line every 10 ms, then "done"
 *   arm_wl memsum      fills 17 MiB with a pattern, prints "ready SUM", waits for
 *                      SIGUSR1, checks the sum again: "memsum ok" / "memsum BAD"
 *   arm_wl fp          holds known values in d0-d31/fpscr (v0-v31/fpsr/fpcr) inside
 *                      an asm loop that spins until SIGUSR1; then checks them
 *   arm_wl signal      SIGUSR2 blocked and pending, a handler installed; after
 *                      SIGUSR1 checks it is still pending and runs the handler
 *   arm_wl sleep S     nanosleep(S s): "sleep ok" once at least S s have passed
 * Exit status 0 when the check holds. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static volatile sig_atomic_t usr2_runs;

static void on_usr1(int s) { (void)s; go = 1; }
static void on_usr2(int s) { (void)s; usr2_runs++; }

static void wait_go(void)
{
    struct timespec ts = { 0, 10 * 1000 * 1000 };
    while (!go)
        nanosleep(&ts, NULL);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int counter(int n)
{
    struct timespec ts = { 0, 10 * 1000 * 1000 };
    for (volatile int i = 0; i < n; i++) {
        printf("%d\n", i);
        fflush(stdout);
        nanosleep(&ts, NULL);
    }
    printf("done\n");
    return 0;
}

static uint64_t sum(const uint32_t *p, size_t n)
{
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++)
        s = s * 31 + p[i];
    return s;
}

static int memsum(void)
{
    size_t n1 = (16u << 20) / 4, n2 = (1u << 20) / 4;
    uint32_t *a = malloc(n1 * 4);
    uint32_t *b = mmap(NULL, n2 * 4, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t x = 12345;
    for (size_t i = 0; i < n1; i++)
        a[i] = x = x * 1103515245 + 12345;
    for (size_t i = 0; i < n2; i++)
        b[i] = x = x * 1103515245 + 12345;
    uint64_t s = sum(a, n1) ^ sum(b, n2);
    printf("ready %llx\n", (unsigned long long)s);
    fflush(stdout);
    wait_go();
    uint64_t t = sum(a, n1) ^ sum(b, n2);
    printf("memsum %s %llx\n", s == t ? "ok" : "BAD", (unsigned long long)t);
    return s != t;
}

#if defined(__aarch64__)
#define NREG 32
static uint64_t in[NREG * 2], out[NREG * 2];
static uint64_t fpcr_in = 0x00c00000, fpcr_out; /* RMode = towards zero */

static void fp_loop(void)
{
    __asm__ volatile(
        "msr fpcr, %3\n\t"
        "ldp q0, q1, [%0, #0]\n\tldp q2, q3, [%0, #32]\n\tldp q4, q5, [%0, #64]\n\tldp q6, q7, [%0, #96]\n\t"
        "ldp q8, q9, [%0, #128]\n\tldp q10, q11, [%0, #160]\n\tldp q12, q13, [%0, #192]\n\tldp q14, q15, [%0, #224]\n\t"
        "ldp q16, q17, [%0, #256]\n\tldp q18, q19, [%0, #288]\n\tldp q20, q21, [%0, #320]\n\tldp q22, q23, [%0, #352]\n\t"
        "ldp q24, q25, [%0, #384]\n\tldp q26, q27, [%0, #416]\n\tldp q28, q29, [%0, #448]\n\tldp q30, q31, [%0, #480]\n\t"
        "1: ldr w1, [%2]\n\tcbz w1, 1b\n\t"
        "stp q0, q1, [%1, #0]\n\tstp q2, q3, [%1, #32]\n\tstp q4, q5, [%1, #64]\n\tstp q6, q7, [%1, #96]\n\t"
        "stp q8, q9, [%1, #128]\n\tstp q10, q11, [%1, #160]\n\tstp q12, q13, [%1, #192]\n\tstp q14, q15, [%1, #224]\n\t"
        "stp q16, q17, [%1, #256]\n\tstp q18, q19, [%1, #288]\n\tstp q20, q21, [%1, #320]\n\tstp q22, q23, [%1, #352]\n\t"
        "stp q24, q25, [%1, #384]\n\tstp q26, q27, [%1, #416]\n\tstp q28, q29, [%1, #448]\n\tstp q30, q31, [%1, #480]\n\t"
        "mrs x1, fpcr\n\tstr x1, [%4]\n\t"
        :: "r"(in), "r"(out), "r"(&go), "r"(fpcr_in), "r"(&fpcr_out)
        : "x1", "x2", "memory", "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12",
          "v13", "v14", "v15", "v16", "v17", "v18", "v19", "v20", "v21", "v22", "v23", "v24", "v25", "v26",
          "v27", "v28", "v29", "v30", "v31");
}
#define FPCTL_OK (fpcr_out == fpcr_in)
#else
#define NREG 32
static uint64_t in[NREG], out[NREG];
static uint32_t fpcr_in = 0x00c00000, fpcr_out; /* fpscr RMode = towards zero */

static void fp_loop(void)
{
    __asm__ volatile(
        ".fpu neon-vfpv4\n\t"
        "vmsr fpscr, %3\n\t"
        "vldmia %0, {d0-d15}\n\tadd r1, %0, #128\n\tvldmia r1, {d16-d31}\n\t"
        "1: ldr r1, [%2]\n\tcmp r1, #0\n\tbeq 1b\n\t"
        "vstmia %1, {d0-d15}\n\tadd r1, %1, #128\n\tvstmia r1, {d16-d31}\n\t"
        "vmrs r1, fpscr\n\tstr r1, [%4]\n\t"
        :: "r"(in), "r"(out), "r"(&go), "r"(fpcr_in), "r"(&fpcr_out)
        : "r1", "memory", "d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8", "d9", "d10", "d11", "d12",
          "d13", "d14", "d15", "d16", "d17", "d18", "d19", "d20", "d21", "d22", "d23", "d24", "d25", "d26",
          "d27", "d28", "d29", "d30", "d31");
}
#define FPCTL_OK ((fpcr_out & 0x0fc00000) == fpcr_in)
#endif

static int fp(void)
{
    int n = sizeof(in) / sizeof(in[0]);
    for (int i = 0; i < n; i++)
        in[i] = 0x0123456789abcdefULL * (uint64_t)(i + 1) ^ ((uint64_t)i << 56);
    printf("ready\n");
    fflush(stdout);
    fp_loop();
    int bad = 0;
    for (int i = 0; i < n; i++)
        if (in[i] != out[i]) {
            printf("reg %d: %016llx != %016llx\n", i, (unsigned long long)out[i], (unsigned long long)in[i]);
            bad++;
        }
    if (!FPCTL_OK) {
        printf("fp control register %llx\n", (unsigned long long)fpcr_out);
        bad++;
    }
    printf("fp %s\n", bad ? "BAD" : "ok");
    return bad != 0;
}

static int sigtest(void)
{
    struct sigaction sa;
    sigset_t set, pend;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    raise(SIGUSR2);
    printf("ready\n");
    fflush(stdout);
    wait_go();
    sigpending(&pend);
    int pending = sigismember(&pend, SIGUSR2);
    struct sigaction cur;
    sigaction(SIGUSR2, NULL, &cur);
    int same = cur.sa_handler == on_usr2 && (cur.sa_flags & SA_RESTART);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    int ok = pending == 1 && same && usr2_runs == 1;
    printf("signal %s pending=%d action=%d runs=%d\n", ok ? "ok" : "BAD", pending, same, (int)usr2_runs);
    return !ok;
}

static int sleeper(int secs)
{
    struct timespec ts = { secs, 0 };
    double t0 = now();
    printf("ready\n");
    fflush(stdout);
    int r = nanosleep(&ts, NULL);
    double dt = now() - t0;
    int ok = r == 0 && dt >= secs;
    printf("sleep %s r=%d %.2f s\n", ok ? "ok" : "BAD", r, dt);
    return !ok;
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *m = argc > 1 ? argv[1] : "";
    if (!strcmp(m, "counter"))
        return counter(argc > 2 ? atoi(argv[2]) : 300);
    if (!strcmp(m, "memsum"))
        return memsum();
    if (!strcmp(m, "fp"))
        return fp();
    if (!strcmp(m, "signal"))
        return sigtest();
    if (!strcmp(m, "sleep"))
        return sleeper(argc > 2 ? atoi(argv[2]) : 4);
    fprintf(stderr, "usage: arm_wl counter|memsum|fp|signal|sleep\n");
    return 2;
}
