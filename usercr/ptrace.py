"""Freezing and reading a task with ptrace, and running syscalls inside it."""
import os
import _signal as signal  # the signal module without its enums, which cost every rstr ~2 ms to import
import sys
import time

from . import proc
from .arch import current as current_arch
from .errors import UcrError
from .native import ffi, lib

_C = current_arch().C
PTRACE_PEEKDATA, PTRACE_POKEDATA = _C["PTRACE_PEEKDATA"], _C["PTRACE_POKEDATA"]
PTRACE_CONT, PTRACE_DETACH, PTRACE_SYSCALL = _C["PTRACE_CONT"], _C["PTRACE_DETACH"], _C["PTRACE_SYSCALL"]
PTRACE_GETREGSET, PTRACE_SETREGSET = _C["PTRACE_GETREGSET"], _C["PTRACE_SETREGSET"]
PTRACE_SEIZE, PTRACE_INTERRUPT = _C["PTRACE_SEIZE"], _C["PTRACE_INTERRUPT"]
PTRACE_PEEKSIGINFO, PTRACE_PEEKSIGINFO_SHARED = _C["PTRACE_PEEKSIGINFO"], _C["PTRACE_PEEKSIGINFO_SHARED"]
PTRACE_GETSIGMASK, PTRACE_SETSIGMASK = _C["PTRACE_GETSIGMASK"], _C["PTRACE_SETSIGMASK"]
PTRACE_GET_RSEQ_CONFIGURATION = _C["PTRACE_GET_RSEQ_CONFIGURATION"]
PTRACE_O_TRACESYSGOOD, PTRACE_EVENT_STOP = _C["PTRACE_O_TRACESYSGOOD"], _C["PTRACE_EVENT_STOP"]
WALL = _C["UCR_WALL"]
SIGTRAP = signal.SIGTRAP
STOP_TIMEOUT = 10.0


def wait_stop(pid, timeout=STOP_TIMEOUT):
    """Waits for the next ptrace stop of pid; returns the raw wait status."""
    deadline = time.monotonic() + timeout
    spins = 0
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG | WALL)
        except ChildProcessError:
            raise UcrError(f"process {pid} exited during the checkpoint") from None
        if got == pid:
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise UcrError(f"process {pid} exited during the checkpoint")
            return status
        if time.monotonic() > deadline:
            raise UcrError(f"process {pid} did not stop within {timeout:.0f} s")
        spins += 1
        if spins > 100:
            time.sleep(0.0005)


class Tracee:
    """A seized task. The arch module knows its registers."""

    def __init__(self, pid, arch):
        self.pid = pid
        self.arch = arch
        self.seized = False
        self.orig_regs = None
        self.poked = None  # (addr, original bytes) while injection code is in place
        self.late_signals = []
        self.mem_fd = None
        self.stop_signal = 0  # of the first stop: SIGTRAP, or the stop signal of a group stop

    def call(self, request, addr=0, data=0, what="ptrace"):
        r = lib.ucr_ptrace(request, self.pid, addr, data)
        if r < 0:
            raise UcrError(f"{what} of process {self.pid}: {os.strerror(-r)}")
        return r

    def attach(self, missing_ok=False):
        """PTRACE_SEIZE and PTRACE_INTERRUPT; the stop is awaited by
        wait_interrupted, so a whole tree can be asked to stop at once.
        Returns False if the task is gone and missing_ok."""
        r = lib.ucr_ptrace(PTRACE_SEIZE, self.pid, 0, PTRACE_O_TRACESYSGOOD)
        if r == -3 and missing_ok:
            return False
        if r < 0:
            hint = " (is it traced already, or are you not allowed to trace it?)" if r == -1 else ""
            if r == -3:
                raise UcrError(f"process {self.pid} does not exist")
            raise UcrError(f"cannot attach to process {self.pid}: {os.strerror(-r)}{hint}")
        self.seized = True
        self.call(PTRACE_INTERRUPT, what="interrupt")
        return True

    def wait_interrupted(self):
        while True:
            status = wait_stop(self.pid)
            if status >> 16 == PTRACE_EVENT_STOP:
                break
            # A signal arrived first: keep it for after the checkpoint.
            self.late_signals.append(os.WSTOPSIG(status))
            self.call(PTRACE_CONT, what="resume")
        self.stop_signal = os.WSTOPSIG(status)
        self.mem_fd = os.open(proc.path(self.pid, "mem"), os.O_RDWR)
        self.orig_regs = self.get_regs()

    # Register sets
    def get_regset(self, note, size):
        buf = ffi.new("char[]", size)
        iov = ffi.new("uintptr_t[2]", [int(ffi.cast("uintptr_t", buf)), size])
        self.call(PTRACE_GETREGSET, note, int(ffi.cast("uintptr_t", iov)), what="reading registers")
        return bytes(ffi.buffer(buf, iov[1]))

    def set_regset(self, note, data):
        buf = ffi.from_buffer(bytearray(data))
        iov = ffi.new("uintptr_t[2]", [int(ffi.cast("uintptr_t", buf)), len(data)])
        self.call(PTRACE_SETREGSET, note, int(ffi.cast("uintptr_t", iov)), what="writing registers")

    def get_regs(self):
        return self.arch.unpack_regs(self.get_regset(self.arch.NT_PRSTATUS, self.arch.REGS_SIZE))

    def set_regs(self, regs):
        self.set_regset(self.arch.NT_PRSTATUS, self.arch.pack_regs(regs))

    def sigmask(self):
        mask = ffi.new("uint64_t *")
        self.call(PTRACE_GETSIGMASK, 8, int(ffi.cast("uintptr_t", mask)), what="reading the signal mask")
        return mask[0]

    def set_sigmask(self, value):
        mask = ffi.new("uint64_t *", value)
        self.call(PTRACE_SETSIGMASK, 8, int(ffi.cast("uintptr_t", mask)), what="setting the signal mask")

    def rseq_configuration(self):
        """(ptr, len, sig) of the task's rseq registration, or None."""
        # struct ptrace_rseq_configuration {u64 ptr; u32 size, signature, flags, pad;}
        buf = ffi.new("uint32_t[6]")
        r = lib.ucr_ptrace(PTRACE_GET_RSEQ_CONFIGURATION, self.pid, 24, int(ffi.cast("uintptr_t", buf)))
        ptr = buf[0] | (buf[1] << 32)
        if r < 0 or not ptr:
            return None
        return ptr, buf[2], buf[3]

    def pending_signals(self, shared):
        """Queued siginfos, 128 bytes each, per thread or process-wide."""
        out = []
        args = ffi.new("uint32_t[4]")  # struct ptrace_peeksiginfo_args {u64 off; u32 flags; s32 nr;}
        buf = ffi.new("char[]", 128 * 32)
        while True:
            args[0:4] = [len(out), 0, PTRACE_PEEKSIGINFO_SHARED if shared else 0, 32]
            n = self.call(PTRACE_PEEKSIGINFO, int(ffi.cast("uintptr_t", args)),
                          int(ffi.cast("uintptr_t", buf)), what="reading pending signals")
            out += [bytes(ffi.buffer(buf + 128 * i, 128)) for i in range(n)]
            if n < 32:
                return out

    # Memory
    def read(self, addr, size):
        return os.pread(self.mem_fd, size, addr)

    def write(self, addr, data):
        os.pwrite(self.mem_fd, data, addr)

    def peek(self, addr, size):
        """size bytes (a multiple of the word) read with PTRACE_PEEKDATA."""
        word = ffi.new("unsigned long *")
        out = b""
        for at in range(addr, addr + size, ffi.sizeof("unsigned long")):
            self.call(PTRACE_PEEKDATA, at, int(ffi.cast("uintptr_t", word)), what="reading memory")
            out += bytes(ffi.buffer(word))
        return out

    def poke(self, addr, data):
        """Writes data (a multiple of the word) with PTRACE_POKEDATA."""
        n = ffi.sizeof("unsigned long")
        for k in range(0, len(data), n):
            self.call(PTRACE_POKEDATA, addr + k, int.from_bytes(data[k:k + n], sys.byteorder), what="writing memory")

    # Syscall injection
    def prepare_injection(self, code_addr, poke=True):
        """Puts a syscall instruction at code_addr; another thread of the same
        process (poke=False) uses the one its main thread put there."""
        insn = self.arch.SYSCALL_INSN
        self.poked = (code_addr, self.read(code_addr, len(insn)) if poke else None)
        if poke:
            self.write(code_addr, insn)

    def syscall(self, nr, *args):
        """Runs one syscall in the task and returns its result."""
        addr = self.poked[0]
        self.set_regs(self.arch.regs_for_syscall(self.orig_regs, addr, nr, args))
        for _ in range(2):  # syscall-enter, then syscall-exit
            while True:
                self.call(PTRACE_SYSCALL, what="running a syscall in the task")
                status = wait_stop(self.pid)
                sig = os.WSTOPSIG(status)
                if sig == SIGTRAP | 0x80:
                    break
                self.late_signals.append(sig)
        return self.arch.syscall_result(self.get_regs())

    def end_injection(self):
        """Puts the code and registers back at once, so that even if ckpt dies
        later the task resumes as it was (the kernel detaches a dead tracer's tasks)."""
        if self.poked:
            if self.poked[1] is not None:
                self.write(*self.poked)
            self.poked = None
            # The task now stops in a syscall-exit stop, where the kernel will not
            # restart its interrupted syscall for us: do what it would have done.
            self.set_regs(self.arch.restart_regs_live(self.orig_regs))

    def release(self, kill=False):
        """Puts back what was changed and lets the task go (or kills it)."""
        if not self.seized:
            return
        try:
            self.end_injection()
        except UcrError:
            if os.path.exists(proc.path(self.pid, "stat")):
                raise
            raise UcrError(f"process {self.pid} exited during the checkpoint") from None
        finally:
            if kill:
                try:
                    os.kill(self.pid, 9)
                except ProcessLookupError:
                    pass  # another thread's kill took the whole process
            else:
                lib.ucr_ptrace(PTRACE_DETACH, self.pid, 0, 0)
                for sig in self.late_signals:
                    if sig != SIGTRAP:
                        os.kill(self.pid, sig)
            if self.mem_fd is not None:
                os.close(self.mem_fd)
                self.mem_fd = None
            self.seized = False
