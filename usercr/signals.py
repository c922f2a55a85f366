"""Signals: the actions (SIGHAND, read inside the task) and the queued
signals (SIGPENDING: process-wide ones here, each thread's after its THREAD
record)."""
import _signal as signal  # the signal module without its enums, which cost every rstr ~2 ms to import

from . import proc
from . import records as R
from .native import ffi


def inject(ctx):
    """The 64 actions as (handler, flags, restorer, mask); only signals the
    process catches or ignores are asked for, the rest are SIG_DFL."""
    s, arch = ctx.session, ctx.arch
    interesting = proc.sigmask(ctx.status["SigCgt"]) | proc.sigmask(ctx.status["SigIgn"])
    actions = []
    for sig in range(1, 65):
        if sig in (signal.SIGKILL, signal.SIGSTOP) or not interesting >> (sig - 1) & 1:
            actions.append((0, 0, 0, 0))
            continue
        s.call(ctx.main, f"reading the action of signal {sig}", "rt_sigaction", sig, 0, s.scratch, 8)
        actions.append(arch.unpack_ksigaction(s.read(ctx.main, arch.KSIGACTION_SIZE)))
    return actions


def pending_records(tracee, shared):
    for info in tracee.pending_signals(shared):
        yield R.SIGPENDING.pack(shared=int(shared), signo=int.from_bytes(info[:4], "little"), tail=info)


def dump(ctx):
    yield R.SIGHAND.pack(actions=[v for a in ctx.injected["signals"] for v in a])
    yield from pending_records(ctx.main, shared=True)


class Restore:
    def __init__(self, rst):
        self.rst = rst

    def prepare(self, plan, p):
        acts = p["SIGHAND"]["actions"]
        for k in range(64):
            a = plan.sigactions[k]
            a.handler, a.flags, a.restorer, a.mask = acts[4 * k:4 * k + 4]
        pending = [(1, 0, rec) for rec in p.records("SIGPENDING")]
        pending += [(0, k, rec) for k, t in enumerate(p.threads) for rec in t["SIGPENDING"]]

        def siginfo(s, item):
            s.shared, s.thread, rec = item
            s.signo = rec["signo"]
            ffi.memmove(s.info, rec["tail"], 128)
        plan.siginfo, plan.nr_siginfo = self.rst.region.array("ucr_siginfo", pending, siginfo)
