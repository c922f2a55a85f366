"""The user engine's checkpoint: freeze a process tree with ptrace, read it,
write the image."""
import os
import stat
import struct

from . import ipc
from . import proc
from . import records as R
from .arch import current as current_arch
from .errors import UcrError
from .image import ImageWriter, header_record
from .native import ffi, lib
from .ptrace import Tracee

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_GROWSDOWN = 0x01, 0x02, 0x20, 0x0100
TTY_MAJORS = set(range(136, 144)) | {4, 5}
PTS_MAJORS = range(136, 144)
PTMX = os.makedev(5, 2)
UNCATCHABLE = (9, 19)  # SIGKILL, SIGSTOP
PR_GET_PDEATHSIG, PR_GET_TID_ADDRESS = 2, 40
KCMP_FILE = 0
FREEZE_ROUNDS = 50
LONG = struct.Struct("<q" if ffi.sizeof("long") == 8 else "<i")


def log_nothing(msg):
    pass


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

    def freeze(self):
        for _ in range(FREEZE_ROUNDS):
            order = self._scan()
            new = []
            for pid in order:
                if proc.state(pid) in ("Z", None):
                    self.zombies.add(pid)
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
            if not new and order == self.order:
                self.zombies &= set(order)
                return
            self.order = order
        raise UcrError(f"the process tree of {self.root} keeps changing (forking or exiting); "
                       "it could not be frozen")

    def threads(self, pid):
        """The tracees of a process, its main thread first."""
        return [self.tracees[t] for t in sorted(proc.threads(pid), key=lambda t: (t != pid, t))]

    def vanished(self):
        """A process of the tree that died since it was frozen, or None. One
        that is still exiting has no state letter to show it yet, but has
        already lost its memory map."""
        def gone(pid):
            try:
                return proc.state(pid) in (None, "Z", "X") or not proc.maps(pid)
            except UcrError:
                return True
        return next((pid for pid in self.order if pid not in self.zombies and gone(pid)), None)

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


def checkpoint(pid, out_fd, kill=False, log=log_nothing, complete=None):
    """Writes an image of the process tree rooted at pid to out_fd. On any
    failure every task is released unharmed and UcrError is raised.
    complete() runs once the image is on disk, before kill kills the tree
    (ckpt -o names the file there)."""
    validate_target(pid)
    arch = current_arch()
    tree = FrozenTree(pid, arch, log)
    done = False
    try:
        tree.freeze()
        log(f"froze {len(tree.order)} processes, {len(tree.tracees)} threads")
        writer = ImageWriter(out_fd)
        writer.add(header_record(arch.ARCH_ID, PAGE_SIZE))
        writer.add(arch.dump_header())
        try:
            _write_tree(tree, arch, writer, log)
        except (UcrError, OSError):  # /proc of a task that is going away fails in many ways
            gone = tree.vanished()
            if gone:
                raise UcrError(f"process {gone} exited during the checkpoint") from None
            raise
        writer.finish()
        _sync(out_fd)
        if complete:
            complete()
        done = True
        log(f"image complete: {writer.offset} bytes")
    finally:
        tree.release(kill=kill and done)


def _sync(fd):
    try:
        os.fsync(fd)
    except OSError:
        pass  # pipes and ttys cannot be synced; the reader has what was written


class Namespace:
    """Translates this namespace's PIDs to the tree's: the tree's PID
    namespace is its root's; ids outside the tree become 0."""

    def __init__(self, root, pids):
        depth = len(proc.nspids(root))
        self.own = depth > len(proc.nspids("self"))
        self.map = {}
        for pid in pids:
            ns = proc.nspids(pid)
            if len(ns) != depth:
                raise UcrError(f"process {pid} is in a nested PID namespace; that cannot be checkpointed yet")
            self.map[pid] = ns[-1]
        self.inner = set(self.map.values())

    def leader(self, v):
        """A session or group id as the tree's namespace sees it: a process of
        the tree, 0 for one led from outside the tree, or kept as it is when
        its leader is gone (restart then recreates one for it)."""
        if v == 0 or v in self.inner:
            return v
        if self.own:  # every process of the tree's own namespace is in the tree
            return v
        return 0 if proc.exists(v) else v

    def __call__(self, pid):
        return self.map.get(pid, 0)

    @staticmethod
    def thread(tid):
        return proc.nspids(tid)[-1]


def _write_tree(tree, arch, writer, log):
    ns = Namespace(tree.root, tree.order)
    writer.add(R.TREE.pack(nr_tasks=len(tree.order), root_pid=ns(tree.root)))
    for pid in tree.order:
        st = proc.status(pid)
        ppid = int(st["PPid"])
        writer.add(R.PIDS.pack(pid=ns(pid), tgid=ns(pid), ppid=ns(ppid) if pid != tree.root else 0,
                               pgid=ns.leader(int(st["NSpgid"].split()[-1])),
                               sid=ns.leader(int(st["NSsid"].split()[-1]))))
    ipc_records = ipc.dump_records(tree.root, tree.order)
    for rec in ipc_records:
        writer.add(rec)
    files = FileTable()
    memory = []
    for pid in tree.order:
        if pid in tree.zombies:
            writer.add(_zombie_record(pid, ns))
            continue
        ranges = _write_process(tree.threads(pid), arch, writer, files, ns, sysv=bool(ipc_records))
        memory.append((pid, ranges))
    for rec in files.pipe_records() + files.tty_records():
        writer.add(rec)
    writer.flush()
    writer.add(R.PAGES_BEGIN.pack(nr_sections=len(memory), csum_a=writer.csum[0], csum_b=writer.csum[1]))
    for pid, ranges in memory:
        log(f"copying memory of process {pid}: {len(ranges)} mappings")
        main = tree.tracees[pid]
        try:
            pagemap_fd = os.open(proc.path(pid, "pagemap"), os.O_RDONLY)
        except OSError as e:
            raise UcrError(f"cannot read the page map of process {pid}: {e.strerror}") from None
        try:
            writer.pages(pid, pagemap_fd, main.mem_fd, ranges, PAGE_SIZE)
        finally:
            os.close(pagemap_fd)
        writer.add(R.PAGES_END.pack(pid=ns(pid)))


def _zombie_record(pid, ns):
    sf = proc.stat_fields(pid)
    return R.TASK.pack(pid=ns(pid), exit_signal=int(sf[38]), comm=sf[2][:15], zombie=1,
                       exit_status=int(sf[52]) if len(sf) > 52 else 0, nr_threads=0)


def _code_mapping(pid, maps):
    code = next((m for m in maps if "x" in m.perms and not m.special and m.name != "[stack]"), None)
    if code is None:
        raise UcrError(f"process {pid} has no executable mapping to run syscalls from")
    return code.start


def _call(tracee, what, nr, *args):
    r = tracee.syscall(nr, *args)
    if r < 0:
        raise UcrError(f"{what} of process {tracee.pid}: {os.strerror(-r)}")
    return r


def _injected_state(threads, arch, maps):
    """State only the tasks themselves can tell, read by syscalls run inside
    them: signal actions, brk, itimers, POSIX timers, pdeathsig (process);
    sigaltstack, clear_child_tid, robust list (each thread)."""
    main = threads[0]
    pid = main.pid
    st = proc.status(pid)
    interesting = proc.sigmask(st["SigCgt"]) | proc.sigmask(st["SigIgn"])
    nr = arch.SYSCALLS
    code = _code_mapping(pid, maps)
    word = LONG.size
    main.prepare_injection(code)
    for t in threads[1:]:
        t.prepare_injection(code, poke=False)
    out = {"threads": []}
    try:
        scratch = main.syscall(nr["mmap"], 0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if scratch < 0:
            raise UcrError(f"mmap inside process {pid} failed: {os.strerror(-scratch)}")
        actions = []
        for sig in range(1, 65):
            if sig in UNCATCHABLE or not interesting >> (sig - 1) & 1:
                actions.append((0, 0, 0, 0))
                continue
            _call(main, f"reading the action of signal {sig}", nr["rt_sigaction"], sig, 0, scratch, 8)
            actions.append(arch.unpack_ksigaction(main.read(scratch, arch.KSIGACTION_SIZE)))
        out["actions"] = actions
        out["brk"] = main.syscall(nr["brk"], 0)
        _call(main, "reading pdeathsig", nr["prctl"], PR_GET_PDEATHSIG, scratch)
        out["pdeathsig"] = struct.unpack("<i", main.read(scratch, 4))[0]
        itimers = []
        for which in range(3):
            _call(main, "reading an interval timer", nr["getitimer"], which, scratch)
            itimers += [LONG.unpack(main.read(scratch + i * word, word))[0] for i in range(4)]
        out["itimers"] = itimers
        timers = []
        for t in proc.posix_timers(pid):
            _call(main, f"reading POSIX timer {t['id']}", nr["timer_gettime"], t["id"], scratch)
            v = [LONG.unpack(main.read(scratch + i * word, word))[0] for i in range(4)]
            timers.append(dict(t, interval_ns=v[0] * 10**9 + v[1], value_ns=v[2] * 10**9 + v[3]))
        out["timers"] = timers
        for t in threads:
            _call(t, "reading the signal stack", nr["sigaltstack"], 0, scratch)
            altstack = arch.unpack_stack_t(t.read(scratch, arch.STACK_T_SIZE))
            r = t.syscall(nr["prctl"], PR_GET_TID_ADDRESS, scratch)
            tid_address = LONG.unpack(t.read(scratch, word))[0] & ((1 << 8 * word) - 1) if r == 0 else 0
            _call(t, "reading the robust futex list", nr["get_robust_list"], 0, scratch, scratch + word)
            head, size = (LONG.unpack(t.read(scratch + i * word, word))[0] for i in range(2))
            out["threads"].append(dict(altstack=altstack, clear_child_tid=tid_address,
                                       robust_list=head & ((1 << 8 * word) - 1), robust_len=size))
        main.syscall(nr["munmap"], scratch, PAGE_SIZE)
    finally:
        for t in threads[1:]:
            t.end_injection()
        main.end_injection()
    return out


class FileTable:
    """Open file descriptions across the tree: fds that share one (dup, fork)
    get one file_id, found with kcmp; and the pipes and FIFOs they name."""

    def __init__(self):
        self.descs = []      # (pid, fd, dev, ino, file_id)
        self.pipes = {}      # ino -> (pid, fd) to read its buffered data from
        self.ptys = {}       # index -> (pid, fd) of a master the tree holds
        self.sizes = {}      # (dev, ino) -> size of a mapped file

    def file_id(self, pid, fd, st):
        for opid, ofd, dev, ino, fid in self.descs:
            if (dev, ino) == (st.st_dev, st.st_ino) and lib.ucr_kcmp(pid, opid, KCMP_FILE, fd, ofd) == 0:
                return fid
        fid = len({d[4] for d in self.descs}) + 1
        self.descs.append((pid, fd, st.st_dev, st.st_ino, fid))
        return fid

    def note_pipe(self, pid, fd, ino):
        self.pipes.setdefault(ino, (pid, fd))

    def note_pty_master(self, pid, fd, index):
        self.ptys.setdefault(index, (pid, fd))

    def tty_records(self):
        return [_tty_record(index, pid, fd) for index, (pid, fd) in self.ptys.items()]

    def pipe_records(self):
        out = []
        for ino, (pid, fd) in self.pipes.items():
            try:
                peek = os.open(proc.path(pid, "fd", str(fd)), os.O_RDONLY | os.O_NONBLOCK)
            except OSError as e:
                raise UcrError(f"cannot open the pipe at fd {fd} of process {pid}: {e.strerror}") from None
            try:
                capacity = lib.ucr_pipe_capacity(peek)
                buf = ffi.new("char[]", max(capacity, 1))
                n = lib.ucr_pipe_peek(peek, buf, capacity)
            finally:
                os.close(peek)
            if n < 0:
                raise UcrError(f"reading the data buffered in the pipe at fd {fd} of process {pid}: "
                               f"{os.strerror(-n)}")
            out.append(R.PIPE.pack(ino=ino, capacity=capacity, tail=bytes(ffi.buffer(buf, n))))
        return out


def pts_index(rdev):
    return (os.major(rdev) - PTS_MAJORS[0]) * 256 + os.minor(rdev)


def _drain(fd):
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            return out
        if not chunk:
            return out
        out += chunk


def quiet_termios(modes):
    """The struct termios modes with echo and output processing off, for
    putting queued terminal data back without processing it twice."""
    import termios
    quiet = bytearray(modes)
    iflag, oflag, cflag, lflag = struct.unpack_from("<4I", quiet)
    struct.pack_into("<4I", quiet, 0, iflag, oflag & ~termios.OPOST, cflag, lflag & ~termios.ECHO)
    return bytes(quiet)


def _tty_record(index, pid, fd):
    """Modes, window size and queued data of a pseudo-terminal. The queues
    can only be read by consuming them, so they are read from both ends and
    written straight back, with echo and output processing off meanwhile."""
    import fcntl
    import termios
    try:
        slave = os.open(f"/dev/pts/{index}", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise UcrError(f"cannot open /dev/pts/{index} (fd {fd} of process {pid}): {e.strerror}") from None
    master = lib.ucr_pidfd_getfd(pid, fd)
    if master < 0:
        os.close(slave)
        raise UcrError(f"cannot reach the terminal master at fd {fd} of process {pid}: {os.strerror(-master)}")
    try:
        modes = fcntl.ioctl(slave, termios.TCGETS, bytes(64))
        winsize = fcntl.ioctl(slave, termios.TIOCGWINSZ, bytes(8))
        status = fcntl.fcntl(master, fcntl.F_GETFL)  # the target's own open file description
        fcntl.fcntl(master, fcntl.F_SETFL, status | os.O_NONBLOCK)
        try:
            fcntl.ioctl(slave, termios.TCSETS, quiet_termios(modes))
            to_slave, to_master = _drain(slave), _drain(master)
            os.write(master, to_slave)
            os.write(slave, to_master)
        finally:
            fcntl.ioctl(slave, termios.TCSETS, modes)
            fcntl.fcntl(master, fcntl.F_SETFL, status)
    finally:
        os.close(slave)
        os.close(master)
    return R.TTY.pack(index=index, input_len=len(to_slave), output_len=len(to_master),
                      termios=struct.unpack("<8Q", modes), winsize=struct.unpack("<Q", winsize)[0],
                      tail=to_slave + to_master)


def _file_record(pid, fd, target, info, files):
    try:
        st = os.stat(proc.path(pid, "fd", str(fd)))
    except FileNotFoundError:
        raise UcrError(f"fd {fd} of process {pid} vanished") from None
    flags = int(info.get("flags", "0"), 8)
    cloexec = 1 if flags & os.O_CLOEXEC else 0
    common = dict(fd=fd, flags=flags & ~os.O_CLOEXEC, fd_flags=cloexec, pos=int(info.get("pos", 0)),
                  mode=st.st_mode, dev=st.st_dev, ino=st.st_ino, rdev=st.st_rdev, size=st.st_size)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == PTMX:
        kind = 7
        common["size"] = int(info["tty-index"])
        files.note_pty_master(pid, fd, common["size"])
    elif stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in PTS_MAJORS:
        kind = 8
        common["size"] = pts_index(st.st_rdev)
    elif stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in TTY_MAJORS:
        kind = 3
    elif stat.S_ISREG(st.st_mode):
        kind = 0
    elif stat.S_ISDIR(st.st_mode):
        kind = 1
    elif stat.S_ISCHR(st.st_mode):
        kind = 2
    elif stat.S_ISFIFO(st.st_mode):
        kind = 4 if target.startswith("pipe:") else 6
        files.note_pipe(pid, fd, st.st_ino)
    elif stat.S_ISSOCK(st.st_mode):
        kind = 5
    else:
        raise UcrError(f"fd {fd} of process {pid} ({target}) is of a type that cannot be checkpointed yet")
    if kind in (0, 1, 2, 6) and target.endswith(" (deleted)"):
        raise UcrError(f"fd {fd} of process {pid} refers to deleted file {target[:-10]}")
    if kind in (3, 5) and fd > 2:
        raise UcrError(f"fd {fd} of process {pid} is a {R.FILE_KINDS[kind]} ({target}); "
                       "only standard input/output/error may be one yet")
    return R.FILE.pack(kind=kind, tail=target, file_id=files.file_id(pid, fd, st), **common)


def _mapped_size(pid, m, sizes):
    """The size of a mapped file, stat'ed once per file for the whole tree
    (every process maps the same libraries)."""
    key = (m.dev, m.inode)
    if key not in sizes:
        try:
            sizes[key] = os.stat(proc.path(pid, "map_files", f"{m.start:x}-{m.end:x}")).st_size
        except OSError as e:
            raise UcrError(f"cannot stat {m.name} mapped by process {pid}: {e.strerror}") from None
    return sizes[key]


def _vma_records(tracee, maps, sysv, sizes):
    """VMA and SPECIAL_DATA records, and the page ranges to copy. With sysv,
    SysV shared memory is saved with its segment and attached again."""
    pid = tracee.pid
    vmas, specials, ranges = [], [], []
    for m in maps:
        if m.name in tracee.arch.GATE_MAPPINGS:
            continue
        flags = MAP_SHARED if m.shared else MAP_PRIVATE
        fields = dict(start=m.start, end=m.end, prot=m.prot, offset=m.offset)
        name = m.name
        if m.special:
            kind = 2
            if m.name == "[vdso]":
                specials.append(R.SPECIAL_DATA.pack(vaddr=m.start, tail=tracee.read(m.start, m.end - m.start)))
        elif sysv and m.name.startswith("/SYSV"):
            kind = 4
            fields.update(dev=m.dev, ino=m.inode)  # the inode number is the shmid
            if m.offset:
                raise UcrError(f"process {pid} maps part of SysV shared memory {m.inode}; that cannot be "
                               "checkpointed yet")
        elif m.name in ("", "[heap]", "[stack]") or m.name.startswith("[anon:") or not m.name.startswith("/"):
            kind = 0
            flags |= MAP_ANONYMOUS | (MAP_GROWSDOWN if m.name == "[stack]" else 0)
            ranges.append((m.start, m.end, lib.UCR_DUMP_ANON))
        elif m.deleted or m.name.startswith(("/memfd:", "/SYSV", "/dev/zero")):
            # Backing object cannot be reopened by path: keep the contents. A
            # shared one is one object for every process that maps it (dev, ino).
            kind = 3 if m.shared else 0
            flags |= MAP_ANONYMOUS
            fields.update(dev=m.dev, ino=m.inode)
            ranges.append((m.start, m.end, lib.UCR_DUMP_ANON))
        else:
            kind = 1
            fields.update(dev=m.dev, ino=m.inode, size=_mapped_size(pid, m, sizes))
            if not m.shared:
                ranges.append((m.start, m.end, lib.UCR_DUMP_FILE_PRIVATE))
        vmas.append(R.VMA.pack(kind=kind, flags=flags, tail=name, **fields))
    return vmas, specials, ranges


def _write_process(threads, arch, writer, files, ns, sysv):
    """Writes one process's records; returns the page ranges to copy later."""
    main = threads[0]
    pid = main.pid
    injected = _injected_state(threads, arch, proc.maps(pid))
    maps = proc.maps(pid)
    st = proc.status(pid)
    sf = proc.stat_fields(pid)
    pgid, tty_nr, tpgid = int(sf[5]), int(sf[7]), int(sf[8])
    mm = dict(start_code=int(sf[26]), end_code=int(sf[27]), start_stack=int(sf[28]),
              start_data=int(sf[45]), end_data=int(sf[46]), start_brk=int(sf[47]), brk=injected["brk"],
              arg_start=int(sf[48]), arg_end=int(sf[49]), env_start=int(sf[50]), env_end=int(sf[51]))
    uids = [int(x) for x in st["Uid"].split()]
    gids = [int(x) for x in st["Gid"].split()]
    groups = [int(x) for x in st.get("Groups", "").split()]

    writer.add(R.TASK.pack(pid=ns(pid), exit_signal=int(sf[38]), pdeathsig=injected["pdeathsig"], comm=sf[2][:15],
                           personality=int(proc.read_text(pid, "personality"), 16),
                           tty_nr=tty_nr, ctty_fg=1 if tty_nr and tpgid == pgid else 0,
                           nr_threads=len(threads), tail=proc.readlink(pid, "exe")))
    writer.add(R.CREDS.pack(uid=uids[0], euid=uids[1], suid=uids[2], fsuid=uids[3],
                            gid=gids[0], egid=gids[1], sgid=gids[2], fsgid=gids[3], tail=groups))
    writer.add(R.RLIMITS.pack(limits=[v & (2**64 - 1) for lim in proc.rlimits(pid) for v in lim]))
    writer.add(R.FS.pack(umask=int(st.get("Umask", "0022"), 8),
                         tail=[proc.readlink(pid, "cwd"), proc.readlink(pid, "root")]))
    writer.add(R.SIGHAND.pack(actions=[v for a in injected["actions"] for v in a]))
    writer.add(R.SIGNAL.pack(itimers=[v & (2**64 - 1) for v in injected["itimers"]]))
    for t in injected["timers"]:
        writer.add(R.POSIX_TIMER.pack(**dict(t, notify_tid=ns.thread(t["notify_tid"]) if t["notify_tid"] else 0)))
    for rec in getattr(arch, "dump_process", lambda t: [])(main):
        writer.add(rec)
    for t, extra in zip(threads, injected["threads"]):
        rseq = t.rseq_configuration() or (0, 0, 0)
        tst = proc.status(t.pid)
        sp, ss_flags, ss_size = extra["altstack"]
        writer.add(R.THREAD.pack(tid=ns.thread(t.pid), rseq_ptr=rseq[0], rseq_len=rseq[1], rseq_sig=rseq[2],
                                 altstack_sp=sp, altstack_flags=ss_flags, altstack_size=ss_size,
                                 blocked=proc.sigmask(tst["SigBlk"]), clear_child_tid=extra["clear_child_tid"],
                                 robust_list=extra["robust_list"], robust_len=extra["robust_len"]))
        for rec in arch.dump_cpu(t):
            writer.add(rec)
        for info in t.pending_signals(False):
            writer.add(R.SIGPENDING.pack(shared=0, signo=int.from_bytes(info[:4], "little"), tail=info))
    for info in main.pending_signals(True):
        writer.add(R.SIGPENDING.pack(shared=1, signo=int.from_bytes(info[:4], "little"), tail=info))
    for fd, target, info in proc.fds(pid):
        writer.add(_file_record(pid, fd, target, info, files))
    vmas, specials, ranges = _vma_records(main, maps, sysv, files.sizes)
    writer.add(R.MM.pack(nr_vmas=len(vmas), tail=proc.read_bytes(pid, "auxv"), **mm))
    for rec in vmas + specials:
        writer.add(rec)
    return ranges
