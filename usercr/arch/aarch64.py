"""AArch64: registers, FPSIMD, TLS, syscall injection and the rt_sigframe."""
import struct

from .. import records as R
from ..errors import UcrError
from ..headers import aarch64 as abi

NAME = "aarch64"
ARCH_ID = R.ARCH_IDS[NAME]
C = abi.CONSTANTS
L = abi.LAYOUTS
NT_PRSTATUS = C["NT_PRSTATUS"]
NT_PRFPREG = C["NT_PRFPREG"]
NT_ARM_TLS = C["NT_ARM_TLS"]
NT_ARM_SYSTEM_CALL = C["NT_ARM_SYSTEM_CALL"]
SYSCALLS = abi.SYSCALLS
HEADER_RECORD = R.AARCH64_HEADER
SYSCALL_INSN = struct.pack("<I", 0xD4000001)  # svc #0
GATE_MAPPINGS = ()

REG_NAMES = [f"x{i}" for i in range(31)] + ["sp", "pc", "pstate"]
REG = {name: i for i, name in enumerate(REG_NAMES)}
REGS_SIZE = L["user_pt_regs"]["size"]
assert REGS_SIZE == 8 * len(REG_NAMES)
_REGS = struct.Struct(f"<{len(REG_NAMES)}Q")
FPSIMD_SIZE = L["user_fpsimd_state"]["size"]
FPSIMD_MAGIC = C["FPSIMD_MAGIC"]
HWCAP_FP, HWCAP_ASIMD = 1 << 0, 1 << 1
ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
MASK64 = (1 << 64) - 1


class Regs(list):
    """x0-x30, sp, pc, pstate, carrying tpidr_el0 for tls()."""
    tpidr = 0


def unpack_regs(data):
    if len(data) < REGS_SIZE:
        # NT_PRSTATUS of a 32-bit task is ARM's 72-byte pt_regs.
        raise UcrError(f"process is a 32-bit ARM (compat) task ({len(data)}-byte registers); "
                       "checkpoint it with the armhf build of usercr")
    return Regs(_REGS.unpack(data[:REGS_SIZE]))


def pack_regs(regs):
    return _REGS.pack(*(v & MASK64 for v in regs))


def signed(v):
    return v - (1 << 64) if v >> 63 else v


def regs_for_syscall(regs, addr, nr, args):
    r = list(regs)
    r[REG["pc"]] = addr
    r[REG["x8"]] = nr
    for i, value in enumerate(args):
        r[i] = value & MASK64
    return r


def syscall_result(regs):
    return signed(regs[REG["x0"]])


def restart_regs_live(regs):
    """At ckpt's PTRACE_INTERRUPT stop arm64's do_signal has already applied
    the restart rule (x0 = orig_x0, pc backed up over the svc; the number is
    still in x8), so the registers as read re-issue the interrupted syscall.
    orig_x0 itself is internal to the kernel: there is nothing to redo."""
    return list(regs)


def restart_regs_new(regs):
    return list(regs)


# struct sigaction as arm64's rt_sigaction takes it: handler, flags, restorer, mask
KSIGACTION_SIZE = L["kernel_sigaction"]["size"]
STACK_T_SIZE = L["stack_t"]["size"]


def unpack_ksigaction(data):
    return struct.unpack("<4Q", data[:KSIGACTION_SIZE])


def unpack_stack_t(data):
    sp, flags, _, size = struct.unpack("<QiiQ", data[:STACK_T_SIZE])
    return sp, flags, size


def stack_pointer(regs):
    return regs[REG["sp"]]


def host_info():
    from ..native import ffi, lib
    out = ffi.new("uint64_t[4]")
    lib.ucr_arch_info(out)
    return {"hwcap": out[0], "hwcap2": out[1]}


def dump_header():
    return R.AARCH64_HEADER.pack(**host_info())


def check(hdr, here, warn):
    missing = hdr["hwcap"] & ~here["hwcap"]
    if missing & (HWCAP_FP | HWCAP_ASIMD):
        raise UcrError(f"image needs floating point/Advanced SIMD (HWCAP 0x{missing & 3:x}) that this CPU lacks")
    if missing or hdr["hwcap2"] & ~here["hwcap2"]:
        warn(f"warning: this CPU lacks features of the checkpointing one (HWCAP 0x{missing:x}, HWCAP2 "
             f"0x{hdr['hwcap2'] & ~here['hwcap2']:x}); the process fails if it uses them")


def check_header(hdr, warn):
    check(hdr, host_info(), warn)


def dump_cpu(tracee):
    fp = tracee.get_regset(NT_PRFPREG, FPSIMD_SIZE)
    vregs = struct.unpack_from("<64Q", fp)
    fpsr, fpcr = struct.unpack_from("<II", fp, 512)
    tls = struct.unpack_from("<Q", tracee.get_regset(NT_ARM_TLS, 8))[0]
    try:
        nr = struct.unpack_from("<i", tracee.get_regset(NT_ARM_SYSTEM_CALL, 4))[0]
    except UcrError:
        nr = -1
    return [R.AARCH64_CPU.pack(regs=tracee.orig_regs, tls=tls, syscall=nr),
            R.AARCH64_FPSIMD.pack(vregs=vregs, fpsr=fpsr, fpcr=fpcr)]


def cpu_state(records):
    cpu = records["AARCH64_CPU"]
    regs = Regs(cpu["regs"])
    regs.tpidr = cpu["tls"]
    fp = records["AARCH64_FPSIMD"]
    return regs, (fp["vregs"], fp["fpsr"], fp["fpcr"])


def tls(regs):
    return [regs.tpidr, 0, 0, 0]


_SF = L["rt_sigframe"]["members"]
_UC = L["ucontext"]["members"]
_SC = L["sigcontext"]["members"]
_FP = L["fpsimd_context"]
FRAME_SIZE = L["rt_sigframe"]["size"]


def build_sigframe(regs, fpstate, blocked, altstack, floor, arch_hdr):
    """struct rt_sigframe (siginfo, ucontext) at a 16-aligned address below
    the stack pointer; uc_mcontext.__reserved holds an fpsimd_context and
    then a null terminator. Returns (address, bytes, sp for rt_sigreturn)."""
    regs = restart_regs_new(regs)
    vregs, fpsr, fpcr = fpstate
    frame_addr = (regs[REG["sp"]] - FRAME_SIZE) & ~15
    if frame_addr < floor:
        raise UcrError("no room below the stack pointer for the signal frame")
    f = bytearray(FRAME_SIZE)
    uc = _SF["uc"]
    struct.pack_into("<QiiQ", f, uc + _UC["uc_stack"], altstack[0], altstack[1], 0, altstack[2])
    struct.pack_into("<Q", f, _SF["uc.uc_sigmask"], blocked)
    sc = _SF["uc.uc_mcontext"]
    struct.pack_into("<31Q", f, sc + _SC["regs"], *regs[:31])
    struct.pack_into("<QQQ", f, sc + _SC["sp"], regs[REG["sp"]], regs[REG["pc"]], regs[REG["pstate"]])
    res = _SF["uc.uc_mcontext.__reserved"]
    m = _FP["members"]
    struct.pack_into("<II", f, res + m["head"], FPSIMD_MAGIC, _FP["size"])
    struct.pack_into("<II", f, res + m["fpsr"], fpsr, fpcr)
    struct.pack_into("<64Q", f, res + m["vregs"], *vregs)
    # the terminator {magic 0, size 0} after it is already zero
    return frame_addr, bytes(f), frame_addr


# The ptrace-free self-checkpoint (selfdump.py): a thread's state from the
# ucontext of the signal it raised itself.

def inside_cpu(uc, tls):
    """(CPU records, blocked mask) from a ucontext; the syscall it raised the
    signal with has returned, so there is none to restart."""
    base = _SF["uc"]
    sc = _SF["uc.uc_mcontext"] - base
    regs = list(struct.unpack_from("<31Q", uc, sc + _SC["regs"]))
    regs += struct.unpack_from("<QQQ", uc, sc + _SC["sp"])
    blocked = struct.unpack_from("<Q", uc, _UC["uc_sigmask"])[0]
    at, m = _SF["uc.uc_mcontext.__reserved"] - base, _FP["members"]
    while at + 8 <= len(uc):
        magic, size = struct.unpack_from("<II", uc, at)
        if magic == FPSIMD_MAGIC:
            fpsr, fpcr = struct.unpack_from("<II", uc, at + m["fpsr"])
            vregs = struct.unpack_from("<64Q", uc, at + m["vregs"])
            return [R.AARCH64_CPU.pack(regs=regs, tls=tls, syscall=-1),
                    R.AARCH64_FPSIMD.pack(vregs=vregs, fpsr=fpsr, fpcr=fpcr)], blocked
        if not magic or size < 8:
            break
        at += size
    raise UcrError("the signal frame has no FPSIMD state")
