"""Self-checkpoint without ptrace, the helper's side (usercr-selfckpt
--inside DEST; the program's side is usercr/native/selfdump.c). Where
ptrace is missing (qemu-user) the program raises a signal on itself and,
in the handler, answers this helper: syscalls run in the program (answers
in a scratch buffer of its own, read back), its memory, and files as it sees
them (/proc/self/maps, stat and auxv, which qemu-user shows as the guest
sees them). The ucontext of that signal is the thread's state; a restored
copy comes back just after the raise. The image is the one ckpt writes.

What this path cannot do (refused): other threads, children, POSIX timers,
seccomp filters, x86_64 (its ucontext's XSAVE area is not read yet).
Signals pending meanwhile stay with the program and are not in the image."""
import os
import struct

from . import creds, files, fs, ipc, locks, memory, namespaces, proc, rlimits, tasks, timers
from . import records as R
from . import tree as tree_mod
from .arch import current as current_arch
from .dump import PAGE_SIZE, TREE_STATE
from .errors import UcrError
from .image import ImageWriter, header_record
from .inject import ProcessDump, Session

MAGIC = 0x55435253
HELLO = struct.Struct("<II8Q")   # struct self_hello
REQ = struct.Struct("<II7Q")     # struct self_req
INT64 = struct.Struct("<q")
VERDICT = struct.Struct("<ii")
OP_SYSCALL, OP_READ, OP_FILE = 1, 2, 3
MASK64 = 2**64 - 1
CHUNK = 1 << 20


class Program:
    """The program's answers: requests go to req_fd, answers come on rep_fd."""

    def __init__(self, req_fd, rep_fd):
        self.req_fd, self.rep_fd = req_fd, rep_fd

    def _read(self, n):
        buf = bytearray()
        while len(buf) < n:
            got = os.read(self.rep_fd, min(n - len(buf), CHUNK))
            if not got:
                raise UcrError("the program stopped answering")
            buf += got
        return bytes(buf)

    def _ask(self, op, *args, size=0):
        args = [a & MASK64 for a in args] + [0] * (7 - len(args))
        os.write(self.req_fd, REQ.pack(op, size, *args))

    def hello(self):
        magic, uc_size, *rest = HELLO.unpack(self._read(HELLO.size))
        if magic != MAGIC:
            raise UcrError("the program does not speak the self-checkpoint protocol of this usercr")
        return dict(zip(("scratch", "scratch_size", "pid", "tid", "tls", "fd0", "fd1", "exe_link"), rest)), \
            self._read(uc_size)

    def syscall(self, nr, *args):
        self._ask(OP_SYSCALL, nr, *args)
        return INT64.unpack(self._read(INT64.size))[0]

    def read(self, addr, n):
        self._ask(OP_READ, addr, n)
        return self._read(n)

    def file(self, path):
        data = path.encode()
        self._ask(OP_FILE, size=len(data))
        os.write(self.req_fd, data)
        out = bytearray()
        while True:
            n = INT64.unpack(self._read(INT64.size))[0]
            if n < 0:
                raise UcrError(f"the program cannot read {path}: {os.strerror(-n)}")
            if n == 0:
                return bytes(out)
            out += self._read(n)


class Tracee:
    """What the dump modules ask of a ptrace.Tracee, answered by the program."""

    stop_signal = 0

    def __init__(self, prog, tid):
        self.prog, self.pid = prog, tid

    def read(self, addr, n):
        return self.prog.read(addr, n)

    def syscall(self, nr, *args):
        return self.prog.syscall(nr, *args)


class InsideSession(Session):
    """inject.Session's questions, run by the program on its own scratch buffer."""

    def __init__(self, tracee, arch, scratch):
        self.threads, self.arch, self.main, self.pid = [tracee], arch, tracee, tracee.pid
        self.scratch = scratch


def under_qemu(pid):
    """qemu-user runs a helper thread of its own in every emulated process."""
    try:
        return "qemu-" in os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False


def _refuse_what_cannot_be_saved(pid):
    extra = 1 if under_qemu(pid) else 0
    if len(proc.threads(pid)) - extra > 1:
        raise UcrError("a multithreaded program cannot checkpoint itself without ptrace yet")
    if set(proc.children(pid)) - {os.getpid()}:
        raise UcrError("a program with children cannot checkpoint itself without ptrace yet")
    if proc.posix_timers(pid):
        raise UcrError("POSIX timers cannot be saved by a self-checkpoint without ptrace yet")


def _exe(ctx, hello):
    """The executable as the program sees it: its /proc/PID/exe names qemu
    for the helper under qemu-user."""
    s = ctx.session
    n = s.call(ctx.main, "reading /proc/self/exe", "readlinkat", ctx.arch.C["AT_FDCWD"], hello["exe_link"],
               s.scratch, hello["scratch_size"])
    return s.read(ctx.main, n).decode(errors="surrogateescape")


def _signals(ctx):
    """The 64 actions; one the program's emulator keeps for itself reads as SIG_DFL."""
    s, out = ctx.session, []
    for sig in range(1, 65):
        r = s.syscall(ctx.main, "rt_sigaction", sig, 0, s.scratch, 8)
        out.append(ctx.arch.unpack_ksigaction(s.read(ctx.main, ctx.arch.KSIGACTION_SIZE)) if r == 0 else (0, 0, 0, 0))
    return R.SIGHAND.pack(actions=[v for a in out for v in a])


def _thread(ctx, hello, uc):
    s, C, t = ctx.session, ctx.arch.C, ctx.main
    s.call(t, "reading the signal stack", "sigaltstack", 0, s.scratch)
    sp, ss_flags, ss_size = ctx.arch.unpack_stack_t(s.read(t, ctx.arch.STACK_T_SIZE))
    tid_address = s.longs(t, 1)[0] if s.syscall(t, "prctl", C["PR_GET_TID_ADDRESS"], s.scratch) == 0 else 0
    robust = s.longs(t, 2) if s.syscall(t, "get_robust_list", 0, s.scratch, s.scratch + 8) == 0 else (0, 0)
    cpu, blocked = ctx.arch.inside_cpu(uc, hello["tls"])
    yield R.THREAD.pack(tid=ctx.ns.thread(hello["tid"]), altstack_sp=sp, altstack_flags=ss_flags,
                        altstack_size=ss_size, blocked=blocked, clear_child_tid=tid_address & MASK64,
                        robust_list=robust[0] & MASK64, robust_len=robust[1])
    yield from cpu
    yield from creds.thread_dump(ctx, 0)


def _memory(ctx, prog, brk, auxv):
    """MM, VMA and SPECIAL_DATA records from the program's own view of itself."""
    ctx.maps = proc.parse_maps(prog.file("/proc/self/maps").decode())
    sizes = ctx.tree.setdefault("mapped_sizes", {})
    for m in ctx.maps:  # by path: /proc/PID/map_files has the emulator's (host) addresses under qemu-user
        if m.name.startswith("/") and not m.name.startswith(("/memfd:", "/SYSV")) and not m.deleted \
                and (m.dev, m.inode) not in sizes:
            sizes[(m.dev, m.inode)] = memory._size_by_path(ctx.pid, m)
    vmas, specials, ctx.ranges = memory._vmas(ctx, sysv=ctx.tree["sysv"])
    sf = prog.file("/proc/self/stat").decode().rsplit(")", 1)[1].split()
    f = lambda n: int(sf[n - 3]) & MASK64  # noqa: E731 (1-based proc(5) numbers, after pid and comm)
    mm = dict(start_code=f(26), end_code=f(27), start_stack=f(28), start_data=f(45), end_data=f(46),
              start_brk=f(47), brk=brk, arg_start=f(48), arg_end=f(49), env_start=f(50), env_end=f(51)) \
        if len(sf) >= 49 else dict(start_stack=f(28), brk=brk)
    return [R.MM.pack(nr_vmas=len(vmas), tail=auxv, **mm)] + vmas + specials


def _pages(writer, prog, ctx, pid):
    """PAGES records: anonymous memory without its zero pages, private file
    mappings whole (which pages the program changed is not known here)."""
    readable = {(m.start, m.end) for m in ctx.maps if "r" in m.perms}
    zero = bytes(PAGE_SIZE)
    for start, end, mode in ctx.ranges:
        if (start, end) not in readable:
            continue
        for at in range(start, end, CHUNK):
            data = prog.read(at, min(CHUNK, end - at))
            pages = [data[i:i + PAGE_SIZE] for i in range(0, len(data), PAGE_SIZE)]
            run = []
            for k, page in enumerate(pages + [None]):
                if page is not None and (page != zero or mode != memory.lib.UCR_DUMP_ANON):
                    run.append(page)
                    continue
                if run:
                    first = at + (k - len(run)) * PAGE_SIZE
                    writer.add(R.PAGES.pack(vaddr=first, nr_pages=len(run), tail=b"".join(run)))
                    run = []
    writer.add(R.PAGES_END.pack(pid=ctx.ns(pid)))


def dump(prog, out_fd):
    """Writes the image of the program at the other end of prog."""
    arch = current_arch()
    hello, uc = prog.hello()
    pid = hello["pid"]
    prog.pid = pid
    if not hasattr(arch, "inside_cpu"):
        raise UcrError(f"self-checkpoint without ptrace is not available on {arch.NAME} yet")
    _refuse_what_cannot_be_saved(pid)
    ns = tree_mod.Namespace(pid, [pid])
    shared = {"ext_unix_sk": False, "tcp_established": False}
    main = Tracee(prog, hello["tid"])
    ctx = ProcessDump([main], arch, ns, shared)
    ctx.hidden_fds = {hello["fd0"], hello["fd1"]}
    ctx.status, ctx.stat = proc.status(pid), proc.stat_fields(pid)
    ctx.session = InsideSession(main, arch, hello["scratch"])
    ctx.injected["creds_before"] = creds.before_inject(ctx)
    for module in (tasks, creds, timers):
        ctx.injected[module.__name__.rsplit(".", 1)[1]] = module.inject(ctx)
    brk = prog.syscall(arch.SYSCALLS["brk"], 0) & MASK64
    auxv = prog.file("/proc/self/auxv")
    exe = _exe(ctx, hello)

    writer = ImageWriter(out_fd)
    writer.add(header_record(arch.ARCH_ID, PAGE_SIZE))
    writer.add(arch.dump_header())
    tree_records = list(tree_mod.dump(pid, [pid], ns))
    tree_mod.check(tree_records)
    for rec in tree_records + list(namespaces.dump_records(pid, [pid])):
        writer.add(rec)
    ipc_records = ipc.dump_records(pid)
    for rec in ipc_records:
        writer.add(rec)
    shared["sysv"] = bool(ipc_records)
    records = [tasks.task_record(ctx, exe)]
    records += getattr(arch, "inside_process", lambda exe, brk: [])(exe, brk)
    for module in (creds, rlimits, fs):
        records += module.dump(ctx)
    records.append(_signals(ctx))
    records += timers.dump(ctx)
    records += _thread(ctx, hello, uc)
    records += files.dump(ctx)
    records += locks.dump(ctx)
    records += _memory(ctx, prog, brk, auxv)
    for rec in records:
        writer.add(rec)
    for module in TREE_STATE:
        for rec in module.tree_records(shared):
            writer.add(rec)
    writer.flush()
    writer.add(R.PAGES_BEGIN.pack(nr_sections=1, csum_a=writer.csum[0], csum_b=writer.csum[1]))
    _pages(writer, prog, ctx, pid)
    writer.finish()
    os.fsync(out_fd)


def inside_main(dest):
    """usercr-selfckpt --inside DEST: questions on stdout, answers on stdin;
    once the program is let go, the verdict (errno, length, reason) on stdout."""
    from .safeio import AtomicFile
    prog = Program(os.dup(1), os.dup(0))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    err, msg = 0, ""
    try:
        with AtomicFile(dest, 0o600, replace=True) as out:
            try:
                dump(prog, out.fd)
            finally:
                os.write(prog.req_fd, REQ.pack(4, 0, *[0] * 7))  # OP_END: the program goes on
            out.commit()
    except UcrError as e:
        err, msg = 5, f"self-checkpoint: {e}"
    except OSError as e:
        err, msg = e.errno or 5, f"self-checkpoint: {e.strerror or e}"
    except Exception as e:  # the program must hear of any failure
        err, msg = 5, f"self-checkpoint: internal error: {type(e).__name__}: {e}"
    data = msg.encode()[:240]
    try:
        os.write(prog.req_fd, VERDICT.pack(err, len(data)) + data)
    except OSError:
        pass
    return 0 if not err else 1
