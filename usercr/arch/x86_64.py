"""x86_64: registers, XSAVE state, syscall injection, and the rt_sigframe."""
import errno
import os
import struct

from .. import records as R
from ..errors import UcrError
from ..headers import x86_64 as abi

NAME = "x86_64"
ARCH_ID = R.ARCH_IDS[NAME]
SYSCALLS = abi.SYSCALLS
C = abi.CONSTANTS
L = abi.LAYOUTS
NT_PRSTATUS, NT_X86_XSTATE = C["NT_PRSTATUS"], C["NT_X86_XSTATE"]
HEADER_RECORD = R.X86_64_HEADER
SYSCALL_INSN = b"\x0f\x05"
GATE_MAPPINGS = ("[vsyscall]",)
RED_ZONE = 128

REG_NAMES = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags "
             "rsp ss fs_base gs_base ds es fs gs").split()
REG = {name: i for i, name in enumerate(REG_NAMES)}
REGS_SIZE = 8 * len(REG_NAMES)
_REGS = struct.Struct(f"<{len(REG_NAMES)}Q")

FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2 = C["FP_XSTATE_MAGIC1"], C["FP_XSTATE_MAGIC2"]
SW_BYTES_OFFSET = 464  # struct _fpx_sw_bytes inside the legacy FXSAVE area
XSAVE_MAX = 64 * 1024
ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
MASK64 = (1 << 64) - 1


def unpack_regs(data):
    return list(_REGS.unpack(data[:REGS_SIZE]))


def pack_regs(regs):
    return _REGS.pack(*regs)


def signed(v):
    return v - (1 << 64) if v >> 63 else v


def regs_for_syscall(regs, addr, nr, args):
    r = list(regs)
    r[REG["rip"]] = addr
    r[REG["rax"]] = nr
    r[REG["orig_rax"]] = MASK64  # -1: no syscall to restart
    for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
        r[REG[name]] = value & MASK64
    return r


def syscall_result(regs):
    return signed(regs[REG["rax"]])


def _restart(regs, restart_block_nr):
    """What the kernel does on the way out of an interrupted syscall when no
    handler runs: back up over the syscall instruction and issue it again."""
    r = list(regs)
    if signed(r[REG["orig_rax"]]) < 0:
        return r
    err = -signed(r[REG["rax"]])
    if err in (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND):
        r[REG["rax"]] = r[REG["orig_rax"]]
    elif err == ERESTART_RESTARTBLOCK:
        r[REG["rax"]] = restart_block_nr if restart_block_nr is not None else r[REG["orig_rax"]]
    else:
        return r
    r[REG["rip"]] -= len(SYSCALL_INSN)
    r[REG["orig_rax"]] = MASK64
    return r


def restart_regs_live(regs):
    """Registers to put back into the still-running task after the dump; its
    kernel restart block is intact, so restart_syscall resumes e.g. a sleep."""
    return _restart(regs, SYSCALLS["restart_syscall"])


def restart_regs_new(regs):
    """Registers for a restored task: a new task has no restart block, so the
    original syscall is issued again with its original arguments."""
    return _restart(regs, None)


# struct sigaction as rt_sigaction takes it: handler, flags, restorer, mask
KSIGACTION_SIZE = L["kernel_sigaction"]["size"]
STACK_T_SIZE = L["stack_t"]["size"]


def unpack_ksigaction(data):
    return struct.unpack("<4Q", data)


def unpack_stack_t(data):
    """(ss_sp, ss_flags, ss_size)"""
    sp, flags, _, size = struct.unpack("<QiiQ", data)
    return sp, flags, size


def stack_pointer(regs):
    return regs[REG["rsp"]]


def host_info():
    from ..native import ffi, lib
    out = ffi.new("uint64_t[4]")
    lib.ucr_arch_info(out)
    return {"xfeatures": out[0], "xsave_size": out[1]}


def dump_header():
    return R.X86_64_HEADER.pack(**host_info())


def check_header(hdr, warn):
    """Refuses an image whose FPU state this CPU cannot load."""
    here = host_info()
    missing = hdr["xfeatures"] & ~here["xfeatures"]
    if missing:
        raise UcrError(f"image needs XSAVE features 0x{missing:x} that this CPU lacks "
                       f"(image 0x{hdr['xfeatures']:x}, here 0x{here['xfeatures']:x})")
    if hdr["xsave_size"] > here["xsave_size"]:
        raise UcrError(f"image XSAVE area ({hdr['xsave_size']} bytes) is larger than this CPU's "
                       f"({here['xsave_size']} bytes)")


def refuse_unrestorable(session, main):
    """A process that asked for first-use-only XSAVE features (AMX) would come
    back without that permission, and die of SIGILL at its next use."""
    r = session.syscall(main, "arch_prctl", C["ARCH_GET_XCOMP_PERM"], session.scratch)
    if r == -errno.EINVAL:  # before Linux 5.16: no such features, nothing to ask for
        return
    if r < 0:
        raise UcrError(f"reading the XSAVE permissions of process {main.pid}: {os.strerror(-r)}")
    asked = struct.unpack("<Q", session.read(main, 8))[0] & ~host_info()["xfeatures"]
    if asked:
        raise UcrError(f"process {main.pid} asked for XSAVE features 0x{asked:x} enabled on first use only "
                       f"(AMX, arch_prctl ARCH_REQ_XCOMP_PERM): not supported")


def dump_cpu(tracee):
    """The CPU records of one thread: general registers and the XSAVE area."""
    xsave = tracee.get_regset(NT_X86_XSTATE, XSAVE_MAX)
    return [R.X86_64_CPU.pack(regs=tracee.orig_regs), R.X86_64_FPU.pack(tail=xsave)]


def cpu_state(records):
    """(regs, fpstate) from a thread's records as the reader decoded them."""
    return records["X86_64_CPU"]["regs"], records["X86_64_FPU"]["tail"]


def tls(regs):
    return [regs[REG["fs_base"]], regs[REG["gs_base"]], 0, 0]


# struct sigcontext (64-bit) register order, as the kernel saves it.
_SC_REGS = "r8 r9 r10 r11 r12 r13 r14 r15 rdi rsi rbp rbx rdx rax rcx rsp rip eflags".split()
UC_FP_XSTATE, UC_SIGCONTEXT_SS, UC_STRICT_RESTORE_SS = 1, 2, 4
UCONTEXT_SIZE = 304  # flags, link, stack_t, sigcontext, 8-byte sigset
SIGINFO_SIZE = L["siginfo"]["size"]


def build_sigframe(regs, fpstate, blocked, altstack, floor, arch_hdr):
    """Lays out a struct rt_sigframe below the task's red zone, as the kernel
    would for a signal, with the XSAVE area after it. floor is the lowest
    address the frame may use. Returns (address of the frame, its bytes, the
    stack pointer to issue rt_sigreturn with)."""
    regs = restart_regs_new(regs)
    # ptrace's area has room for every feature XCR0 enables; a signal frame's
    # only for the task's default ones (the image's xsave_size).
    fp = bytearray(fpstate[:arch_hdr["xsave_size"]])
    # The software-reserved words tell rt_sigreturn that a full XSAVE area follows.
    struct.pack_into("<IIQI", fp, SW_BYTES_OFFSET, FP_XSTATE_MAGIC1, len(fp) + 4, arch_hdr["xfeatures"], len(fp))
    fp += struct.pack("<I", FP_XSTATE_MAGIC2)

    top = regs[REG["rsp"]] - RED_ZONE
    fp_addr = (top - len(fp)) & ~63  # XRSTOR needs 64-byte alignment
    frame_addr = ((fp_addr - 8 - UCONTEXT_SIZE - SIGINFO_SIZE) & ~15) - 8
    if frame_addr < floor:
        raise UcrError("no room below the stack pointer for the signal frame")
    sc = struct.pack("<18Q", *(regs[REG[n]] for n in _SC_REGS))
    sc += struct.pack("<4H", regs[REG["cs"]], regs[REG["gs"]], regs[REG["fs"]], regs[REG["ss"]])
    sc += struct.pack("<5Q", 0, 0, 0, 0, fp_addr) + bytes(64)
    uc = struct.pack("<QQQiiQ", UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS, 0,
                     altstack[0], altstack[1], 0, altstack[2]) + sc + struct.pack("<Q", blocked)
    assert len(uc) == UCONTEXT_SIZE
    frame = bytearray(fp_addr + len(fp) - frame_addr)
    frame[8:8 + UCONTEXT_SIZE] = uc
    frame[fp_addr - frame_addr:] = fp
    return frame_addr, bytes(frame), frame_addr + 8
