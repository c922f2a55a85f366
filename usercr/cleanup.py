"""No leftovers: when rstr releases a restored tree, it unmaps the restorer
region (blob, plans, stacks, the shared page) from every process from
outside, with ptrace, as CRIU does (finalize_restore, compel_unmap).

Code that unmaps the region cannot lie in it, and no thread may still be
about to run it. So before the release every thread is seized and
interrupted, and from then on followed from syscall stop to syscall stop up
to its rt_sigreturn: any other thread is held at the entry of that call (its
frame is on the program's stack: nothing of the region is used after the
instruction that entered it), the main thread is let through to its exit,
where registers, FP state and signal mask are the program's. Then rstr runs
munmap of the region in the main thread from a syscall instruction it put
after the blob, with every signal blocked meanwhile (PTRACE_SETSIGMASK) so
that nothing is delivered to the injected registers, puts back the registers,
the mask and the rseq critical-section pointer the kernel clears on the way,
and detaches every thread. The program sees none of it: its pending signals
stay pending, a syscall to re-issue is re-issued.

Where ptrace is not available (qemu-user has none; Yama or seccomp may
forbid it) the tree is released as before and the region stays mapped."""
import errno
import os
import _signal as signal  # the signal module without its enums, which cost every rstr ~2 ms to import

from . import proc
from .errors import UcrError
from .native import ffi, lib
from .ptrace import PTRACE_EVENT_STOP, PTRACE_INTERRUPT, PTRACE_SEIZE, PTRACE_SYSCALL, SIGTRAP, STOP_TIMEOUT, \
    WALL, Tracee

ALL_SIGNALS = 2**64 - 1
RSEQ_CS_OFFSET = 8  # struct rseq: u32 cpu_id_start, u32 cpu_id, u64 rseq_cs


def with_syscall_insn(blob, arch):
    """The blob followed by the arch's syscall instruction (16-byte aligned,
    so that ARM's is word-aligned) and that instruction's offset: the
    injected munmap runs from there."""
    at = (len(blob) + 15) & ~15
    return blob + bytes(at - len(blob)) + arch.SYSCALL_INSN, at


class _Task:
    """One thread: its tracee, its process, where it is."""
    __slots__ = ("tracee", "proc", "main", "in_sigreturn", "saved")

    def __init__(self, tracee, process, main):
        self.tracee, self.proc, self.main = tracee, process, main
        self.in_sigreturn = False
        self.saved = None  # the main thread while it runs munmap: (regs, mask, rseq_cs address, its value)


class _Process:
    __slots__ = ("pid", "tasks", "waiting")

    def __init__(self, pid):
        self.pid, self.tasks, self.waiting = pid, [], 0


class Leave:
    """Releases one restored tree and unmaps its restorer region."""

    def __init__(self, arch, start, end, syscall_addr, root, log):
        self.arch, self.start, self.end, self.syscall_addr = arch, start, end, syscall_addr
        self.root, self.log = root, log
        self.procs, self.tasks = [], {}
        c = arch.C
        self.options = c["PTRACE_O_TRACESYSGOOD"] | c["PTRACE_O_EXITKILL"]
        self.entry, self.exit = c["PTRACE_SYSCALL_INFO_ENTRY"], c["PTRACE_SYSCALL_INFO_EXIT"]
        self.get_info = c["PTRACE_GET_SYSCALL_INFO"]
        self.info = ffi.new("uint64_t[4]")  # struct ptrace_syscall_info up to entry.nr
        self.info_at = int(ffi.cast("uintptr_t", self.info))

    def release(self, go_w, live):
        """Sends go to the live processes and, where ptrace allows, returns
        once the region is gone from all of them."""
        if not self._seize():
            os.write(go_w, b"G" * live)
            return
        if len(self.procs) != live:
            raise UcrError(f"internal error: {len(self.procs)} restored processes found, {live} expected")
        os.write(go_w, b"G" * live)
        self._follow()

    def kill(self):
        """Kills every process this traced (on a failure)."""
        for p in self.procs:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _seize(self):
        """Seizes and interrupts every thread of the root and its descendants
        but zombies, which are left alone; False if ptrace is unavailable.
        Each thread stops before its next return to user space, so none gets
        past its wait for go untraced."""
        stack = [self.root]
        while stack:
            pid = stack.pop()
            p = _Process(pid)
            for tid in proc.threads(pid, missing_ok=True):
                r = lib.ucr_ptrace(PTRACE_SEIZE, tid, 0, self.options)
                if r == -errno.EPERM and tid == pid and proc.state(pid) == "Z":
                    break
                if r < 0 and not self.tasks and -r in (errno.EPERM, errno.ENOSYS):
                    self.log(f"ptrace unavailable ({os.strerror(-r)}): the restorer region stays mapped")
                    return False
                if r < 0:
                    raise UcrError(f"cannot trace restored process {pid}: {os.strerror(-r)}")
                tracee = Tracee(tid, self.arch)
                tracee.seized = True
                tracee.call(PTRACE_INTERRUPT, what="interrupt")
                task = self.tasks[tid] = _Task(tracee, p, tid == pid)
                p.tasks.append(task)
            if p.tasks:
                p.waiting = len(p.tasks)
                self.procs.append(p)
                stack.extend(proc.children(pid))
        return True

    def _syscall_stop(self, task):
        """(op, nr) of a syscall stop; nr only at an entry."""
        r = lib.ucr_ptrace(self.get_info, task.tracee.pid, 32, self.info_at)
        if r < 0:
            raise UcrError(f"following restored process {task.proc.pid}: {os.strerror(-r)}")
        return self.info[0] & 0xff, self.info[3]

    def _follow(self):
        """Drives every thread to its goal (see the module's doc) and each
        process, once all its threads are there, through munmap, handling
        the stops of the whole tree as they come."""
        nr_sigreturn = self.arch.SYSCALLS["rt_sigreturn"]
        left = len(self.procs)
        old = signal.signal(signal.SIGALRM, _too_slow)
        try:
            while left:
                signal.setitimer(signal.ITIMER_REAL, STOP_TIMEOUT)  # for each process let go
                while not self._next(nr_sigreturn):
                    pass
                left -= 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    def _next(self, nr_sigreturn):
        """Handles the next stop; returns 1 when it let a process go."""
        # A blocking wait: a polling tracer would take the CPU from its tracees.
        tid, status = os.waitpid(-1, WALL)
        task = self.tasks.get(tid)
        if task is None or os.WIFEXITED(status) or os.WIFSIGNALED(status):
            raise UcrError(f"restored process {task.proc.pid if task else tid} died during its release")
        sig, deliver = os.WSTOPSIG(status), 0
        if sig == SIGTRAP | 0x80:
            op, nr = self._syscall_stop(task)
            if task.saved and op == self.exit:
                self._unmapped(task)
                return 1
            if not task.saved and (op == self.entry and nr == nr_sigreturn and not task.main or
                                   op == self.exit and task.in_sigreturn):
                task.proc.waiting -= 1
                if not task.proc.waiting:
                    self._unmap(next(t for t in task.proc.tasks if t.main))
                return 0
            task.in_sigreturn = op == self.entry and nr == nr_sigreturn
        elif status >> 16 == PTRACE_EVENT_STOP:
            pass  # the interrupt
        elif sig == signal.SIGSTOP:  # the only signal the restorer does not block: sent again after
            task.tracee.late_signals.append(sig)
        else:
            deliver = sig  # a fault in the restorer: it takes its course
        r = lib.ucr_ptrace(PTRACE_SYSCALL, tid, 0, deliver)
        if r < 0:
            raise UcrError(f"resuming restored process {task.proc.pid}: {os.strerror(-r)}")
        return 0

    def _unmap(self, task):
        """Starts munmap of the region in the main thread, at the exit of its
        rt_sigreturn, with every signal blocked; every thread is stopped."""
        t = task.tracee
        regs, mask, rseq = t.get_regs(), t.sigmask(), t.rseq_configuration()
        cs_at = rseq[0] + RSEQ_CS_OFFSET if rseq else 0
        task.saved = regs, mask, cs_at, t.peek(cs_at, 8) if cs_at else None
        t.set_sigmask(ALL_SIGNALS)
        t.set_regs(self.arch.regs_for_syscall(regs, self.syscall_addr, self.arch.SYSCALLS["munmap"],
                                              (self.start, self.end - self.start)))
        t.call(PTRACE_SYSCALL, what="resuming")

    def _unmapped(self, task):
        """At the exit of munmap: puts back registers, mask and the rseq
        critical section the kernel cleared on the way (so that it still
        aborts it on the way back to the program), and lets every thread go."""
        t = task.tracee
        r = self.arch.syscall_result(t.get_regs())
        regs, mask, cs_at, cs = task.saved
        t.set_regs(regs)
        t.set_sigmask(mask)
        if cs_at and any(cs):
            t.poke(cs_at, cs)
        if r:
            raise UcrError(f"unmapping the restorer region from process {task.proc.pid}: {os.strerror(-r)}")
        for other in task.proc.tasks:
            other.tracee.release()
            del self.tasks[other.tracee.pid]


def _too_slow(*_):
    raise UcrError(f"no restored process returned to its program within {STOP_TIMEOUT:.0f} s")
