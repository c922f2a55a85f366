/* Asks for AMX, loads tile data into tmm0 and waits: a thread with state
 * that only a task that asked for it has room for. Exits 4 without AMX. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int main(void)
{
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA))
        return 4;
    static uint8_t config[64] __attribute__((aligned(64)));
    static uint8_t data[16 * 64] __attribute__((aligned(64)));
    config[0] = 1;                 /* palette 1 */
    config[16] = 64;               /* tmm0: 64 bytes a row */
    config[48] = 16;               /* tmm0: 16 rows */
    memset(data, 0x5a, sizeof data);
    __asm__ volatile("ldtilecfg (%0)\n\t"
                     "tileloadd (%1,%2,1), %%tmm0"
                     :: "r"(config), "r"(data), "r"(64L) : "memory");
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
