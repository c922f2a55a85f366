"""Credentials and the state that limits what a process may do: uids, gids
and groups (CREDS, per process), capability sets, securebits,
no_new_privs and seccomp filters (SECURITY and SECCOMP_FILTER, per thread,
as the kernel keeps them). Their dump, and their part of the restore plan."""
import os
import struct

from . import proc
from . import records as R
from . import rootless
from .errors import UcrError
from .native import ffi, lib
from .ptrace import PTRACE_O_TRACESYSGOOD

SOCK_FILTER = struct.Struct("<HBBI")   # struct sock_filter {u16 code; u8 jt, jf; u32 k}


def before_inject(ctx):
    """Each thread's capabilities, no_new_privs and filters, read (and the
    filters suspended) before anything runs inside the task."""
    return dump_threads(ctx.threads, ctx.arch)


def inject(ctx):
    return [ctx.session.call(t, "reading securebits", "prctl", ctx.arch.C["PR_GET_SECUREBITS"])
            for t in ctx.threads]


def dump(ctx):
    yield creds_record(ctx.status)


def thread_dump(ctx, k):
    """The SECURITY and SECCOMP_FILTER records of thread k, after its THREAD record."""
    return thread_records(ctx.injected["creds_before"][k], ctx.injected["creds"][k])


def creds_record(st):
    """The process's CREDS record from its /proc status."""
    uids = [int(x) for x in st["Uid"].split()]
    gids = [int(x) for x in st["Gid"].split()]
    groups = [int(x) for x in st.get("Groups", "").split()]
    return R.CREDS.pack(uid=uids[0], euid=uids[1], suid=uids[2], fsuid=uids[3],
                        gid=gids[0], egid=gids[1], sgid=gids[2], fsgid=gids[3], tail=groups)


def _filters(t, pid, arch):
    """A thread's seccomp filters, oldest first, as (flags, program bytes)."""
    C = arch.C
    out = []
    meta = ffi.new("uint64_t[2]")
    while True:
        index = len(out)
        n = lib.ucr_ptrace(C["PTRACE_SECCOMP_GET_FILTER"], t.pid, index, 0)
        if n == -2 and index:  # ENOENT: no older one
            return out
        if n < 0:
            hint = " (it needs CAP_SYS_ADMIN, and ckpt must not be under seccomp itself)" if n == -13 else ""
            raise UcrError(f"seccomp filter {index} of thread {t.pid} of process {pid} cannot be read: "
                           f"{os.strerror(-n)}{hint}")
        buf = ffi.new("char[]", n * SOCK_FILTER.size)
        n = t.call(C["PTRACE_SECCOMP_GET_FILTER"], index, int(ffi.cast("uintptr_t", buf)),
                   what="reading a seccomp filter")
        prog = bytes(ffi.buffer(buf, n * SOCK_FILTER.size))
        for code, _, _, k in SOCK_FILTER.iter_unpack(prog):
            if code & 0x07 != C["BPF_RET"]:
                continue
            if code & 0x18 != C["BPF_K"]:
                raise UcrError(f"seccomp filter {index} of process {pid} returns a computed action; it may "
                               "hand syscalls to a user-space supervisor, which cannot be checkpointed")
            if k & C["SECCOMP_RET_ACTION_FULL"] == C["SECCOMP_RET_USER_NOTIF"]:
                raise UcrError(f"seccomp filter {index} of process {pid} hands syscalls to a user-space "
                               "supervisor (SECCOMP_RET_USER_NOTIF); that cannot be checkpointed")
        meta[0:2] = [index, 0]
        t.call(C["PTRACE_SECCOMP_GET_METADATA"], 16, int(ffi.cast("uintptr_t", meta)),
               what="reading seccomp filter flags")
        out.append((int(meta[1]) & C["SECCOMP_FILTER_FLAG_LOG"], prog))


def dump_threads(threads, arch):
    """Reads each thread's capabilities, no_new_privs and seccomp filters,
    refuses what cannot be restored, and suspends the seccomp filters of
    the frozen threads so that the syscalls ckpt runs inside them pass
    (PTRACE_O_SUSPEND_SECCOMP; lifted again when ckpt detaches). Runs
    before anything is injected."""
    C = arch.C
    pid = threads[0].pid
    out, ids = [], None
    for t in threads:
        st = proc.status(t.pid)
        mine = (st["Uid"], st["Gid"], st.get("Groups", ""))
        if ids not in (None, mine):
            raise UcrError(f"the threads of process {pid} have different uids, gids or groups; "
                           "that cannot be checkpointed yet")
        ids = mine
        mode = int(st.get("Seccomp", "0"))
        if mode == C["SECCOMP_MODE_STRICT"]:
            raise UcrError(f"process {pid} is in seccomp strict mode, which allows no restart")
        filters = []
        if mode == C["SECCOMP_MODE_FILTER"]:
            filters = _filters(t, pid, arch)
            if "Seccomp_filters" in st and int(st["Seccomp_filters"]) != len(filters):
                raise UcrError(f"thread {t.pid} of process {pid} has {st['Seccomp_filters']} seccomp filters "
                               f"but {len(filters)} could be read")
            t.call(C["PTRACE_SETOPTIONS"], 0, PTRACE_O_TRACESYSGOOD | C["PTRACE_O_SUSPEND_SECCOMP"],
                   what="suspending seccomp")
        out.append(dict(caps=[int(st[k], 16) for k in proc.CAP_SETS], no_new_privs=int(st.get("NoNewPrivs", "0")),
                        seccomp=mode, filters=filters))
    return out


def thread_records(state, securebits):
    """A thread's SECURITY record and its SECCOMP_FILTER records."""
    inh, prm, eff, bnd, amb = state["caps"]
    recs = [R.SECURITY.pack(cap_inheritable=inh, cap_permitted=prm, cap_effective=eff, cap_bounding=bnd,
                            cap_ambient=amb, securebits=securebits, no_new_privs=state["no_new_privs"],
                            seccomp=state["seccomp"], nr_filters=len(state["filters"]))]
    recs += [R.SECCOMP_FILTER.pack(index=i, flags=flags, tail=prog)
             for i, (flags, prog) in enumerate(state["filters"])]
    return recs


# Restart

def data_size(p):
    """Region bytes the plan of process p needs for its filters."""
    return sum(len(f["tail"]) + ffi.sizeof("struct ucr_filter") + 16
               for t in p.threads for f in t.get("SECCOMP_FILTER", []))


class Restore:
    def __init__(self, rst):
        self.rst = rst

    data_size = staticmethod(data_size)

    def prepare(self, plan, p):
        prepare_restore(self.rst, plan, p)


def prepare_restore(rst, plan, p):
    """The process's credentials, and each thread's capabilities,
    securebits, no_new_privs and filters into its plan (after its threads).
    Capabilities rstr does not have itself cannot be given: they are
    dropped with a warning, as rlimits are lowered. A user other than root
    keeps its credentials and drops only what rstr has beyond the image
    (rootless.py)."""
    c = p["CREDS"]
    for key in ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid"):
        setattr(plan, key, c[key])
    groups = c["tail"]
    root = os.geteuid() == 0
    if root:
        plan.restore_creds = 1
        plan.groups = rst.region.put(struct.pack(f"<{len(groups)}I", *groups)) if groups else 0
        plan.nr_groups = len(groups)
    # Otherwise the ids are rstr's own, as rootless.check_restart made sure.
    with open("/proc/sys/kernel/cap_last_cap") as f:
        plan.cap_last_cap = int(f.read())
    own_inh, own_prm, _, own_bnd, _ = proc.caps("self")
    sec = [t.get("SECURITY") for t in p.threads]
    filters = [[(f["flags"], f["tail"]) for f in t.get("SECCOMP_FILTER", [])] for t in p.threads]
    # Threads with the same filters share them (as after clone or TSYNC), so
    # that a later SECCOMP_FILTER_FLAG_TSYNC of the program still works.
    tsync = len(p.threads) > 1 and bool(filters[0]) and all(f == filters[0] for f in filters) \
        and len({s["no_new_privs"] for s in sec if s}) == 1
    threads = ffi.cast("struct ucr_thread *", plan.threads)
    lowered = False
    for k, s in enumerate(sec):
        if s is None:  # an image without this state: the thread keeps rstr's
            continue
        t = threads[k]
        want = [s[k] for k in rootless.CAP_FIELDS]
        if root:
            got = [want[0] & (own_inh | own_prm), want[1] & own_prm, want[2] & own_prm, want[3] & own_bnd,
                   want[4] & own_prm]
            lowered = lowered or got != want
            t.cap_inh, t.cap_prm, t.cap_eff, t.cap_bset, t.cap_amb = got
            t.restore_caps = 1
        else:  # rootless.check_restart made sure that want is rstr's own or less
            t.cap_inh, t.cap_prm, t.cap_eff, t.cap_bset, t.cap_amb = want
            t.restore_caps = 1  # rstr's own extra capabilities are dropped
        t.securebits, t.no_new_privs = s["securebits"], s["no_new_privs"]
        mine = filters[k] if not tsync else filters[0] if k == 0 else []
        flag = rst.arch.C["SECCOMP_FILTER_FLAG_TSYNC"] if tsync else 0

        def fill(f, item):
            f.flags, prog = item[0] | flag, item[1]
            f.insns, f.len = rst.region.put(prog), len(prog) // SOCK_FILTER.size
        t.filters, t.nr_filters = rst.region.array("ucr_filter", mine, fill)
    if lowered:
        rst.warn(f"warning: capabilities of process {p.pid} that rstr does not have itself were dropped")
