"""Open file descriptors (FILE records). Each kind of fd is owned by one
module: this one for regular files, directories, character devices and the
standard-stream sockets; pipes.py for pipes and FIFOs; tty.py for terminals;
epoll.py for epoll instances.
An owner module gives `KINDS`, `classify(ctx, st, target, info)` (the kind, or
None), `note(ctx, fd, st, info, fields)` at checkpoint, and a Restore part
with `open(rec)`. A new kind of fd is one module and one entry in OWNERS.
rstr imports an owner only when the image has an fd it may own (owner()).

Descriptors that share one open file description across the tree (dup,
fork) get one file_id, found with kcmp, and share one again after restart.
Standard streams on something that is not the tree's own (a terminal, a
socket, a pipe the tree holds only one end of) follow rstr's, fd by fd."""
import importlib
import os
import stat

from . import proc
from . import records as R
from . import trust
from .errors import UcrError
from .native import lib

K = R.FD_KINDS
# The owner modules, by name; the socket ones, dearest to import, last.
OWNERS = ("tty", "pipes", "inotify", "eventfd", "timerfd", "signalfd", "epoll", "unix", "inet")
STD_STREAMS = 3


OWN_KINDS = (K.REG, K.DIR, K.CHR, K.SOCKET)  # this module's (a socket: a standard stream)


def owners():
    """The owner modules, each imported when the walk reaches it."""
    for name in OWNERS:
        yield importlib.import_module(f"{__package__}.{name}")


def owner(kind):
    """The name of the module that owns fd kind, or None for this module's own."""
    if kind in OWN_KINDS:
        return None
    return next((m.__name__.rsplit(".", 1)[1] for m in owners() if kind in m.KINDS), None)


def _classify(ctx, st, target, info):
    for module in owners():
        kind = module.classify(ctx, st, target, info)
        if kind is not None:
            return kind, module
    if stat.S_ISREG(st.st_mode):
        return K.REG, None
    if stat.S_ISDIR(st.st_mode):
        return K.DIR, None
    if stat.S_ISCHR(st.st_mode):
        return K.CHR, None
    if stat.S_ISSOCK(st.st_mode):
        return K.SOCKET, None
    return None, None


def _socket_family(pid, fd):
    """The address family of a socket of another process (netlink, packet...), for a refusal."""
    import socket
    copy = lib.ucr_pidfd_getfd(pid, fd)
    if copy < 0:
        return "?"
    with socket.socket(fileno=copy) as s:
        dom = s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
    try:
        return socket.AddressFamily(dom).name[3:].lower()
    except ValueError:
        return f"family {dom}"


def file_id(ctx, fd, st):
    """The tree-wide id of the open file description fd of ctx's process is on."""
    descs = ctx.tree.setdefault("descs", [])   # (pid, fd, dev, ino, file_id), one per file_id
    same = ctx.tree.setdefault("descs_by_inode", {}).setdefault((st.st_dev, st.st_ino), [])  # so not O(fds²)
    pid, kcmp_file = ctx.pid, ctx.arch.C["UCR_KCMP_FILE"]
    for opid, ofd, fid in same:
        if lib.ucr_kcmp(pid, opid, kcmp_file, fd, ofd) == 0:
            return fid
    fid = len(descs) + 1
    descs.append((pid, fd, st.st_dev, st.st_ino, fid))
    same.append((pid, fd, fid))
    return fid


def _proc_path(ctx, fd, target, st):
    """The path to save for a file under /proc: a file of the process's own
    entry as /proc/self/... (its PID may change); another process's entry is
    refused, as reopening it by number could name another process."""
    parts = target.split("/")
    at = next((i for i, part in enumerate(parts) if part.isdigit()), None)  # /proc's PID directory
    if at is None:
        return target
    if st.st_dev != os.stat(proc.path(ctx.pid)).st_dev:
        if "/".join(parts[:at]) != "/proc":
            return target
        raise UcrError(f"fd {fd} of process {ctx.pid} is {target}, on a /proc other than the checkpointer's; "
                       "that cannot be checkpointed yet")
    pid, rest = int(parts[at]), parts[at + 1:]
    if pid != ctx.pid:
        raise UcrError(f"fd {fd} of process {ctx.pid} is {target}, a file of process {pid}'s /proc entry; "
                       "only a process's own can be checkpointed")
    if rest[:1] != ["task"] or len(rest) < 2 or not rest[1].isdigit():
        return "/".join(["/proc/self"] + rest)
    if int(rest[1]) == pid:
        return "/".join(["/proc/thread-self"] + rest[2:])  # the restorer runs in the main thread
    raise UcrError(f"fd {fd} of process {ctx.pid} is {target}, a file of one of its threads' /proc entry; "
                   "that cannot be checkpointed yet")


def _file_record(ctx, fd, target, info):
    pid = ctx.pid
    try:
        st = os.stat(proc.path(pid, "fd", str(fd)))
    except FileNotFoundError:
        raise UcrError(f"fd {fd} of process {pid} vanished") from None
    kind, owner = _classify(ctx, st, target, info)
    if kind is None:
        raise UcrError(f"fd {fd} of process {pid} ({target}) is of a type that cannot be checkpointed yet")
    if kind == K.REG and target == "/secretmem (deleted)":  # memfd_secret: its pages cannot be read
        raise UcrError(f"fd {fd} of process {pid} is a memfd_secret; that cannot be checkpointed")
    if kind in (K.REG, K.DIR, K.CHR, K.FIFO) and target.endswith(" (deleted)"):
        raise UcrError(f"fd {fd} of process {pid} refers to deleted file {target[:-10]}")
    if kind in (K.TTY, K.SOCKET) and fd >= STD_STREAMS:
        what = _socket_family(pid, fd) + " socket" if kind == K.SOCKET else K[kind]
        raise UcrError(f"fd {fd} of process {pid} is a {what} ({target}); "
                       "only standard input/output/error may be one yet")
    flags = int(info.get("flags", "0"), 8)
    fields = dict(fd=fd, kind=kind, flags=flags & ~os.O_CLOEXEC, fd_flags=1 if flags & os.O_CLOEXEC else 0,
                  pos=int(info.get("pos", 0)), mode=st.st_mode, dev=st.st_dev, ino=st.st_ino, rdev=st.st_rdev,
                  size=st.st_size)
    if owner is not None:
        owner.note(ctx, fd, st, info, fields)
    elif kind in (K.REG, K.DIR):
        target = _proc_path(ctx, fd, target, st)
    return R.FILE.pack(tail=target, file_id=file_id(ctx, fd, st), **fields)


def dump(ctx):
    hidden = getattr(ctx, "hidden_fds", ())  # a ptrace-free self-checkpoint's own pipes (selfdump.py)
    ctx.fds = [f for f in proc.fds(ctx.pid) if f[0] not in hidden]
    for owner in owners():
        if hasattr(owner, "scan"):  # an owner that must look at the whole tree before it can classify
            owner.scan(ctx)
    for fd, target, info in ctx.fds:
        yield _file_record(ctx, fd, target, info)


def _fd_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


class Restore:
    def __init__(self, rst):
        self.rst = rst
        self.descs = {}   # file_id, or ("std", fd) for a standard stream -> kept fd
        self.terminal_modes = {}  # rstr's fd -> termios to put on it before the tree runs

    def _external(self, rec):
        """Standard streams that are a terminal (other than a pseudo-terminal
        the tree holds), a socket, or a pipe the tree holds only one end of."""
        kind = rec["kind"]
        if rec["fd"] >= STD_STREAMS:
            return False
        if kind in (K.TTY, K.PTY_SLAVE):
            return not self.rst.part("tty").ours(rec)
        if kind == K.PIPE:
            modes = {f["flags"] & os.O_ACCMODE for p in self.rst.img.procs for f in p.records("FILE")
                     if f["kind"] == kind and f["ino"] == rec["ino"]}
            return len(modes) == 1
        return kind == K.SOCKET

    def _open_external(self, rec):
        """rstr's own fd of the same number (unless that is the image), else /dev/null."""
        fd = rec["fd"]
        if fd == self.rst.in_fd or not _fd_open(fd):
            return os.open("/dev/null", rec["flags"] & os.O_ACCMODE)
        if rec["kind"] in (K.TTY, K.PTY_SLAVE):
            modes = self.rst.part("tty").terminal_modes(rec, fd)
            if modes is not None:
                self.terminal_modes[fd] = modes
        return os.dup(fd)

    def _open_path(self, rec):
        path, fd = rec["tail"], rec["fd"]
        if rec["kind"] in (K.SOCKET, K.TTY):
            raise UcrError(f"fd {fd} is a {K[rec['kind']]} ({path}); restoring that is not supported yet")
        try:
            st = os.stat(path)
        except OSError as e:
            raise UcrError(f"file {path} (fd {fd}) is gone since the checkpoint: {e.strerror}") from None
        if rec["kind"] == K.REG:
            self._check_size(rec, st)
        flags = rec["flags"] & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL)
        try:
            new = trust.open_file(rec, flags)
        except OSError as e:
            raise UcrError(f"cannot reopen {path} (fd {fd}): {e.strerror}") from None
        if rec["kind"] == K.REG:
            os.lseek(new, rec["pos"], os.SEEK_SET)
        return new

    def _check_size(self, rec, st):
        """A file that grew or shrank since the checkpoint comes back at its
        saved offset with a warning (strict: an error), as CRIU does; one
        that no longer reaches that offset is an error."""
        path, fd, pos = rec["tail"], rec["fd"], rec["pos"]
        if st.st_size == rec["size"] or rec["flags"] & os.O_APPEND:  # appends go to the end anyway
            return
        change = f"changed size since the checkpoint ({rec['size']} -> {st.st_size} bytes)"
        if st.st_size < pos:
            raise UcrError(f"file {path} (fd {fd}) {change}: its offset {pos} is past the end")
        if self.rst.strict_files:
            raise UcrError(f"file {path} (fd {fd}) {change}; restart without --strict-files to accept that")
        self.rst.warn(f"warning: file {path} (fd {fd}) {change}; restored at offset {pos}")

    def _open(self, rec):
        if self._external(rec):
            return self._open_external(rec)
        name = owner(rec["kind"])
        if name:
            return self.rst.part(name).open(rec)
        return self._open_path(rec)

    def fd(self, rec):
        """The kept fd for rec's open file description, opened once per
        file_id; each standard stream that follows rstr's on its own."""
        key = ("std", rec["fd"]) if self._external(rec) else rec["file_id"]
        if key not in self.descs:
            self.descs[key] = self.rst.keep(self._open(rec))
        return self.descs[key]

    @staticmethod
    def _own_proc(rec):
        """A file of the process's own /proc entry, which the task opens itself."""
        parts = rec["tail"].split("/")
        return rec["kind"] in (K.REG, K.DIR) and parts[:2] == ["", "proc"] and parts[2:3] in (["self"], ["thread-self"])

    def data_size(self, p):
        return sum(len(r["tail"]) + 17 for r in p.records("FILE") if self._own_proc(r))

    def prepare(self, plan, p):
        paths = {}  # file_id -> the path string in the region, shared by its fds

        def fd(f, rec):
            f.dst, f.cloexec = rec["fd"], rec["fd_flags"]
            if not self._own_proc(rec):
                f.src = self.fd(rec)
                return
            if rec["file_id"] not in paths:
                paths[rec["file_id"]] = self.rst.region.put(os.fsencode(rec["tail"]) + b"\0")
            f.src, f.path = -1, paths[rec["file_id"]]
            f.flags = rec["flags"] & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL)
            f.pos = rec["pos"] if rec["kind"] == K.REG else 0
        plan.fds, plan.nr_fds = self.rst.region.array("ucr_fd", p.records("FILE"), fd)
