"""32-bit ARM (EABI, armhf): registers, VFP, TLS, syscall injection, the
rt_sigframe, and linux-cr's ARM restart rules (CPU architecture, MMU,
ThumbEE, OABI/EABI).

The same module serves an armhf build running on an arm64 kernel (compat
mode): the ptrace regsets used here (NT_PRSTATUS, NT_ARM_VFP,
PTRACE_GET_THREAD_AREA) work on both kernels."""
import gzip
import os
import struct

from .. import records as R
from ..errors import UcrError
from ..headers import arm as abi

NAME = "arm"
ARCH_ID = R.ARCH_IDS[NAME]
C = abi.CONSTANTS
L = abi.LAYOUTS
NT_PRSTATUS = C["NT_PRSTATUS"]
NT_ARM_VFP = C["NT_ARM_VFP"]
PTRACE_GET_THREAD_AREA = C["PTRACE_GET_THREAD_AREA"]
PTRACE_SYSCALL = 24
# mmap2 takes its offset in 4096-byte units; every offset used here is 0, so
# the injection code's "mmap" can be mmap2 (ARM's old "mmap" takes a struct).
SYSCALLS = dict(abi.SYSCALLS, mmap=abi.SYSCALLS["mmap2"])
HEADER_RECORD = R.ARM_HEADER
SVC_ARM = struct.pack("<I", 0xEF000000)   # svc #0, ARM state
SVC_THUMB = struct.pack("<H", 0xDF00)     # svc #0, Thumb state
# Injected syscalls always run in ARM state: regs_for_syscall clears the T
# bit and the IT bits, so the task's own state (ARM or Thumb) does not matter.
SYSCALL_INSN = SVC_ARM
# [vectors] (0xffff0000, the kuser helpers) is like x86's [vsyscall]: the
# same in every process, never unmapped or recreated.
GATE_MAPPINGS = ("[vectors]",)

REG_NAMES = "r0 r1 r2 r3 r4 r5 r6 r7 r8 r9 r10 fp ip sp lr pc cpsr orig_r0".split()
REG = {name: i for i, name in enumerate(REG_NAMES)}
REGS_SIZE = L["pt_regs"]["size"]
assert REGS_SIZE == 4 * len(REG_NAMES)
_REGS = struct.Struct(f"<{len(REG_NAMES)}I")
PSR_T_BIT = C["PSR_T_BIT"]
PSR_IT_MASK = C["PSR_IT_MASK"]
VFP_MAGIC = C["VFP_MAGIC"]
VFP_REGSET_SIZE = C["ARM_VFPREGS_SIZE"]  # 32 d-registers + fpscr
FPEXC_EN = 1 << 30
HWCAP_THUMBEE = 1 << 11
EF_ARM_EABIMASK = 0xFF000000
ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
MASK32 = (1 << 32) - 1


class Regs(list):
    """The 18 registers, carrying the thread's TLS words for tls()."""
    tls_words = (0, 0, 0, 0)


def unpack_regs(data):
    return Regs(_REGS.unpack(data[:REGS_SIZE]))


def pack_regs(regs):
    return _REGS.pack(*(v & MASK32 for v in regs))


def signed(v):
    v &= MASK32
    return v - (1 << 32) if v >> 31 else v


def thumb(regs):
    return bool(regs[REG["cpsr"]] & PSR_T_BIT)


def regs_for_syscall(regs, addr, nr, args):
    """Registers to run syscall nr at addr (where SVC_ARM was written): EABI
    number in r7, arguments in r0-r5, ARM state whatever the task's state."""
    r = list(regs)
    r[REG["pc"]] = addr
    r[REG["r7"]] = nr
    r[REG["cpsr"]] &= ~(PSR_T_BIT | PSR_IT_MASK) & MASK32
    for i, value in enumerate(args):
        r[i] = value & MASK32
    return r


def syscall_result(regs):
    """-errno for the kernel's error range, else the unsigned value (an
    mmap address above 2 GiB is not an error)."""
    v = signed(regs[REG["r0"]])
    return v if -4096 < v < 0 else regs[REG["r0"]] & MASK32


def restart_fixup(regs):
    """The kernel's restart rule for registers seen right after a syscall
    returned -ERESTART*: r0 gets its original value back (orig_r0), the pc
    backs up over the svc (4 bytes in ARM state, 2 in Thumb) so that the same
    syscall (number still in r7) is issued again. A new task has no restart
    block, so -ERESTART_RESTARTBLOCK re-issues the original call too."""
    r = list(regs)
    if -signed(r[REG["r0"]]) not in (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK):
        return r
    r[REG["r0"]] = r[REG["orig_r0"]]
    r[REG["pc"]] = (r[REG["pc"]] - (len(SVC_THUMB) if thumb(r) else len(SVC_ARM))) & MASK32
    return r


def restart_regs_live(regs):
    """At ckpt's PTRACE_INTERRUPT stop the ARM kernel has already applied the
    restart rule (do_signal runs it before get_signal), so the registers read
    then already say "issue the syscall again"; fix up only if they do not."""
    return restart_fixup(regs)


def restart_regs_new(regs):
    return restart_fixup(regs)


# struct sigaction as rt_sigaction takes it: handler, flags, restorer, mask (20 bytes)
KSIGACTION_SIZE = L["kernel_sigaction"]["size"]
STACK_T_SIZE = L["stack_t"]["size"]


def unpack_ksigaction(data):
    return struct.unpack("<IIIQ", data[:KSIGACTION_SIZE])


def unpack_stack_t(data):
    """(ss_sp, ss_flags, ss_size)"""
    return struct.unpack("<IiI", data[:STACK_T_SIZE])


def stack_pointer(regs):
    return regs[REG["sp"]]


# The checkpointing / restoring system

def _kernel_config(option):
    """'y', 'n' or None (unknown) for CONFIG_<option> of the running kernel."""
    texts = []
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            texts.append(f.read())
    except OSError:
        pass
    try:
        with open(f"/boot/config-{os.uname().release}") as f:
            texts.append(f.read())
    except OSError:
        pass
    for text in texts:
        for line in text.splitlines():
            if line.startswith(f"CONFIG_{option}="):
                return "y" if line.split("=", 1)[1] in ("y", "m") else "n"
            if line == f"# CONFIG_{option} is not set":
                return "n"
        return "n"  # a complete config that does not mention it
    return None


def _auxv_platform():
    """AT_PLATFORM of this process (e.g. "v7l"), or ""."""
    try:
        data = open("/proc/self/auxv", "rb").read()
    except OSError:
        return ""
    word = struct.calcsize("L")
    fmt = "<2I" if word == 4 else "<2Q"
    for i in range(0, len(data) - 2 * word + 1, 2 * word):
        key, val = struct.unpack_from(fmt, data, i)
        if key == 15:  # AT_PLATFORM, a string on this process's own stack
            from ..native import ffi  # not /proc/self/mem: under qemu-user that is the emulator's memory
            return ffi.string(ffi.cast("char *", val), 32).decode()
    return ""


def cpu_architecture():
    """The CPU architecture version: /proc/cpuinfo's "CPU architecture"
    (7 on ARMv7, 8 on ARMv8, also for a compat task), else AT_PLATFORM."""
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "CPU architecture":
                value = value.strip()
                digits = "".join(ch for ch in value if ch.isdigit())
                if value.startswith("AArch64"):
                    return 8
                if digits:
                    return int(digits)
    except OSError:
        pass
    plat = _auxv_platform()
    if plat.startswith("v") and plat[1:2].isdigit():
        return int(plat[1:].rstrip("lb"))
    if plat == "aarch64":
        return 8
    return 0


def host_info():
    from ..native import ffi, lib
    out = ffi.new("uint64_t[4]")
    lib.ucr_arch_info(out)
    machine = os.uname().machine
    if machine in ("aarch64", "arm64", "armv8b"):
        # arm64 kernels run 32-bit tasks only with EABI; there is no OABI compat.
        aeabi, oabi = 1, 0
    else:
        oabi_cfg = _kernel_config("OABI_COMPAT")
        oabi = {"y": 1, "n": 0, None: -1}[oabi_cfg]
        # This program is itself an EABI (armhf) binary: the kernel runs EABI.
        aeabi = 1
    return {"cpu_architecture": cpu_architecture(), "mmu": 1, "aeabi": aeabi, "oabi_compat": oabi,
            "hwcap": out[0], "hwcap2": out[1]}


def dump_header():
    return R.ARM_HEADER.pack(**host_info())


def _oabi_text(v):
    return {1: "yes", 0: "no", -1: "unknown"}.get(v, str(v))


def task_abi(hdr, task):
    """'eabi', 'oabi' or None (in doubt) for the checkpointed process: its
    executable's ELF EABI version first, else what the checkpointing kernel
    could run."""
    v = task["eabi_version"] if task else -1
    if v > 0:
        return "eabi"
    if v == 0:
        return "oabi"
    if hdr["oabi_compat"] == 0:
        return "eabi"  # that kernel ran EABI binaries only
    if not hdr["aeabi"]:
        return "oabi"
    return None


def check(hdr, here, warn, task=None, thread=None):
    """linux-cr's ARM restart rules. hdr: the image's ARM_HEADER; here: this
    system (host_info()); task/thread: the image's ARM_TASK/ARM_THREAD.
    Raises UcrError (one line) to refuse, calls warn(msg) to warn."""
    if here["cpu_architecture"] < hdr["cpu_architecture"]:
        raise UcrError(f"image needs ARM CPU architecture {hdr['cpu_architecture']} or later; "
                       f"this CPU is architecture {here['cpu_architecture']}")
    if bool(here["mmu"]) != bool(hdr["mmu"]):
        had, has = ("with" if hdr["mmu"] else "without"), ("has one" if here["mmu"] else "has none")
        raise UcrError(f"image was taken on a system {had} an MMU and this system {has}; "
                       "restart needs the same MMU setting")
    if thread is not None and thread["thumbee_state"] and not here["hwcap"] & HWCAP_THUMBEE:
        raise UcrError(f"process uses ThumbEE (state 0x{thread['thumbee_state']:x}) but this CPU has "
                       "no ThumbEE (HWCAP_THUMBEE)")
    if task is None:
        return
    abi_ = task_abi(hdr, task)
    ver = task["eabi_version"]
    if abi_ == "oabi":
        if here["oabi_compat"] == 0:
            raise UcrError("process is an OABI binary (ELF EABI version 0) and this kernel runs only "
                           "EABI binaries (no CONFIG_OABI_COMPAT)")
        if here["oabi_compat"] < 0 and here["aeabi"]:
            warn("warning: process is an OABI binary and this kernel's OABI support is unknown "
                 "(no kernel config found); continuing")
    elif abi_ == "eabi":
        if not here["aeabi"]:
            what = f"ELF EABI version {ver}" if ver > 0 else "checkpointed on an EABI-only kernel"
            raise UcrError(f"process is an EABI binary ({what}) and this kernel has no EABI support "
                           "(no CONFIG_AEABI)")
    elif here["oabi_compat"] != 0:
        warn("warning: the process's ABI (OABI or EABI) is unknown: its executable could not be read "
             f"at checkpoint and that kernel ran both (OABI compat {_oabi_text(hdr['oabi_compat'])}); "
             "continuing")
    else:
        warn("warning: the process's ABI (OABI or EABI) is unknown and this kernel runs only EABI "
             "binaries; continuing")


def check_header(hdr, warn):
    check(hdr, host_info(), warn)


def check_task(records, warn):
    """The per-task rules, with the image's ARM_TASK and ARM_THREAD records."""
    check(records[HEADER_RECORD.name], host_info(), warn, task=records.get("ARM_TASK"),
          thread=records.get("ARM_THREAD"))


# Checkpoint

def elf_eabi(pid):
    """(e_flags, EABI version) of /proc/PID/exe; (0, -1) if it cannot be read."""
    return _elf_flags(f"/proc/{pid}/exe")


def _elf_flags(path):
    try:
        from elftools.elf.elffile import ELFFile
        with open(path, "rb") as f:
            flags = ELFFile(f).header["e_flags"]
    except Exception:
        return 0, -1
    return flags, (flags & EF_ARM_EABIMASK) >> 24


def _syscall_nr(pid):
    """The number of the syscall the task is stopped in (/proc/PID/syscall), or -1."""
    try:
        first = open(f"/proc/{pid}/syscall").read().split()[0]
        return int(first)
    except (OSError, ValueError, IndexError):
        return -1


def _thumbee_state(tracee):
    """TEEHBR of the task: read by running `mrc p14, 6, r1, c1, c0, 0; svc`
    (getpid) inside it, only on a CPU with ThumbEE (else it is 0)."""
    if not host_info()["hwcap"] & HWCAP_THUMBEE:
        return 0
    from ..ptrace import wait_stop
    from .. import proc
    code = next((m for m in proc.maps(tracee.pid) if "x" in m.perms and not m.special), None)
    if code is None:
        return 0
    saved = tracee.read(code.start, 8)
    tracee.write(code.start, struct.pack("<I", 0xEED11E10) + SVC_ARM)
    try:
        tracee.set_regs(regs_for_syscall(tracee.orig_regs, code.start, SYSCALLS["getpid"], ()))
        for _ in range(2):
            tracee.call(PTRACE_SYSCALL, what="reading the ThumbEE state")
            wait_stop(tracee.pid)
        return tracee.get_regs()[REG["r1"]]
    finally:
        tracee.write(code.start, saved)
        tracee.set_regs(restart_regs_live(tracee.orig_regs))


def dump_cpu(tracee):
    """The records of one thread: registers, VFP, TLS, syscall, ThumbEE."""
    from ..native import ffi
    vfp = tracee.get_regset(NT_ARM_VFP, VFP_REGSET_SIZE)
    fpregs = struct.unpack_from("<32Q", vfp)
    fpscr = struct.unpack_from("<I", vfp, 256)[0]
    tp = ffi.new("uint32_t *")
    tracee.call(PTRACE_GET_THREAD_AREA, 0, int(ffi.cast("uintptr_t", tp)), what="reading TLS")
    return [R.ARM_CPU.pack(regs=tracee.orig_regs),
            R.ARM_VFP.pack(fpregs=fpregs, fpscr=fpscr),
            R.ARM_THREAD.pack(syscall=_syscall_nr(tracee.pid), tp_value=tp[0],
                              thumbee_state=_thumbee_state(tracee))]


def dump_process(tracee):
    """The records of one process: end_brk and the executable's ABI."""
    from .. import proc
    heap = [m for m in proc.maps(tracee.pid) if m.name == "[heap]"]
    e_flags, eabi = elf_eabi(tracee.pid)
    return [R.ARM_MM_CONTEXT.pack(end_brk=heap[0].end if heap else 0),
            R.ARM_TASK.pack(e_flags=e_flags, eabi_version=eabi)]


# Restart

def cpu_state(records):
    """(regs, fpstate): regs carry the TLS words for tls()."""
    regs = Regs(records["ARM_CPU"]["regs"])
    th = records["ARM_THREAD"]
    regs.tls_words = (th["tp_value"], th["thumbee_state"], 1 if th["thumbee_state"] else 0, 0)
    vfp = records["ARM_VFP"]
    return regs, (vfp["fpregs"], vfp["fpscr"])


def tls(regs):
    """[tp_value, ThumbEE state, whether to write it, 0] for the restorer."""
    return list(regs.tls_words)


_SF = L["rt_sigframe"]["members"]
_UC = L["ucontext"]["members"]
_SC = L["sigcontext"]["members"]
_VFP = L["vfp_sigframe"]
FRAME_SIZE = L["rt_sigframe"]["size"]
_SC_ORDER = "r0 r1 r2 r3 r4 r5 r6 r7 r8 r9 r10 fp ip sp lr pc cpsr".split()


def build_sigframe(regs, fpstate, blocked, altstack, floor, arch_hdr):
    """struct rt_sigframe (siginfo, ucontext with the VFP block in
    uc_regspace) at an 8-aligned address below the stack pointer.
    Returns (frame address, bytes, stack pointer for rt_sigreturn)."""
    regs = restart_regs_new(regs)
    fpregs, fpscr = fpstate
    frame_addr = (regs[REG["sp"]] - FRAME_SIZE) & ~7
    if frame_addr < floor:
        raise UcrError("no room below the stack pointer for the signal frame")
    f = bytearray(FRAME_SIZE)
    uc = _SF["sig.uc"]
    struct.pack_into("<IiI", f, uc + _UC["uc_stack"], altstack[0] & MASK32, altstack[1], altstack[2] & MASK32)
    sc = uc + _UC["uc_mcontext"]
    struct.pack_into("<I", f, sc + _SC["oldmask"], blocked & MASK32)
    for name in _SC_ORDER:
        key = "arm_" + name if name != "cpsr" else "arm_cpsr"
        struct.pack_into("<I", f, sc + _SC[key], regs[REG[name]] & MASK32)
    struct.pack_into("<Q", f, uc + _UC["uc_sigmask"], blocked)
    vfp = uc + _UC["uc_regspace"]
    m = _VFP["members"]
    struct.pack_into("<II", f, vfp + m["magic"], VFP_MAGIC, _VFP["size"])
    struct.pack_into("<32QI", f, vfp + m["ufp"], *fpregs, fpscr)
    struct.pack_into("<III", f, vfp + m["ufp_exc"], FPEXC_EN, 0, 0)
    # the word after the VFP block (end of the aux frame) stays 0
    return frame_addr, bytes(f), frame_addr


# The ptrace-free self-checkpoint (selfdump.py): a thread's state from the
# ucontext of the signal it raised itself, and the process's ABI by path.

def inside_cpu(uc, tls):
    """(CPU records, blocked mask) from a ucontext (glibc's layout is the
    kernel's); the syscall it raised the signal with has returned (r0 is its
    result), so orig_r0 needs no other value."""
    sc = _UC["uc_mcontext"]
    regs = [struct.unpack_from("<I", uc, sc + _SC["arm_" + n])[0] for n in _SC_ORDER]
    regs.append(regs[0])
    vfp, m = _UC["uc_regspace"], _VFP["members"]
    if struct.unpack_from("<I", uc, vfp + m["magic"])[0] != VFP_MAGIC:
        raise UcrError("the signal frame has no VFP state")
    fp = struct.unpack_from("<32QI", uc, vfp + m["ufp"])
    blocked = struct.unpack_from("<Q", uc, _UC["uc_sigmask"])[0]
    return [R.ARM_CPU.pack(regs=regs), R.ARM_VFP.pack(fpregs=fp[:32], fpscr=fp[32]),
            R.ARM_THREAD.pack(syscall=-1, tp_value=tls & MASK32, thumbee_state=0)], blocked


def inside_process(exe, brk):
    """What dump_process writes, from the executable's path and the brk the program itself reads."""
    flags, eabi = _elf_flags(exe)
    return [R.ARM_MM_CONTEXT.pack(end_brk=brk), R.ARM_TASK.pack(e_flags=flags, eabi_version=eabi)]
