/* x86_64 pieces of the native core and the restorer. */
#ifndef UCR_ARCH_H
#define UCR_ARCH_H
#include <stdint.h>

#define UCR_ARCH_NAME "x86_64"
#define UCR_RSEQ_SIG 0x53053053
#define ARCH_SET_GS 0x1001
#define ARCH_SET_FS 0x1002

static inline long ucr_sys6(long n, long a1, long a2, long a3, long a4, long a5, long a6)
{
    register long r10 __asm__("r10") = a4;
    register long r8 __asm__("r8") = a5;
    register long r9 __asm__("r9") = a6;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* The kernel's struct sigaction for rt_sigaction has the same order as
 * struct ucr_sigaction here, so it is passed as it is. */
#define UCR_KSIGACTION_SAME_AS_PLAN 1

/* Switch to a new stack and enter the restorer; the stack pointer is set as
 * after a call (misaligned by one word) because the entry is a C function. */
static inline __attribute__((noreturn)) void ucr_arch_jump(uint64_t entry, uint64_t arg, uint64_t stack_top)
{
    __asm__ volatile("mov %2, %%rsp\n\t"
                     "sub $8, %%rsp\n\t"
                     "jmp *%0"
                     :: "a"(entry), "D"(arg), "S"(stack_top & ~15ULL) : "memory");
    __builtin_unreachable();
}

/* rt_sigreturn reads the frame at sp - 8 (where the handler's return address was). */
static inline __attribute__((noreturn)) void ucr_arch_sigreturn(uint64_t sp)
{
    __asm__ volatile("mov %0, %%rsp\n\t"
                     "mov $15, %%eax\n\t"
                     "syscall\n\t"
                     "hlt"
                     :: "r"(sp) : "memory");
    __builtin_unreachable();
}

/* TLS is not part of the signal frame on x86_64. */
static inline long ucr_arch_restore_tls(const uint64_t *tls)
{
    long r = ucr_sys6(__NR_arch_prctl, ARCH_SET_FS, (long)tls[0], 0, 0, 0, 0);
    if (r)
        return r;
    return ucr_sys6(__NR_arch_prctl, ARCH_SET_GS, (long)tls[1], 0, 0, 0, 0);
}

/* Facts rstr compares with the image: XCR0 (enabled XSAVE features) and the
 * size of the standard-format XSAVE area for them. Only the native core
 * includes this; the restorer has no use for it. */
/* clone3 for a thread: the child starts on an empty stack, so it must not
 * return into C code; it calls fn(arg), which never returns. */
static inline long ucr_arch_clone_thread(void *args, long size, void (*fn)(void *), void *arg)
{
    register long r12 __asm__("r12") = (long)fn;
    register long r13 __asm__("r13") = (long)arg;
    long ret;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "mov %%r13, %%rdi\n\t"
                     "call *%%r12\n\t"
                     "hlt\n"
                     "1:"
                     : "=a"(ret)
                     : "a"(435L), "D"(args), "S"(size), "r"(r12), "r"(r13)
                     : "rcx", "r11", "memory");
    return ret;
}

#ifdef UCR_CORE
#include <cpuid.h>
/* The XSAVE features a task has by default and the size of its signal
 * frame's XSAVE area: XCR0 less the features the kernel enables on first use
 * only (XFD ones: AMX tile data), whose room a sigframe lacks unless the task
 * asked for it; rt_sigreturn with a larger area falls back to FXSAVE state. */
static inline void ucr_arch_info_fill(uint64_t *out)
{
    unsigned int eax, ebx, ecx, edx, lo, hi, size = 576;  /* legacy area + header */
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    uint64_t features = ((uint64_t)hi << 32) | lo;
    for (int i = 2; i < 63; i++) {
        if (!(features >> i & 1))
            continue;
        __cpuid_count(0xd, i, eax, ebx, ecx, edx);
        if (ecx & 4)
            features &= ~(1ULL << i);
        else if (ebx + eax > size)
            size = ebx + eax;
    }
    out[0] = features;
    out[1] = size;
}
#endif

#endif
