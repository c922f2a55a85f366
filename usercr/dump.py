"""The user engine's checkpoint: freeze a process tree with ptrace, read it,
write the image."""
import os
import time

from . import creds, epoll, eventfd, files, fs, incremental, inet, inotify, ipc, locks, memory, namespaces, pipes
from . import proc, rlimits
from . import signalfd, signals, tasks, threads, timerfd, timers, tty, unix
from . import tree as tree_mod
from . import records as R
from .arch import current as current_arch
from .errors import UcrError, log_nothing
from .image import ImageWriter, header_record
from .inject import ProcessDump, Session
from .native import lib
from .ptrace import Tracee

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
FREEZE_ROUNDS = 50
VFORK_WAIT = 0.01
VANISH_SETTLE = 0.2
EXIT_WAIT = 10  # for the tasks ckpt --kill killed to have exited
# Each kind of state, in image order. inject(ctx), where a module has it,
# runs inside the frozen task; dump(ctx) yields its records afterwards.
PROCESS_STATE = (tasks, creds, rlimits, fs, signals, timers, threads, files, locks, memory)
# Objects the tree shares, written after every process's records.
TREE_STATE = (pipes, tty, inotify, unix, inet, eventfd, timerfd, signalfd, epoll)


def _ancestors():
    pid, out = os.getpid(), set()
    while pid > 1:
        out.add(pid)
        pid = int(proc.stat_fields(pid)[4])
    return out


def validate_target(pid):
    if pid <= 0:
        raise UcrError(f"invalid PID {pid}")
    if not proc.exists(pid):
        raise UcrError(f"process {pid} does not exist")
    if pid in _ancestors():
        raise UcrError(f"process {pid} is ckpt itself or one of its parents")
    if proc.stat_fields(pid)[3] == "Z":
        raise UcrError(f"process {pid} is a zombie")


class FrozenTree:
    """Every thread of every process in the tree under root, seized and
    stopped before any of them is read. A task that forks or exits while the
    freeze is under way is caught by scanning again until nothing changes."""

    def __init__(self, root, arch, log):
        self.root, self.arch, self.log = root, arch, log
        self.tracees = {}   # tid -> Tracee
        self.order = []     # processes, parents before children
        self.zombies = set()

    def _scan(self):
        order, stack = [], [self.root]
        while stack:
            pid = stack.pop()
            order.append(pid)
            stack.extend(sorted(proc.children(pid), reverse=True))
        return order

    def _vforked(self, pid):
        """True while pid still shares its parent's memory: a vfork child
        before its exec. Frozen, it would keep its parent from ever stopping
        (the parent waits for it, deaf to PTRACE_INTERRUPT), so it is left to
        run to its exec and seized in a later round."""
        try:
            ppid = int(proc.stat_fields(pid)[4])
        except UcrError:
            return False
        return ppid > 1 and lib.ucr_kcmp(ppid, pid, self.arch.C["UCR_KCMP_VM"], 0, 0) == 0

    def freeze(self):
        vforked = []
        for _ in range(FREEZE_ROUNDS):
            order = self._scan()
            new, vforked = [], []
            for pid in order:
                if proc.state(pid) in ("Z", None):
                    self.zombies.add(pid)
                    continue
                if pid not in self.tracees and self._vforked(pid):
                    vforked.append(pid)
                    continue
                for tid in proc.threads(pid, missing_ok=True):
                    if tid not in self.tracees:
                        t = Tracee(tid, self.arch)
                        try:
                            attached = t.attach(missing_ok=pid != self.root)
                        except UcrError:
                            # A task that died meanwhile refuses with EPERM; the next scan sees its zombie.
                            if pid == self.root or proc.state(pid) not in ("Z", "X", None):
                                raise
                            attached = False
                        if attached:
                            self.tracees[tid] = t
                            new.append(t)
            for t in new:
                t.wait_interrupted()
            if not new and not vforked and order == self.order:
                self.zombies &= set(order)
                return
            if vforked and not new:
                time.sleep(VFORK_WAIT)
            self.order = order
        if vforked:
            raise UcrError(f"process {vforked[0]} shares the memory of its parent (vfork or CLONE_VM) and did "
                           "not exec or exit meanwhile; it cannot be checkpointed in that state")
        raise UcrError(f"the process tree of {self.root} keeps changing (forking or exiting); "
                       "it could not be frozen")

    def threads(self, pid):
        """The tracees of a process, its main thread first."""
        return [self.tracees[t] for t in sorted(proc.threads(pid), key=lambda t: (t != pid, t))]

    def vanished(self, settle=VANISH_SETTLE):
        """A process of the tree that died since it was frozen, or None. One
        that is still exiting has no state letter to show it yet, but has
        already lost its memory map; one killed a moment ago may not even
        have lost that, so a failure gives it `settle` seconds to show."""
        def gone(pid):
            try:
                return proc.state(pid) in (None, "Z", "X") or not proc.maps(pid)
            except UcrError:
                return True
        deadline = time.monotonic() + settle
        while True:
            found = next((pid for pid in self.order if pid not in self.zombies and gone(pid)), None)
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def wait_exited(self):
        """After the kill: until every process has exited (a zombie has closed
        its files and sockets, and its parent can reap it), so that rstr right
        after finds the ports free and its PIDs about to be."""
        deadline = time.monotonic() + EXIT_WAIT
        while any(proc.state(pid) not in ("Z", "X", None) for pid in self.order) and time.monotonic() < deadline:
            time.sleep(0.002)

    def release(self, kill=False):
        """Puts back what was changed and lets every task go (or kills the tree)."""
        errors = []
        for t in self.tracees.values():
            try:
                t.release(kill=kill)
            except UcrError as e:
                errors.append(e)
        if errors:
            raise errors[0]


def checkpoint(pid, out_fd, kill=False, log=log_nothing, complete=None, on_frozen=None, parent=None,
               pre_copy=False, ext_unix_sk=False, tcp_established=False, compress=False, stats=None):
    """Writes an image of the process tree rooted at pid to out_fd. On any
    failure every task is released unharmed and UcrError is raised.
    complete() runs once the image is on disk, before kill kills the tree
    (ckpt -o names the file there); on_frozen() once every task is stopped,
    before anything is read (self-checkpoint marks its image there).
    parent: the path of an image this one is incremental to; pre_copy: copy
    memory first while the tree runs (usercr/incremental.py); ext_unix_sk:
    Unix sockets connected outside the tree are saved to be reattached
    (unix.py); tcp_established: so are TCP connections (inet.py); compress:
    a zstd stream (compress.py); stats: a usercr.stats.Stats to fill in."""
    validate_target(pid)
    arch = current_arch()
    if parent and pre_copy:
        raise UcrError("--parent and --pre-copy cannot be combined yet")
    if compress and (parent or pre_copy):  # their images are read by offset, which a zstd stream has not
        raise UcrError("--compress cannot be combined with --parent or --pre-copy yet")
    inc = incremental.Parent(parent, log) if parent else None
    try:
        if pre_copy:
            inc = incremental.PreCopy(FrozenTree, pid, arch, log, out_fd)
            inc.rounds()
        shared = {"ext_unix_sk": ext_unix_sk, "tcp_established": tcp_established}  # what modules note of the tree
        _checkpoint(pid, arch, out_fd, kill, log, complete, on_frozen, inc, shared, compress, stats)
    finally:
        if inc:
            inc.close()


def _checkpoint(pid, arch, out_fd, kill, log, complete, on_frozen, inc, shared, compress, stats):
    tree = FrozenTree(pid, arch, log)

    def thawed(since):
        now = time.monotonic()
        log(f"frozen for {now - since:.3f} s")
        if stats:
            stats.frozen_at, stats.thawed_at = since, now

    done = released = False
    writer = ImageWriter(out_fd, compress)  # before the freeze: a missing libzstd stops nothing
    frozen = time.monotonic()
    try:
        tree.freeze()
        if on_frozen:
            on_frozen()
        log(f"froze {len(tree.order)} processes, {len(tree.tracees)} threads")
        writer.add(header_record(arch.ARCH_ID, PAGE_SIZE))
        writer.add(arch.dump_header())
        if isinstance(inc, incremental.Parent):
            writer.add(inc.record)
        try:
            _write_tree(tree, arch, writer, log, inc, shared)
        except (UcrError, OSError):  # /proc of a task that is going away fails in many ways
            gone = tree.vanished()
            if gone:
                raise UcrError(f"process {gone} exited during the checkpoint") from None
            raise
        if isinstance(inc, incremental.PreCopy):
            if not kill:  # every page is captured: the tree runs on while the image is completed
                inet.release(shared, killed=False)
                tree.release()
                released = True
                thawed(frozen)
            inc.materialize(writer)
        writer.finish()
        _sync(out_fd)
        if complete:
            complete()
        done = True
        log(f"image complete: {writer.offset} bytes")
    finally:
        writer.close()
        try:
            inet.release(shared, killed=kill and done)  # sockets out of repair mode, unless they die now
            if not released:
                try:
                    tree.release(kill=kill and done)
                finally:
                    thawed(frozen)
        finally:
            if stats:
                stats.pages_scanned, stats.pages_written = writer.pages_scanned, writer.pages_written
                stats.bytes_written = writer.offset
    if kill:
        tree.wait_exited()


def _sync(fd):
    try:
        os.fsync(fd)
    except OSError:
        pass  # pipes and ttys cannot be synced; the reader has what was written


def _write_tree(tree, arch, writer, log, inc, shared):
    ns = tree_mod.Namespace(tree.root, tree.order)
    tree_records = list(tree_mod.dump(tree.root, tree.order, ns))
    tree_mod.check(tree_records)  # before anything is killed: a tree rstr would refuse is refused now
    for rec in tree_records:
        writer.add(rec)
    for rec in namespaces.dump_records(tree.root, [p for p in tree.order if p not in tree.zombies]):
        writer.add(rec)
    ipc_records = ipc.dump_records(tree.root)
    for rec in ipc_records:
        writer.add(rec)
    shared["sysv"] = bool(ipc_records)
    memory_ranges = []
    for pid in tree.order:
        if pid in tree.zombies:
            writer.add(tasks.zombie_record(pid, ns))
            continue
        ctx = ProcessDump(tree.threads(pid), arch, ns, shared)
        _write_process(ctx, writer)
        memory_ranges.append((pid, ctx.ranges))
    for module in TREE_STATE:
        for rec in module.tree_records(shared):
            writer.add(rec)
    writer.flush()
    writer.add(R.PAGES_BEGIN.pack(nr_sections=len(memory_ranges), csum_a=writer.csum[0], csum_b=writer.csum[1]))
    if isinstance(inc, incremental.PreCopy):  # the sections are staged, completed from the copy after the freeze
        writer.flush()
        writer = ImageWriter(inc.stage)
    for pid, ranges in memory_ranges:
        log(f"copying memory of process {pid}: {len(ranges)} mappings")
        try:
            pagemap_fd = os.open(proc.path(pid, "pagemap"), os.O_RDONLY)
        except OSError as e:
            raise UcrError(f"cannot read the page map of process {pid}: {e.strerror}") from None
        try:
            base = inc.base(pid, ns(pid)) if inc else None
            writer.pages(pid, pagemap_fd, tree.tracees[pid].mem_fd, ranges, PAGE_SIZE, base)
        finally:
            os.close(pagemap_fd)
        writer.add(R.PAGES_END.pack(pid=ns(pid)))
    writer.flush()


def _write_process(ctx, writer):
    """Asks each kind of state its questions inside the frozen process, then
    writes its records; the memory map is read once the scratch page is gone."""
    pid = ctx.pid
    ctx.status, ctx.stat = proc.status(pid), proc.stat_fields(pid)
    for module in PROCESS_STATE:
        if hasattr(module, "before_inject"):
            ctx.injected[module.__name__.rsplit(".", 1)[1] + "_before"] = module.before_inject(ctx)
    with Session(ctx.threads, ctx.arch, proc.maps(pid)) as ctx.session:
        for module in PROCESS_STATE:
            if hasattr(module, "inject"):
                ctx.injected[module.__name__.rsplit(".", 1)[1]] = module.inject(ctx)
    ctx.session = None
    ctx.maps = proc.maps(pid)
    for module in PROCESS_STATE:
        for rec in module.dump(ctx):
            writer.add(rec)
