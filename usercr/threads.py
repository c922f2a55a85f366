"""Threads: the THREAD record (rseq, sigaltstack, blocked mask,
clear_child_tid, robust futex list), each followed by its arch CPU records
and its own queued signals; restored by the restorer as a prebuilt signal
frame per thread."""
from . import creds, proc, signals
from . import records as R
from .errors import UcrError
from .inject import LONG, WORD_MASK
from .native import ffi

THREAD_STACK = 16 * 1024


def inject(ctx):
    s, C = ctx.session, ctx.arch.C
    if hasattr(ctx.arch, "refuse_unrestorable"):  # x86_64 only: AMX
        ctx.arch.refuse_unrestorable(s, ctx.main)
    out = []
    for t in ctx.threads:
        s.call(t, "reading the signal stack", "sigaltstack", 0, s.scratch)
        altstack = ctx.arch.unpack_stack_t(s.read(t, ctx.arch.STACK_T_SIZE))
        r = s.syscall(t, "prctl", C["PR_GET_TID_ADDRESS"], s.scratch)
        tid_address = s.longs(t, 1)[0] & WORD_MASK if r == 0 else 0
        s.call(t, "reading the robust futex list", "get_robust_list", 0, s.scratch, s.scratch + LONG.size)
        head, size = s.longs(t, 2)
        out.append(dict(altstack=altstack, clear_child_tid=tid_address, robust_list=head & WORD_MASK, robust_len=size))
    return out


def dump(ctx):
    for k, (t, extra) in enumerate(zip(ctx.threads, ctx.injected["threads"])):
        rseq = t.rseq_configuration() or (0, 0, 0)
        sp, ss_flags, ss_size = extra["altstack"]
        yield R.THREAD.pack(tid=ctx.ns.thread(t.pid), rseq_ptr=rseq[0], rseq_len=rseq[1], rseq_sig=rseq[2],
                            altstack_sp=sp, altstack_flags=ss_flags, altstack_size=ss_size,
                            blocked=proc.sigmask(proc.status(t.pid)["SigBlk"]),
                            clear_child_tid=extra["clear_child_tid"],
                            robust_list=extra["robust_list"], robust_len=extra["robust_len"])
        yield from ctx.arch.dump_cpu(t)
        yield from creds.thread_dump(ctx, k)
        yield from signals.pending_records(t, shared=False)


class Restore:
    def __init__(self, rst):
        self.rst = rst

    def prepare(self, plan, p):
        rst, arch, region = self.rst, self.rst.arch, self.rst.region
        vmas = p.records("VMA")

        def thread(t, item):
            k, records = item
            th = records["THREAD"]
            regs, fpstate = arch.cpu_state(records)
            sp = arch.stack_pointer(regs)
            stack_vma = next((v for v in vmas if v["start"] <= sp - 1 < v["end"]), None)
            if stack_vma is None:
                raise UcrError(f"image corrupt: the stack pointer of thread {th['tid']} is outside every mapping")
            frame_addr, frame, sigreturn_sp = arch.build_sigframe(
                regs, fpstate, th["blocked"], (th["altstack_sp"], th["altstack_flags"], th["altstack_size"]),
                stack_vma["start"], rst.img.one[arch.HEADER_RECORD.name])
            t.plan = int(ffi.cast("uintptr_t", plan))
            t.sigframe = region.put(frame, 64)
            t.sigframe_len, t.sigframe_dest, t.sigreturn_sp = len(frame), frame_addr, sigreturn_sp
            for n, v in enumerate(arch.tls(regs)):
                t.tls[n] = v
            t.rseq, t.rseq_len, t.rseq_sig = th["rseq_ptr"], th["rseq_len"], th["rseq_sig"]
            t.clear_child_tid, t.robust_list, t.robust_len = th["clear_child_tid"], th["robust_list"], th["robust_len"]
            t.stack_top = region.stacks_start + (k + 1) * THREAD_STACK
            t.tid = th["tid"] if rst.pids else 0
        plan.threads, plan.nr_threads = region.array("ucr_thread", list(enumerate(p.threads)), thread)
