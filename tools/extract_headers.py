#!/usr/bin/env python3
"""Generate usercr/headers/{x86_64,arm,aarch64}.py and <arch>_abi.h.

Syscall numbers and constants come from each toolchain's UAPI headers;
struct sizes/offsets come from a cross-compiled probe object read with
pyelftools (no target code is run); linux-cr numbers come from kernel
trees given with --kernel-src (default: the reconstructed linux-cr fixture
in tests/fixtures/linux-cr, since no real linux-cr tree is available).

    python tools/extract_headers.py            # regenerate usercr/headers
    python tools/extract_headers.py --check    # exit 1 if committed files drift
"""
from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "usercr" / "headers"
DEFAULT_KERNEL_SRC = ROOT / "tests" / "fixtures" / "linux-cr"
CMDLINE = "python tools/extract_headers.py"

ARCHES = {
    "x86_64": {"cc": "gcc", "ucontext_uapi": True},
    "arm": {"cc": "arm-linux-gnueabihf-gcc", "ucontext_uapi": False},
    "aarch64": {"cc": "aarch64-linux-gnu-gcc", "ucontext_uapi": True},
}

# The syscalls usercr issues; absence on an arch is an error unless listed
# in NOT_ON (the arch simply has no such entry point).
REQUIRED_SYSCALLS = """
read write close mmap munmap mprotect mremap brk rt_sigaction rt_sigprocmask
rt_sigreturn rt_sigqueueinfo rt_tgsigqueueinfo sigaltstack prctl arch_prctl
set_tls set_tid_address set_robust_list rseq clone clone3 exit exit_group
getpid gettid kill tgkill dup dup3 fcntl lseek open openat close_range fchdir
chroot chdir umask setresuid setresgid setgroups setfsuid setfsgid prlimit64
process_vm_readv process_vm_writev kcmp finit_module sched_setattr accept4
nanosleep clock_nanosleep restart_syscall pause ptrace wait4 waitid
pidfd_open futex madvise getrlimit mmap2 ugetrlimit seccomp capset
""".split()
NOT_ON = {
    "x86_64": {"set_tls", "mmap2", "ugetrlimit"},
    # EABI dropped the OABI-only mmap/getrlimit (use mmap2/ugetrlimit).
    "arm": {"arch_prctl", "mmap", "getrlimit"},
    # asm-generic: no open/pause (openat/ppoll), no mmap2/ugetrlimit.
    "aarch64": {"arch_prctl", "set_tls", "open", "pause", "mmap2", "ugetrlimit"},
}

# Macros harvested from `cc -E -dM` by prefix; anything that is not an
# integer constant expression is dropped after the compiler rejects it.
CONST_PREFIXES = (
    "PTRACE_", "NT_", "PR_", "CLONE_", "SA_", "SIG", "SS_", "MAP_", "PROT_",
    "MADV_", "MREMAP_", "RSEQ_", "UC_", "ARCH_", "FP_XSTATE_", "PSR_",
    "FPSIMD_MAGIC", "ESR_MAGIC", "EXTRA_MAGIC", "SVE_MAGIC", "ZA_MAGIC",
    "CSIGNAL", "MINSIGSTKSZ", "_NSIG", "ARM_VFPREGS_SIZE", "ELF_NGREG",
    "FUTEX_", "CLOSE_RANGE_", "TIOC", "SHM_", "F_",
    "SECCOMP_", "BPF_", "SECBIT_", "SECURE_", "_LINUX_CAPABILITY_", "CAP_",
    "IN_", "FIONREAD",
    "EPOLL",
    "TFD_",
    "AT_FDCWD",
)
CONST_EXCLUDE = {"SIG_DFL", "SIG_IGN", "SIG_ERR", "EPOLL_PACKED"}

UAPI_INCLUDES = """\
#include <stddef.h>
#include <asm/unistd.h>
#include <linux/ptrace.h>
#include <asm/ptrace.h>
#include <linux/elf.h>
#include <linux/prctl.h>
#include <linux/sched.h>
#include <asm/signal.h>
#include <asm/siginfo.h>
#include <asm/sigcontext.h>
#include <linux/mman.h>
#include <linux/rseq.h>
#include <linux/futex.h>
#include <linux/close_range.h>
#include <linux/fcntl.h>
#include <linux/kcmp.h>
#include <linux/shm.h>
#include <asm/ioctls.h>
#include <linux/wait.h>
#include <linux/seccomp.h>
#include <linux/filter.h>
#include <linux/securebits.h>
#include <linux/capability.h>
#include <linux/inotify.h>
#include <linux/eventpoll.h>
#include <linux/timerfd.h>
"""
ARCH_INCLUDES = {
    "x86_64": "#include <asm/ucontext.h>\n#include <asm/prctl.h>\n",
    "arm": "",
    "aarch64": "#include <asm/ucontext.h>\n",
}

# Kernel-internal structs reproduced from UAPI pieces (not exported).
PROBE_TYPES = {
    "x86_64": """
/* arch/x86/include/asm/sigframe.h (64-bit); fp state follows, found via
   uc.uc_mcontext.fpstate. */
struct ucr_rt_sigframe { char *pretcode; struct ucontext uc; struct siginfo info; };
/* include/linux/signal_types.h with __ARCH_HAS_SA_RESTORER. */
struct ucr_kernel_sigaction { void *handler; unsigned long flags; void *restorer;
    unsigned long mask[64 / (8 * sizeof(unsigned long))]; };
""",
    "arm": """
/* arch/arm/include/asm/{user,ucontext}.h and arch/arm/kernel/signal.h:
   none of these is in UAPI.  Kernel sigset_t is 64 bits (UAPI's is 32). */
typedef struct { unsigned long sig[2]; } ucr_ksigset_t;
struct user_vfp { unsigned long long fpregs[32]; unsigned long fpscr; };
struct user_vfp_exc { unsigned long fpexc; unsigned long fpinst; unsigned long fpinst2; };
struct ucontext {
    unsigned long uc_flags; struct ucontext *uc_link; stack_t uc_stack;
    struct sigcontext uc_mcontext; ucr_ksigset_t uc_sigmask;
    int __unused[32 - (sizeof(ucr_ksigset_t) / sizeof(int))];
    unsigned long uc_regspace[128] __attribute__((__aligned__(8)));
};
#define VFP_MAGIC 0x56465001
struct vfp_sigframe { unsigned long magic; unsigned long size;
    struct user_vfp ufp; struct user_vfp_exc ufp_exc; } __attribute__((__aligned__(8)));
#define DUMMY_MAGIC 0xb0d9ed01
/* Mainline (checked in 6.1) has retcode[4] (FDPIC); linux-cr era had [2]. */
struct ucr_sigframe { struct ucontext uc; unsigned long retcode[4]; };
struct ucr_rt_sigframe { struct siginfo info; struct ucr_sigframe sig; };
struct ucr_sigframe_2010 { struct ucontext uc; unsigned long retcode[2]; };
struct ucr_rt_sigframe_2010 { struct siginfo info; struct ucr_sigframe_2010 sig; };
/* include/linux/signal_types.h with __ARCH_HAS_SA_RESTORER. */
struct ucr_kernel_sigaction { void *handler; unsigned long flags; void *restorer;
    ucr_ksigset_t mask; };
""",
    "aarch64": """
/* arch/arm64/kernel/signal.c; a struct frame_record {fp, lr} follows. */
struct ucr_rt_sigframe { struct siginfo info; struct ucontext uc; };
/* arm64's UAPI defines SA_RESTORER (for AArch32 compat), so asm-generic
   defines __ARCH_HAS_SA_RESTORER and the kernel's struct has a restorer
   (measured: rt_sigaction writes 32 bytes, the mask at 24). */
struct ucr_kernel_sigaction { void *handler; unsigned long flags; void *restorer;
    unsigned long mask[1]; };
""",
}

# Extra values from kernel source that no header states (or that only
# headers newer than the toolchains' state).
_COMMON_EXTRA = {
    "UCR_KCMP_FILE": "KCMP_FILE",  # enums, not macros
    "UCR_KCMP_VM": "KCMP_VM",
    "UCR_KCMP_EPOLL_TFD": "KCMP_EPOLL_TFD",
    "UCR_WALL": "__WALL",  # waitpid's, which Python does not name
    "UCR_PR_TIMER_CREATE_RESTORE_IDS": "77",  # Linux 6.14 UAPI
    "UCR_EFD_SEMAPHORE": "1",  # include/linux/eventfd.h: not in the toolchains' UAPI
}
EXTRA_CONSTANTS = {
    "x86_64": {},
    # arch/arm/kernel/ptrace.c sizes the NT_ARM_VFP regset as 32*8+4 = 260
    # while sizeof(struct user_vfp) is 264 (tail padding).
    "arm": {"UCR_VFP_REGSET_SIZE": "32 * 8 + 4"},
    "aarch64": {},
}

_COMMON_LAYOUTS = [
    ("siginfo", "struct siginfo", ["si_signo", "si_errno", "si_code", "_sifields"]),
    ("stack_t", "stack_t", ["ss_sp", "ss_flags", "ss_size"]),
    ("kernel_sigaction", "struct ucr_kernel_sigaction", None),
    ("rt_sigframe", "struct ucr_rt_sigframe", None),
    ("clone_args", "struct clone_args",
     ["flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
      "stack_size", "tls", "set_tid", "set_tid_size", "cgroup"]),
    ("prctl_mm_map", "struct prctl_mm_map",
     ["start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
      "start_stack", "arg_start", "arg_end", "env_start", "env_end", "auxv",
      "auxv_size", "exe_fd"]),
    ("rseq", "struct rseq", ["cpu_id_start", "cpu_id", "rseq_cs", "flags"]),
    ("ptrace_rseq_configuration", "struct ptrace_rseq_configuration",
     ["rseq_abi_pointer", "rseq_abi_size", "signature", "flags", "pad"]),
    ("ptrace_peeksiginfo_args", "struct ptrace_peeksiginfo_args",
     ["off", "flags", "nr"]),
]

_X86_REGS = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi "
             "orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs").split()
_X86_SC = ("r8 r9 r10 r11 r12 r13 r14 r15 rdi rsi rbp rbx rdx rax rcx rsp rip "
           "eflags cs gs fs ss err trapno oldmask cr2 fpstate").split()
_ARM_SC = ["trap_no", "error_code", "oldmask"] + [f"arm_r{i}" for i in range(11)] + \
    ["arm_fp", "arm_ip", "arm_sp", "arm_lr", "arm_pc", "arm_cpsr", "fault_address"]

LAYOUTS_SPEC = {
    "x86_64": {
        "uapi": _COMMON_LAYOUTS + [
            ("sigcontext", "struct sigcontext", _X86_SC),
            ("ucontext", "struct ucontext",
             ["uc_flags", "uc_link", "uc_stack", "uc_mcontext", "uc_sigmask"]),
            ("fpstate", "struct _fpstate_64",
             ["cwd", "swd", "twd", "fop", "rip", "rdp", "mxcsr", "mxcsr_mask",
              "st_space", "xmm_space", "reserved2", "sw_reserved"]),
            ("fpx_sw_bytes", "struct _fpx_sw_bytes",
             ["magic1", "extended_size", "xfeatures", "xstate_size", "padding"]),
            ("xstate_header", "struct _header", ["xfeatures", "reserved1", "reserved2"]),
            ("xstate", "struct _xstate", ["fpstate", "xstate_hdr", "ymmh"]),
        ],
        "libc": [
            ("user_regs_struct", "struct user_regs_struct", _X86_REGS),
            ("user_regs", "struct user_regs_struct", _X86_REGS),
            ("user_fpregs_struct", "struct user_fpregs_struct",
             ["cwd", "swd", "ftw", "fop", "rip", "rdp", "mxcsr", "mxcr_mask",
              "st_space", "xmm_space", "padding"]),
            ("user_fpregs", "struct user_fpregs_struct", ["cwd", "mxcsr", "st_space", "xmm_space"]),
        ],
    },
    "arm": {
        "uapi": _COMMON_LAYOUTS + [
            ("pt_regs", "struct pt_regs", ["uregs"] + [f"uregs[{i}]" for i in range(18)]),
            ("user_regs", "struct pt_regs", ["uregs"]),
            ("user_vfp", "struct user_vfp", ["fpregs", "fpscr"]),
            ("user_fpregs", "struct user_vfp", ["fpregs", "fpscr"]),
            ("user_vfp_exc", "struct user_vfp_exc", ["fpexc", "fpinst", "fpinst2"]),
            ("vfp_sigframe", "struct vfp_sigframe", ["magic", "size", "ufp", "ufp_exc"]),
            ("sigcontext", "struct sigcontext", _ARM_SC),
            ("ucontext", "struct ucontext",
             ["uc_flags", "uc_link", "uc_stack", "uc_mcontext", "uc_sigmask",
              "uc_regspace"]),
            ("sigframe", "struct ucr_sigframe", ["uc", "retcode"]),
            ("rt_sigframe_2010", "struct ucr_rt_sigframe_2010",
             ["info", "sig", "sig.uc", "sig.retcode"]),
        ],
        "libc": [],
    },
    "aarch64": {
        "uapi": _COMMON_LAYOUTS + [
            ("user_pt_regs", "struct user_pt_regs", ["regs", "sp", "pc", "pstate"]),
            ("user_regs", "struct user_pt_regs", ["regs", "sp", "pc", "pstate"]),
            ("user_fpsimd_state", "struct user_fpsimd_state", ["vregs", "fpsr", "fpcr"]),
            ("user_fpregs", "struct user_fpsimd_state", ["vregs", "fpsr", "fpcr"]),
            ("sigcontext", "struct sigcontext",
             ["fault_address", "regs", "sp", "pc", "pstate", "__reserved"]),
            ("ucontext", "struct ucontext",
             ["uc_flags", "uc_link", "uc_stack", "uc_sigmask", "uc_mcontext",
              "uc_mcontext.__reserved"]),
            ("_aarch64_ctx", "struct _aarch64_ctx", ["magic", "size"]),
            ("fpsimd_context", "struct fpsimd_context", ["head", "fpsr", "fpcr", "vregs"]),
            ("esr_context", "struct esr_context", ["head", "esr"]),
            ("extra_context", "struct extra_context", ["head", "datap", "size"]),
            ("sve_context", "struct sve_context", ["head", "vl", "flags"]),
        ],
        "libc": [],
    },
}
# Member lists derived from the frame structs themselves.
_FRAME_MEMBERS = {
    "x86_64": ["pretcode", "uc", "uc.uc_mcontext", "uc.uc_mcontext.fpstate",
               "uc.uc_sigmask", "info"],
    "arm": ["info", "sig", "sig.uc", "sig.uc.uc_mcontext", "sig.uc.uc_sigmask",
            "sig.uc.uc_regspace", "sig.retcode"],
    "aarch64": ["info", "uc", "uc.uc_sigmask", "uc.uc_mcontext",
                "uc.uc_mcontext.__reserved"],
}
_SIGACTION_MEMBERS = ["handler", "flags", "restorer", "mask"]


class ExtractError(Exception):
    pass


# --------------------------------------------------------------- probing

def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def macros(cc: str, source: str) -> dict[str, str]:
    """Object-like macros visible after `source`, from `cc -E -dM`."""
    r = run([cc, "-E", "-dM", "-x", "c", "-"], input=source)
    if r.returncode:
        raise ExtractError(f"{cc} -E -dM failed:\n{r.stderr}")
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"#define (\w+)(\(?)\s*(.*)$", line)
        if m and not m.group(2) and m.group(3):
            out[m.group(1)] = m.group(3)
    return out


def probe(cc: str, prelude: str, entries: list, workdir: Path, tag: str,
          optional: set) -> dict:
    """Compile `entries` [(key, expr, guard)] into an object and read back
    each value.  Optional entries the compiler rejects are dropped."""
    entries = list(entries)
    for _ in range(8):
        lines = [prelude, "#define UCR_V(n, e) \\",
                 "  __attribute__((used)) const unsigned long long ucr_v_##n = "
                 "(unsigned long long)(e); \\",
                 "  __attribute__((used)) const unsigned char ucr_n_##n = ((e) < 0);"]
        for i, (key, expr, guard) in enumerate(entries):
            body = f"UCR_V({i}, {expr})"
            if guard:
                body = f"#ifdef {guard}\n{body}\n#endif"
            else:
                body = f"\n{body}\n"
            lines.append(body)
        src = "\n".join(lines) + "\n"
        # map every physical line to its entry
        line_of = {}
        n = 0
        for idx, chunk in enumerate(lines):
            for _l in chunk.split("\n"):
                n += 1
                if idx >= 4:
                    line_of[n] = idx - 4
        c = workdir / f"probe_{tag}.c"
        o = workdir / f"probe_{tag}.o"
        c.write_text(src)
        r = run([cc, "-c", "-O0", "-w", "-fno-common",
                 "-fno-zero-initialized-in-bss", "-o", str(o), str(c)])
        if r.returncode == 0:
            return read_object(o, entries)
        bad = set()
        for m in re.finditer(rf"{re.escape(str(c))}:(\d+):\d+: error", r.stderr):
            i = line_of.get(int(m.group(1)))
            if i is None or entries[i][0] not in optional:
                raise ExtractError(f"probe {tag} failed to compile with {cc}:\n{r.stderr}")
            bad.add(i)
        if not bad:
            raise ExtractError(f"probe {tag} failed to compile with {cc}:\n{r.stderr}")
        entries = [e for i, e in enumerate(entries) if i not in bad]
    raise ExtractError(f"probe {tag}: too many rounds of rejected macros")


def read_object(path: Path, entries: list) -> dict:
    from elftools.elf.elffile import ELFFile  # only the generator needs it
    vals: dict[int, int] = {}
    negs: dict[int, bool] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        order = "little" if elf.little_endian else "big"
        symtab = elf.get_section_by_name(".symtab")
        cache = {}
        for sym in symtab.iter_symbols():
            m = re.fullmatch(r"ucr_([vn])_(\d+)", sym.name)
            if not m:
                continue
            shndx = sym["st_shndx"]
            if shndx not in cache:
                sec = elf.get_section(shndx)
                cache[shndx] = (b"\0" * sec["sh_size"] if sec["sh_type"] == "SHT_NOBITS"
                                else sec.data())
            off, size = sym["st_value"], sym["st_size"]
            raw = int.from_bytes(cache[shndx][off:off + size], order)
            if m.group(1) == "v":
                vals[int(m.group(2))] = raw
            else:
                negs[int(m.group(2))] = bool(raw)
    out = {}
    for i, (key, _expr, _guard) in enumerate(entries):
        if i in vals:
            v = vals[i]
            out[key] = v - (1 << 64) if negs.get(i) else v
    return out


def extract_arch(arch: str, workdir: Path) -> dict:
    cfg = ARCHES[arch]
    cc = cfg["cc"]
    if not shutil.which(cc):
        raise ExtractError(f"compiler {cc!r} for {arch} not found "
                           "(apt-get install gcc-arm-linux-gnueabihf gcc-aarch64-linux-gnu)")
    # UAPI asm/signal.h on x86/arm says SIGRTMAX is _NSIG but only the
    # kernel defines _NSIG (64 on every arch usercr targets).
    prelude = (UAPI_INCLUDES + ARCH_INCLUDES[arch] + "#ifndef _NSIG\n#define _NSIG 64\n#endif\n"
               + PROBE_TYPES[arch])
    defs = macros(cc, UAPI_INCLUDES + ARCH_INCLUDES[arch])

    entries, optional = [], set()
    # Syscalls: every __NR_x (and ARM's private __ARM_NR_x).
    skip = {"__NR_syscalls", "__NR_SYSCALL_BASE", "__NR_OABI_SYSCALL_BASE",
            "__ARM_NR_BASE", "__NR_SYSCALL_MASK"}
    for name in sorted(defs):
        if name in skip or name.startswith("__NR3264"):
            continue
        m = re.fullmatch(r"__(?:ARM_)?NR_(\w+)", name)
        if m:
            entries.append((("nr", m.group(1)), name, name))
            optional.add(("nr", m.group(1)))
    for name in sorted(defs):
        if name.startswith(CONST_PREFIXES) and name not in CONST_EXCLUDE:
            entries.append((("c", name), name, name))
            optional.add(("c", name))
    if arch == "arm":
        # PROBE_TYPES macros are not in -dM of the headers.
        for name in ("VFP_MAGIC", "DUMMY_MAGIC"):
            entries.append((("c", name), name, None))
    for name, expr in {**_COMMON_EXTRA, **EXTRA_CONSTANTS[arch]}.items():
        entries.append((("c", name), expr, None))
    entries.append((("c", "UCR_KERNEL_SIGSET_SIZE"), "64 / 8", None))
    layouts = {}
    for tu in ("uapi", "libc"):
        specs = LAYOUTS_SPEC[arch][tu]
        if not specs:
            continue
        lent = []
        for label, ctype, members in specs:
            if members is None:
                members = _FRAME_MEMBERS[arch] if label == "rt_sigframe" else _SIGACTION_MEMBERS
            lent.append(((label, None), f"sizeof({ctype})", None))
            for mem in members:
                lent.append(((label, mem), f"offsetof({ctype}, {mem})", None))
        if tu == "uapi":
            vals = probe(cc, prelude, entries + lent, workdir, f"{arch}_uapi", optional)
        else:
            vals = probe(cc, "#include <stddef.h>\n#include <sys/user.h>\n", lent,
                         workdir, f"{arch}_libc", set())
        for (label, mem), v in vals.items():
            if label in ("nr", "c"):
                continue
            d = layouts.setdefault(label, {"size": None, "members": {}})
            if mem is None:
                d["size"] = v
            else:
                d["members"][mem] = v
        if tu == "uapi":
            syscalls = {k[1]: v for k, v in vals.items() if k[0] == "nr"}
            constants = {k[1]: v for k, v in vals.items() if k[0] == "c"}
    missing = [s for s in REQUIRED_SYSCALLS if s not in syscalls and s not in NOT_ON[arch]]
    if missing:
        raise ExtractError(f"{arch}: required syscalls missing from headers: {missing}")
    return {"SYSCALLS": syscalls, "CONSTANTS": constants, "LAYOUTS": layouts}


def i386_table() -> dict[str, int]:
    """The i386 table from the host's UAPI headers (x86_64 kernels run
    i386 tasks, and linux-cr's i386 numbers were reused there)."""
    d = macros("gcc", "#include <asm/unistd_32.h>\n")
    return {k[5:]: int(v) for k, v in d.items()
            if k.startswith("__NR_") and re.fullmatch(r"\d+", v)}


# ------------------------------------------------------- kernel source

_ARM_BASES = {"__NR_SYSCALL_BASE": 0, "__NR_OABI_SYSCALL_BASE": 0x900000}


def _eval_nr(expr: str, known: dict[str, int]) -> int | None:
    expr = expr.split("/*")[0].strip()
    toks = re.findall(r"0x[0-9a-fA-F]+|\d+|\w+|[()+]", expr)
    if not toks or "".join(toks) != re.sub(r"\s+", "", expr):
        return None
    total = 0
    for t in toks:
        if t in "()+":
            continue
        if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", t):
            total += int(t, 0)
        elif t in known:
            total += known[t]
        else:
            return None
    return total


def parse_unistd_h(text: str, base: int = 0) -> dict[str, int]:
    """`#define __NR_x N` / `(__NR_SYSCALL_BASE+N)` / `__ARM_NR_x` lines.
    `base` is the value of __NR_SYSCALL_BASE (0 EABI, 0x900000 OABI)."""
    known = dict(_ARM_BASES, __NR_SYSCALL_BASE=base)
    out: dict[str, int] = {}
    for m in re.finditer(r"^\s*#\s*define\s+(__(?:ARM_)?NR(?:3264)?_\w+)\s+(.+?)\s*$",
                         text, re.M):
        name, expr = m.groups()
        if name in ("__NR_SYSCALL_BASE", "__NR_OABI_SYSCALL_BASE"):
            continue
        v = _eval_nr(expr, known)
        if v is None:
            alias = expr.strip()
            if alias in known:
                v = known[alias]
            else:
                continue
        known.setdefault(name, v)
        short = re.sub(r"^__(?:ARM_)?NR(?:3264)?_", "", name)
        if name.startswith(("__NR3264_", "__ARM_NR_BASE")) or short == "syscalls":
            continue
        out.setdefault(short, v)  # first definition wins (64-bit branch)
    for m in re.finditer(r"^\s*#\s*define\s+__NR_(\w+)\s+(__NR3264_\w+)", text, re.M):
        if m.group(2) in known:
            out.setdefault(m.group(1), known[m.group(2)])
    return out


def parse_tbl(text: str, abis: set[str]) -> dict[str, int]:
    """arch/*/syscall*.tbl: `<nr> <abi> <name> [entry...]`."""
    out = {}
    for line in text.splitlines():
        f = line.split("#")[0].split()
        if len(f) >= 3 and f[0].isdigit() and f[1] in abis:
            out.setdefault(f[2], int(f[0]))
    return out


def parse_call_table_s(text: str) -> dict[str, int]:
    """2.6-era arch/x86/kernel/syscall_table_32.S: entries are counted from
    ENTRY(sys_call_table); a `/* N */` comment resynchronises the count."""
    out, n, on = {}, 0, False
    for line in text.splitlines():
        if "sys_call_table" in line and ("ENTRY" in line or ":" in line):
            on, n = True, 0
            continue
        m = re.match(r"\s*\.long\s+(\w+)\s*(?:/\*\s*(\d+)?.*?\*/)?", line)
        if not (on and m):
            continue
        if m.group(2):
            n = int(m.group(2))
        name = re.sub(r"^(?:sys_|ptregs_|stub_|compat_sys_)", "", m.group(1))
        if name != "ni_syscall":
            out.setdefault(name, n)
        n += 1
    return out


def parse_ckpt_hdr(text: str) -> dict[str, int]:
    """checkpoint_hdr.h: enum members (with implicit increments) and
    `#define NAME value` for CKPT_*/CHECKPOINT_* names."""
    out: dict[str, int] = {}
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    for m in re.finditer(r"^\s*#\s*define\s+((?:CKPT|CHECKPOINT)_\w+)\s+\(?\s*"
                         r"(0x[0-9a-fA-F]+|\d+)[uUlL]*\s*\)?\s*$", text, re.M):
        out[m.group(1)] = int(m.group(2), 0)
    for body in re.findall(r"enum\s*\w*\s*\{(.*?)\}", text, re.S):
        nxt = 0
        for line in body.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for item in line.split(","):
                m = re.fullmatch(r"\s*(\w+)\s*(?:=\s*(.+?))?\s*", item)
                if not m or not m.group(1):
                    continue
                if m.group(2):
                    val = m.group(2).strip()
                    nxt = out[val] if val in out else int(val.rstrip("uUlL"), 0)
                if m.group(1).startswith(("CKPT_", "CHECKPOINT_")):
                    out[m.group(1)] = nxt
                nxt += 1
    return out


def parse_kernel_tree(src: Path) -> dict:
    """Syscall tables per ABI, and checkpoint_hdr.h if present:
    {'x86_64'|'i386'|'arm'|'arm_oabi'|'aarch64': {name: nr}, 'ckpt': {...}}."""
    def rd(rel):
        p = src / rel
        return p.read_text(errors="replace") if p.is_file() else None

    out: dict = {}
    t = rd("arch/x86/entry/syscalls/syscall_64.tbl")
    if t:
        out["x86_64"] = parse_tbl(t, {"common", "64"})
    else:
        for rel in ("arch/x86/include/uapi/asm/unistd_64.h", "arch/x86/include/asm/unistd_64.h"):
            if rd(rel):
                out["x86_64"] = parse_unistd_h(rd(rel))
                break
    t = rd("arch/x86/entry/syscalls/syscall_32.tbl")
    if t:
        out["i386"] = parse_tbl(t, {"i386"})
    else:
        i386: dict[str, int] = {}
        for rel in ("arch/x86/include/asm/unistd_32.h", "arch/x86/include/uapi/asm/unistd_32.h"):
            if rd(rel):
                i386.update(parse_unistd_h(rd(rel)))
        if rd("arch/x86/kernel/syscall_table_32.S"):
            for k, v in parse_call_table_s(rd("arch/x86/kernel/syscall_table_32.S")).items():
                i386.setdefault(k, v)
        if i386:
            out["i386"] = i386
    t = rd("arch/arm/tools/syscall.tbl")
    arm_h = rd("arch/arm/include/uapi/asm/unistd.h") or ""
    arm_h += "\n" + (rd("arch/arm/include/asm/unistd.h") or "")
    if t:
        out["arm"] = parse_tbl(t, {"common", "eabi"})
        out["arm_oabi"] = {k: v + 0x900000 for k, v in parse_tbl(t, {"common", "oabi"}).items()}
    if "__NR_" in arm_h:
        # EABI: __NR_SYSCALL_BASE is 0; OABI: __NR_OABI_SYSCALL_BASE.
        for key, base in (("arm", 0), ("arm_oabi", 0x900000)):
            for k, v in parse_unistd_h(arm_h, base).items():
                out.setdefault(key, {}).setdefault(k, v)
    if (src / "arch/arm64").is_dir() and rd("include/uapi/asm-generic/unistd.h"):
        out["aarch64"] = parse_unistd_h(rd("include/uapi/asm-generic/unistd.h"))
    for rel in ("include/linux/checkpoint_hdr.h", "include/uapi/linux/checkpoint_hdr.h"):
        if rd(rel):
            out["ckpt"] = parse_ckpt_hdr(rd(rel))
    return out


def merge_trees(paths) -> dict:
    merged: dict = {}
    for p in paths:
        if not Path(p).is_dir():
            raise ExtractError(f"--kernel-src {p}: not a directory")
        for abi, table in parse_kernel_tree(Path(p)).items():
            merged.setdefault(abi, {}).update(table)
    return merged


def linux_cr_entry(table: dict, owners: dict[int, str]) -> dict:
    d = {k: table.get(k) for k in ("eclone", "checkpoint", "restart")}
    d["mainline_owner"] = {n: owners[n] for n in sorted(v for v in d.values() if v is not None)
                           if n in owners}
    return d


def build_linux_cr(arch: str, trees: dict, results: dict) -> dict:
    ckpt = trees.get("ckpt", {})
    hdr = {k: v for k, v in sorted(ckpt.items())}
    arch_id = {"x86_64": "CKPT_ARCH_X86_64", "arm": "CKPT_ARCH_ARM"}.get(arch)

    def owners(table):
        inv: dict[int, str] = {}
        for name, n in sorted(table.items()):
            inv.setdefault(n, name)
        return inv

    if arch == "x86_64":
        d = linux_cr_entry(trees.get("x86_64", {}), owners(results["x86_64"]["SYSCALLS"]))
        d["compat"] = {"i386": linux_cr_entry(trees.get("i386", {}), owners(i386_table()))}
    elif arch == "arm":
        own = owners(results["arm"]["SYSCALLS"])
        d = linux_cr_entry(trees.get("arm", {}), own)
        # user-cr's eclone fallback for ARM used 366, which is accept4.
        d["user_cr_fallback"] = {"eclone": 366}
        d["mainline_owner"][366] = own.get(366)
        oabi = trees.get("arm_oabi", {})
        d["oabi"] = {k: oabi.get(k) for k in ("eclone", "checkpoint", "restart")}
    else:
        # linux-cr never supported arm64; only AArch32 tasks could meet the
        # ARM numbers, via the compat table (same numbering as arm EABI).
        d = {"eclone": None, "checkpoint": None, "restart": None, "mainline_owner": {}}
        if "arm" in results:
            d["compat"] = {"arm": linux_cr_entry(trees.get("arm", {}),
                                                 owners(results["arm"]["SYSCALLS"]))}
    d["ckpt_arch_id"] = ckpt.get(arch_id) if arch_id else None
    d["ckpt_hdr"] = hdr
    return d


def cross_check(trees: dict, results: dict) -> list[str]:
    """Mainline trees given with --kernel-src must agree with the headers."""
    errs = []
    for abi, arch in (("x86_64", "x86_64"), ("arm", "arm"), ("aarch64", "aarch64")):
        if abi not in trees or arch not in results:
            continue
        hdr = results[arch]["SYSCALLS"]
        for name, n in trees[abi].items():
            if name in ("eclone", "checkpoint", "restart"):
                continue
            if name in hdr and hdr[name] != n:
                errs.append(f"{arch}: {name} is {n} in kernel source, {hdr[name]} in headers")
    return errs


# ------------------------------------------------------------ emitting

def _pydict(d: dict, indent: int = 4) -> str:
    pad = " " * indent
    if not d:
        return "{}"
    lines = ["{"]
    for k in sorted(d, key=lambda x: (str(type(x)), x)):
        v = d[k]
        if isinstance(v, dict):
            lines.append(f"{pad}{k!r}: {_pydict(v, indent + 4)},")
        elif isinstance(v, int) and not isinstance(v, bool) and v > 0xffff:
            lines.append(f"{pad}{k!r}: {hex(v)},")
        else:
            lines.append(f"{pad}{k!r}: {v!r},")
    lines.append(" " * (indent - 4) + "}")
    return "\n".join(lines)


def emit_py(arch: str, res: dict, linux_cr: dict) -> str:
    head = (f'"""ABI facts for {arch}: GENERATED by `{CMDLINE}`; do not edit.\n\n'
            "Syscalls/constants: toolchain UAPI headers via the preprocessor and a\n"
            "cross-compiled probe; LAYOUTS: sizeof/offsetof read from the probe\n"
            "object; LINUX_CR: kernel trees given with --kernel-src (default: the\n"
            "reconstructed linux-cr fixture in tests/fixtures/linux-cr).\n"
            "Check for drift with `python tools/extract_headers.py --check`.\n"
            '"""\n')
    parts = [head]
    for name in ("SYSCALLS", "CONSTANTS", "LAYOUTS"):
        parts.append(f"{name} = {_pydict(res[name])}\n")
    parts.append(f"LINUX_CR = {_pydict(linux_cr)}\n")
    return "\n".join(parts)


def _cnum(v: int) -> str:
    if v < 0:
        return f"({v}LL)"
    if v > 0x7fffffff:
        return f"{hex(v)}ULL"
    return str(v)


def _cname(s: str) -> str:
    return re.sub(r"\W", "_", s.replace("[", "_").replace("]", "")).strip("_")


def emit_h(arch: str, res: dict, linux_cr: dict) -> str:
    guard = f"UCR_{arch.upper()}_ABI_H"
    cpp = {"x86_64": "defined(__x86_64__)", "arm": "defined(__arm__)",
           "aarch64": "defined(__aarch64__)"}[arch]
    out = [f"/* ABI facts for {arch}: GENERATED by `{CMDLINE}`; do not edit. */",
           f"#ifndef {guard}", f"#define {guard}", f"#if !({cpp})",
           f"#error \"{arch}_abi.h included for another architecture\"", "#endif", ""]
    for k, v in sorted(res["SYSCALLS"].items()):
        out.append(f"#define UCR_NR_{k} {_cnum(v)}")
    out.append("")
    for k, v in sorted(res["CONSTANTS"].items()):
        name = k if k.startswith("UCR_") else "UCR_" + k.lstrip("_")
        out.append(f"#define {name} {_cnum(v)}")
    out.append("")
    for label, d in sorted(res["LAYOUTS"].items()):
        out.append(f"#define UCR_SIZEOF_{_cname(label)} {d['size']}")
        for mem, off in sorted(d["members"].items()):
            out.append(f"#define UCR_OFF_{_cname(label)}__{_cname(mem)} {off}")
    out.append("")
    for k in ("eclone", "checkpoint", "restart"):
        if linux_cr.get(k) is not None:
            out.append(f"/* linux-cr's number, now {linux_cr['mainline_owner'].get(linux_cr[k])}"
                       " on mainline: never issue it. */")
            out.append(f"#define UCR_LINUX_CR_NR_{k} {linux_cr[k]}")
    out += ["", f"#endif /* {guard} */", ""]
    return "\n".join(out)


def generate(out_dir: Path, arches, kernel_src) -> list[Path]:
    trees = merge_trees(kernel_src)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ucr-probe-") as td:
        for arch in ARCHES:  # arm is needed for aarch64's compat owners
            if arch in arches or (arch == "arm" and "aarch64" in arches):
                results[arch] = extract_arch(arch, Path(td))
    errs = cross_check(trees, results)
    if errs:
        raise ExtractError("kernel source disagrees with headers:\n  " + "\n  ".join(errs))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for arch in arches:
        lcr = build_linux_cr(arch, trees, results)
        for name, text in ((f"{arch}.py", emit_py(arch, results[arch], lcr)),
                           (f"{arch}_abi.h", emit_h(arch, results[arch], lcr))):
            (out_dir / name).write_text(text)
            written.append(out_dir / name)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", choices=sorted(ARCHES),
                    help="only this architecture (repeatable; default all)")
    ap.add_argument("--kernel-src", action="append", metavar="DIR",
                    help="kernel tree (linux-cr or mainline) for LINUX_CR and for "
                         "cross-checking; repeatable; default tests/fixtures/linux-cr")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temp dir; exit 1 if it differs from --out")
    a = ap.parse_args(argv)
    arches = a.arch or list(ARCHES)
    ksrc = a.kernel_src or [str(DEFAULT_KERNEL_SRC)]
    try:
        if not a.check:
            for p in generate(a.out, arches, ksrc):
                print(f"wrote {p}")
            return 0
        with tempfile.TemporaryDirectory(prefix="ucr-headers-") as td:
            generate(Path(td), arches, ksrc)
            drift = False
            for new in sorted(Path(td).iterdir()):
                old = a.out / new.name
                old_text = old.read_text() if old.exists() else ""
                if old_text != new.read_text():
                    drift = True
                    sys.stdout.writelines(difflib.unified_diff(
                        old_text.splitlines(True), new.read_text().splitlines(True),
                        str(old), f"regenerated/{new.name}", n=1))
            if drift:
                print(f"headers drifted: run `{CMDLINE}` and commit the result",
                      file=sys.stderr)
                return 1
            print("headers up to date")
            return 0
    except ExtractError as e:
        print(f"extract_headers: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
