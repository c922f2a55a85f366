/* 32-bit ARM (EABI, armhf) pieces of the native core and the restorer.
 * Also what an armhf build runs on an arm64 kernel (compat mode). */
#ifndef UCR_ARCH_H
#define UCR_ARCH_H
#include <stdint.h>

#define UCR_ARCH_NAME "arm"
#define UCR_RSEQ_SIG 0xe7f5def3   /* glibc's RSEQ_SIG for little-endian ARM */
#define UCR_ARM_NR_SET_TLS 0x0f0005 /* __ARM_NR_set_tls: private ARM syscall */

/* EABI: number in r7, arguments in r0-r5. With -O2 r7 is free even in
 * Thumb code (no frame pointer). */
static inline long ucr_sys6(long n, long a1, long a2, long a3, long a4, long a5, long a6)
{
    register long r7 __asm__("r7") = n;
    register long r0 __asm__("r0") = a1;
    register long r1 __asm__("r1") = a2;
    register long r2 __asm__("r2") = a3;
    register long r3 __asm__("r3") = a4;
    register long r4 __asm__("r4") = a5;
    register long r5 __asm__("r5") = a6;
    __asm__ volatile("svc #0"
                     : "+r"(r0)
                     : "r"(r7), "r"(r1), "r"(r2), "r"(r3), "r"(r4), "r"(r5)
                     : "memory");
    return r0;
}

/* The kernel's struct sigaction on ARM: {handler, flags, restorer, mask[2]},
 * 20 bytes of 32-bit words; the plan holds 64-bit words, so convert. */
#define UCR_KSIGACTION_SAME_AS_PLAN 0
struct ucr_ksigaction {
    uint32_t handler, flags, restorer, mask[2];
};

static inline void ucr_arch_ksigaction(struct ucr_ksigaction *k, const struct ucr_sigaction *a)
{
    k->handler = (uint32_t)a->handler;
    k->flags = (uint32_t)a->flags;
    k->restorer = (uint32_t)a->restorer;
    k->mask[0] = (uint32_t)a->mask;
    k->mask[1] = (uint32_t)(a->mask >> 32);
}

/* Enter the restorer on a new stack. The restorer is built by the same
 * compiler with the same default instruction set as the core, so a Thumb
 * core means a Thumb blob: set bit 0 for the interworking branch. */
static inline __attribute__((noreturn)) void ucr_arch_jump(uint64_t entry, uint64_t arg, uint64_t stack_top)
{
    uint32_t e = (uint32_t)entry;
#if defined(__thumb__)
    e |= 1;
#endif
    register uint32_t r0 __asm__("r0") = (uint32_t)arg;
    __asm__ volatile("mov sp, %1\n\t"
                     "bx %0"
                     :: "r"(e), "r"((uint32_t)stack_top & ~15U), "r"(r0) : "memory");
    __builtin_unreachable();
}

/* rt_sigreturn reads struct rt_sigframe at sp (sp must be 8-aligned); the
 * frame's uc_regspace carries the VFP block. */
static inline __attribute__((noreturn)) void ucr_arch_sigreturn(uint64_t sp)
{
    register uint32_t r1 __asm__("r1") = (uint32_t)sp;
    __asm__ volatile("mov sp, %0\n\t"
                     "mov r7, #173\n\t"   /* __NR_rt_sigreturn */
                     "svc #0\n\t"
                     "udf #0"
                     :: "r"(r1) : "memory");
    __builtin_unreachable();
}

/* tls[0]: tp_value (TPIDRURO) via the private set_tls call; tls[1]: the
 * ThumbEE handler base (TEEHBR), written only when tls[2] says the CPU has
 * ThumbEE (HWCAP_THUMBEE); rstr refuses a non-zero state otherwise. */
static inline long ucr_arch_restore_tls(const uint64_t *tls)
{
    long r = ucr_sys6(UCR_ARM_NR_SET_TLS, (long)tls[0], 0, 0, 0, 0, 0);
    if (r)
        return r;
    if (tls[2]) {
        uint32_t v = (uint32_t)tls[1];
        __asm__ volatile(".arch armv7-a\n\t"
                         "mcr p14, 6, %0, c1, c0, 0" :: "r"(v));
    }
    return 0;
}

/* clone3 for a thread: the child starts on an empty stack, so it must not
 * return into C code; it calls fn(arg), which never returns. */
static inline long ucr_arch_clone_thread(void *args, long size, void (*fn)(void *), void *arg)
{
    register long r7 __asm__("r7") = 435;
    register long r0 __asm__("r0") = (long)args;
    register long r1 __asm__("r1") = size;
    __asm__ volatile("svc #0\n\t"
                     "cmp r0, #0\n\t"
                     "bne 1f\n\t"
                     "mov r0, %[arg]\n\t"
                     "blx %[fn]\n\t"
                     "udf #0\n"
                     "1:"
                     : "+r"(r0)
                     : "r"(r7), "r"(r1), [fn] "r"(fn), [arg] "r"(arg)
                     : "lr", "memory", "cc");
    return r0;
}

#ifdef UCR_CORE
#include <sys/auxv.h>
/* out[0]: AT_HWCAP, out[1]: AT_HWCAP2 (Python reads the rest itself). */
static inline void ucr_arch_info_fill(uint64_t *out)
{
    out[0] = getauxval(AT_HWCAP);
    out[1] = getauxval(AT_HWCAP2);
}
#endif

#endif
