"""File locks held by the tree: POSIX (fcntl) record locks, OFD locks and
flock locks are saved at checkpoint and taken again at restart before any
task runs; a lease, a delegation or any other lock is refused at checkpoint.

/proc/PID/fdinfo/FD lists the locks on that fd's open file description:
POSIX locks only when this process owns them (its files_struct), OFD and
flock locks whoever took them; blocked waiters are not listed (they re-issue
their F_SETLKW or flock after restart). OFD and flock locks belong to the
open file description, so rstr takes them on its own fd of it before the
tree exists. POSIX locks belong to the process and go away when it closes
any fd of the file, so each restorer takes its own once it has closed every
fd rstr handed down (restorer.c)."""
import errno
import fcntl
import os
import stat
import struct

from . import proc
from . import records as R
from . import files
from .errors import UcrError
from .native import ffi

K = R.LOCK_KINDS
POSIX, OFD, FLOCK = K.POSIX, K.OFD, K.FLOCK
KINDS = {"POSIX": POSIX, "OFDLCK": OFD, "FLOCK": FLOCK}  # as fdinfo names them
TYPES = {"READ": fcntl.F_RDLCK, "WRITE": fcntl.F_WRLCK}
REFUSED = {"LEASE": "a lease", "DELEG": "a delegation"}
# struct flock64, which is struct flock on 64-bit and what F_OFD_SETLK takes on 32-bit
FLOCK64 = struct.Struct("@hhqqi4x")


def _describe(kind, type_, start, length):
    what = f"{R.LOCK_KINDS[kind]} {'write' if type_ == fcntl.F_WRLCK else 'read'} lock"
    if kind == FLOCK:
        return what
    return what + (f" on bytes {start}-{start + length - 1}" if length else f" from byte {start} to the end")


def _parse(pid, fd, target, line):
    """(kind, type, start, len) of one fdinfo `lock:` line, None for a waiter;
    a lock that cannot be restored is a UcrError."""
    f = line.split()  # id: kind mode type pid major:minor:ino start end|EOF
    if f[1] == "->":
        return None
    kind, mode, type_ = f[1], f[2], f[3]
    if kind in REFUSED:
        raise UcrError(f"process {pid} holds {REFUSED[kind]} on fd {fd} ({target}); usercr cannot restore "
                       "leases or delegations")
    if kind not in KINDS or mode != "ADVISORY" or type_ not in TYPES:
        raise UcrError(f"process {pid} holds a {kind} {mode} {type_} lock on fd {fd} ({target}); "
                       "usercr cannot restore it")
    if KINDS[kind] == POSIX and int(f[4]) != pid:
        raise UcrError(f"process {pid} holds a POSIX lock on fd {fd} ({target}) that process {f[4]} took "
                       "through a shared fd table; usercr cannot restore that")
    start = int(f[6])
    return KINDS[kind], TYPES[type_], start, 0 if f[7] == "EOF" else int(f[7]) - start + 1


def dump(ctx):
    """FILE_LOCK records of the process, from the fds files.dump listed: the
    POSIX locks it owns, and the OFD and flock locks of the open file
    descriptions it holds, each once."""
    pid = ctx.pid
    out, seen = [], set()
    for fd, target, info in ctx.fds:
        for line in info.get("lock", []):
            lock = _parse(pid, fd, target, line)
            if lock is None:
                continue
            try:
                st = os.stat(proc.path(pid, "fd", str(fd)))
            except FileNotFoundError:
                raise UcrError(f"fd {fd} of process {pid} vanished") from None
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise UcrError(f"process {pid} holds a {_describe(*lock)} on fd {fd} ({target}), which is not a "
                               "file or directory; usercr cannot restore that")
            fid = files.file_id(ctx, fd, st)
            key = ((st.st_dev, st.st_ino) if lock[0] == POSIX else fid,) + lock
            if key in seen:  # on every fd of the file (POSIX) or of the description
                continue
            seen.add(key)
            kind, type_, start, length = lock
            out.append(R.FILE_LOCK.pack(fd=fd, file_id=fid, kind=kind, type=type_, start=start, len=length))
    return out


def posix(p):
    """The POSIX locks of process p, in the order of its plan's lock array."""
    return [rec for rec in p.records("FILE_LOCK") if rec["kind"] == POSIX]


def _file(p, rec):
    f = next((f for f in p.records("FILE") if f["fd"] == rec["fd"]), None)
    if f is None:
        raise UcrError(f"image corrupt: a file lock of process {p.pid} is on fd {rec['fd']}, which it does not have")
    return f


def _take(fd, rec, path):
    """Takes an OFD or flock lock on rstr's fd of its open file description."""
    try:
        if rec["kind"] == FLOCK:
            fcntl.flock(fd, (fcntl.LOCK_EX if rec["type"] == fcntl.F_WRLCK else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        else:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, FLOCK64.pack(rec["type"], os.SEEK_SET, rec["start"], rec["len"], 0))
    except OSError as e:
        what = _describe(rec["kind"], rec["type"], rec["start"], rec["len"])
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise UcrError(f"{path} is locked by another process since the checkpoint: its {what} cannot be "
                           "taken again") from None
        raise UcrError(f"taking the {what} on {path} again: {e.strerror}") from None


class Restore:
    """Before the tree is created: takes every OFD and flock lock on rstr's
    fds of the open file descriptions (each once), and gives each plan the
    POSIX locks its restorer takes."""

    def __init__(self, rst):
        self.rst = rst
        self.taken = set()

    @staticmethod
    def data_size(p):
        return len(p.records("FILE_LOCK")) * ffi.sizeof("struct ucr_lock") + 64

    def prepare(self, plan, p):
        for rec in p.records("FILE_LOCK"):
            f = _file(p, rec)
            key = (rec["file_id"], rec["kind"], rec["type"], rec["start"], rec["len"])
            if rec["kind"] != POSIX and key not in self.taken:
                self.taken.add(key)
                _take(self.rst.part("files").fd(f), rec, f["tail"])

        def lock(entry, rec):
            entry.fd, entry.type, entry.start, entry.len = rec["fd"], rec["type"], rec["start"], rec["len"]
        plan.locks, plan.nr_locks = self.rst.region.array("ucr_lock", posix(p), lock)


def failure(p, index, err):
    """The error for a POSIX lock that a restorer could not take."""
    rec = posix(p)[index]
    path, what = _file(p, rec)["tail"], _describe(POSIX, rec["type"], rec["start"], rec["len"])
    if err in (errno.EAGAIN, errno.EACCES):
        return UcrError(f"{path} is locked by another process since the checkpoint: the {what} of process "
                        f"{p.pid} cannot be taken again")
    return UcrError(f"restart failed taking the {what} of process {p.pid} on {path} again: {os.strerror(err)}")
