/* AArch64 pieces of the native core and the restorer. */
#ifndef UCR_ARCH_H
#define UCR_ARCH_H
#include <stdint.h>

#define UCR_ARCH_NAME "aarch64"
#define UCR_RSEQ_SIG 0xd428bc00   /* glibc's RSEQ_SIG on aarch64 (brk #0x45e0) */

static inline long ucr_sys6(long n, long a1, long a2, long a3, long a4, long a5, long a6)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a1;
    register long x1 __asm__("x1") = a2;
    register long x2 __asm__("x2") = a3;
    register long x3 __asm__("x3") = a4;
    register long x4 __asm__("x4") = a5;
    register long x5 __asm__("x5") = a6;
    __asm__ volatile("svc #0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory");
    return x0;
}

/* arm64's struct sigaction for rt_sigaction has the same order as
 * struct ucr_sigaction ({handler, flags, restorer, mask}), so it is passed as it is. */
#define UCR_KSIGACTION_SAME_AS_PLAN 1

static inline __attribute__((noreturn)) void ucr_arch_jump(uint64_t entry, uint64_t arg, uint64_t stack_top)
{
    register uint64_t x0 __asm__("x0") = arg;
    __asm__ volatile("mov sp, %1\n\t"
                     "br %0"
                     :: "r"(entry), "r"(stack_top & ~15ULL), "r"(x0) : "memory");
    __builtin_unreachable();
}

/* rt_sigreturn reads struct rt_sigframe at sp (16-aligned); its
 * uc_mcontext.__reserved holds an fpsimd_context and a null terminator. */
static inline __attribute__((noreturn)) void ucr_arch_sigreturn(uint64_t sp)
{
    __asm__ volatile("mov sp, %0\n\t"
                     "mov x8, #139\n\t"   /* __NR_rt_sigreturn */
                     "svc #0\n\t"
                     "brk #0"
                     :: "r"(sp) : "memory");
    __builtin_unreachable();
}

/* tls[0]: tpidr_el0, which user space may write itself. */
static inline long ucr_arch_restore_tls(const uint64_t *tls)
{
    __asm__ volatile("msr tpidr_el0, %0" :: "r"(tls[0]) : "memory");
    return 0;
}

/* clone3 for a thread: the child starts on an empty stack, so it must not
 * return into C code; it calls fn(arg), which never returns. */
static inline long ucr_arch_clone_thread(void *args, long size, void (*fn)(void *), void *arg)
{
    register long x8 __asm__("x8") = 435;
    register long x0 __asm__("x0") = (long)args;
    register long x1 __asm__("x1") = size;
    __asm__ volatile("svc #0\n\t"
                     "cbnz x0, 1f\n\t"
                     "mov x0, %[arg]\n\t"
                     "blr %[fn]\n\t"
                     "brk #0\n"
                     "1:"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), [fn] "r"(fn), [arg] "r"(arg)
                     : "x30", "memory");
    return x0;
}

#ifdef UCR_CORE
#include <sys/auxv.h>
static inline void ucr_arch_info_fill(uint64_t *out)
{
    out[0] = getauxval(AT_HWCAP);
    out[1] = getauxval(AT_HWCAP2);
}
#endif

#endif
