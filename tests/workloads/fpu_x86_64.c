/* Keeps distinct values in ymm0-ymm14 inside a tight loop that never calls
 * anything, and checks them each round against memory; a mismatch exits 3.
 * Progress is counted in a shared file mapping the test reads. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static uint64_t patterns[15][4] __attribute__((aligned(32)));

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: fpu PROGRESS_FILE\n"); return 2; }
    int fd = open(argv[1], O_RDWR);
    volatile uint64_t *progress = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (fd < 0 || progress == MAP_FAILED) { perror(argv[1]); return 2; }
    for (int i = 0; i < 15; i++)
        for (int j = 0; j < 4; j++)
            patterns[i][j] = 0x0123456789abcdefULL * (uint64_t)(i + 1) + (uint64_t)j * 0x1111;
#define LOAD(n) "vmovdqa " #n "*32(%1), %%ymm" #n "\n\t"
#define CHECK(n) "vmovdqa " #n "*32(%1), %%ymm15\n\t" \
                 "vpcmpeqq %%ymm" #n ", %%ymm15, %%ymm15\n\t" \
                 "vpmovmskb %%ymm15, %%eax\n\t" \
                 "cmp $-1, %%eax\n\t" \
                 "jne 2f\n\t"
    __asm__ volatile(
        LOAD(0) LOAD(1) LOAD(2) LOAD(3) LOAD(4) LOAD(5) LOAD(6) LOAD(7)
        LOAD(8) LOAD(9) LOAD(10) LOAD(11) LOAD(12) LOAD(13) LOAD(14)
        "1:\n\t"
        "incq (%0)\n\t"
        CHECK(0) CHECK(1) CHECK(2) CHECK(3) CHECK(4) CHECK(5) CHECK(6) CHECK(7)
        CHECK(8) CHECK(9) CHECK(10) CHECK(11) CHECK(12) CHECK(13) CHECK(14)
        "jmp 1b\n\t"
        "2:\n\t"
        "mov $231, %%eax\n\t"   /* exit_group(3) */
        "mov $3, %%edi\n\t"
        "syscall\n\t"
        :: "r"(progress), "r"(patterns) : "rax", "rdi", "rcx", "r11", "memory");
    return 0;
}
