"""Processes: the TASK record (comm, personality, exit signal, pdeathsig,
controlling terminal, the executable's path), zombies included."""
import os
import stat
import struct

from . import proc
from . import records as R
from . import rootless
from . import trust
from .native import ffi


def stop_signal(main, arch):
    """The signal of the process's group stop, or 0: a task seized in a
    group stop reports it as its first PTRACE_EVENT_STOP."""
    sig = main.stop_signal
    return sig if sig in [arch.C[s] for s in ("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU")] else 0


def inject(ctx):
    s = ctx.session
    s.call(ctx.main, "reading pdeathsig", "prctl", ctx.arch.C["PR_GET_PDEATHSIG"], s.scratch)
    return {"pdeathsig": struct.unpack("<i", s.read(ctx.main, 4))[0],
            "dumpable": s.call(ctx.main, "reading the dumpable flag", "prctl", ctx.arch.C["PR_GET_DUMPABLE"])}


def dump(ctx):
    yield task_record(ctx, proc.readlink(ctx.pid, "exe"))
    yield from getattr(ctx.arch, "dump_process", lambda t: [])(ctx.main)


def task_record(ctx, exe):
    sf, pid = ctx.stat, ctx.pid
    pgid, tty_nr, tpgid = int(sf[5]), int(sf[7]), int(sf[8])
    return R.TASK.pack(pid=ctx.ns(pid), exit_signal=int(sf[38]), pdeathsig=ctx.injected["tasks"]["pdeathsig"],
                       dumpable=ctx.injected["tasks"]["dumpable"],
                       comm=sf[2][:15], personality=int(proc.read_text(pid, "personality"), 16),
                       tty_nr=tty_nr, ctty_fg=1 if tty_nr and tpgid == pgid else 0,
                       nr_threads=len(ctx.threads), stopped=stop_signal(ctx.main, ctx.arch), tail=exe)


def zombie_record(pid, ns):
    sf = proc.stat_fields(pid)
    return R.TASK.pack(pid=ns(pid), exit_signal=int(sf[38]), comm=sf[2][:15], zombie=1,
                       exit_status=int(sf[52]) if len(sf) > 52 else 0, nr_threads=0)


class Restore:
    def __init__(self, rst):
        self.rst = rst

    def prepare(self, plan, p):
        task = p["TASK"]
        comm = task["comm"].encode()[:15]
        ffi.memmove(plan.comm, comm + b"\0", len(comm) + 1)
        if p.zombie:
            plan.zombie, plan.exit_status = 1, task["exit_status"]
            return
        plan.pdeathsig = task["pdeathsig"]
        plan.stopped = 1 if task["stopped"] else 0
        plan.dumpable = task["dumpable"]
        plan.exe_fd = self._open_exe(task["tail"])

    def _open_exe(self, path):
        """The executable for /proc/PID/exe, or -1 to keep rstr's. The kernel
        refuses a new one while the old is still mapped, which it is when both
        are the same file (a Python restoring a Python), and then keeping it is right."""
        if rootless.keep_exe(self.rst):
            return -1
        try:
            st, mine = os.stat(path), os.stat("/proc/self/exe")
        except OSError as e:
            self.rst.warn(f"warning: executable {path} is gone ({e.strerror}): /proc/PID/exe of the "
                          "restored process names rstr's interpreter")
            return -1
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return -1
        return self.rst.keep(trust.open_checked(path, stat.S_IFREG, os.O_RDONLY, "executable"))
