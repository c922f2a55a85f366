"""Pipes and FIFOs (fd kinds pipe and fifo): one PIPE record per pipe the
tree uses, with the data buffered in it, read without consuming it (tee)."""
import fcntl
import os
import stat

from . import proc
from . import records as R
from . import trust
from .errors import UcrError
from .native import ffi, lib

K = R.FD_KINDS
KINDS = (K.PIPE, K.FIFO)


def classify(ctx, st, target, info):
    if stat.S_ISFIFO(st.st_mode):
        return K.PIPE if target.startswith("pipe:") else K.FIFO
    return None


def note(ctx, fd, st, info, fields):
    ctx.tree.setdefault("pipes", {}).setdefault(st.st_ino, (ctx.pid, fd))


def tree_records(tree):
    out = []
    for ino, (pid, fd) in tree.get("pipes", {}).items():
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
            raise UcrError(f"reading the data buffered in the pipe at fd {fd} of process {pid}: {os.strerror(-n)}")
        out.append(R.PIPE.pack(ino=ino, capacity=capacity, tail=bytes(ffi.buffer(buf, n))))
    return out


class Restore:
    def __init__(self, rst):
        self.rst = rst
        self.saved = {rec["ino"]: rec for rec in rst.img.tree_records("PIPE")}
        self.ends = {}   # ino -> {access mode: kept fd}

    def _pipe(self, rec):
        """Both ends of the pipe or FIFO rec names, filled with its buffered data."""
        ino = rec["ino"]
        if ino in self.ends:
            return self.ends[ino]
        saved = self.saved.get(ino)
        if saved is None:
            raise UcrError(f"image corrupt: no PIPE record for the pipe at fd {rec['fd']}")
        if rec["kind"] == K.FIFO:
            try:
                both = trust.open_file(rec, os.O_RDWR | os.O_NONBLOCK)
            except OSError as e:
                raise UcrError(f"FIFO {rec['tail']} (fd {rec['fd']}): {e.strerror}") from None
            r = w = self.rst.keep(both)
        else:
            r, w = (self.rst.keep(e) for e in os.pipe())
        if saved["capacity"] > 65536:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, saved["capacity"])
        data = saved["tail"]
        while data:
            data = data[os.write(w, data):]
        self.ends[ino] = {os.O_RDONLY: r, os.O_WRONLY: w}
        return self.ends[ino]

    def open(self, rec):
        ends = self._pipe(rec)
        mode = rec["flags"] & os.O_ACCMODE
        end = ends.get(mode, ends[os.O_RDONLY])
        # A new open file description on the same pipe, with the saved flags.
        new = os.open(f"/proc/self/fd/{end}", mode | os.O_NONBLOCK)
        fcntl.fcntl(new, fcntl.F_SETFL, rec["flags"])
        return new
