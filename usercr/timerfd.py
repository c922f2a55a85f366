"""timerfds (fd kind timerfd): one TIMERFD record per open file description
the tree holds, recreated by rstr before the tree exists, with its clock,
the flags it was set with, its time left and interval, and its expirations
not yet read (fdinfo `ticks`; put back with TFD_IOC_SET_TICKS).

At checkpoint, timerfd_gettime on a copy of the fd first counts a periodic
timer's overruns into its ticks (as a read would), then fdinfo gives the
ticks; the two are read again if the timer fired in between. A timer set
with TFD_TIMER_ABSTIME keeps its deadline on its clock: one that passed
while the tree was gone fires at restart, with every period that passed
counted. A relative timer keeps its time left: for it, time stops from
the checkpoint to the restart, as for POSIX timers. An expiry due at the
restart (or within MARGIN_NS of it) is counted by rstr, not raced with."""
import os

from . import records as R
from .errors import UcrError
from .native import ffi, lib

K = R.FD_KINDS
KINDS = (K.TIMERFD,)
TARGET = "anon_inode:[timerfd]"
MARGIN_NS = 1_000_000
ATTEMPTS = 10
NS = 10**9


def classify(ctx, st, target, info):
    return K.TIMERFD if target == TARGET else None


def note(ctx, fd, st, info, fields):
    from .files import file_id  # files imports this module
    ctx.tree.setdefault("timerfds", {}).setdefault(file_id(ctx, fd, st), (ctx.pid, fd))


def _fdinfo(fd):
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in f)}


def _pair_ns(text):
    sec, nsec = text.strip("()").split(",")
    return int(sec) * NS + int(nsec)


def _state(pid, fd):
    copy = lib.ucr_pidfd_getfd(pid, fd)
    if copy < 0:
        raise UcrError(f"cannot reach the timerfd at fd {fd} of process {pid}: {os.strerror(-copy)}")
    try:
        clockid = int(_fdinfo(copy)["clockid"])
        got = ffi.new("uint64_t[3]")
        for _ in range(ATTEMPTS):
            err = lib.ucr_timerfd_get(copy, clockid, got)
            if err < 0:
                raise UcrError(f"reading the timerfd at fd {fd} of process {pid}: {os.strerror(-err)}")
            info = _fdinfo(copy)
            if got[0] == 0 or _pair_ns(info["it_value"]):
                break  # otherwise it fired in between: its ticks and time left do not match yet
        return dict(clockid=clockid, settime_flags=int(info["settime flags"], 8), ticks=int(info["ticks"]),
                    value_ns=got[0], interval_ns=got[1], now_ns=got[2])
    finally:
        os.close(copy)


def tree_records(tree):
    return [R.TIMERFD.pack(file_id=fid, **_state(pid, fd)) for fid, (pid, fd) in tree.get("timerfds", {}).items()]


class Restore:
    def __init__(self, rst):
        self.rst = rst
        self.saved = {rec["file_id"]: rec for rec in rst.img.tree_records("TIMERFD")}

    def open(self, rec):
        saved = self.saved.get(rec["file_id"])
        where = f"the timerfd at fd {rec['fd']}"
        if saved is None:
            raise UcrError(f"image corrupt: no TIMERFD record for {where}")
        C = self.rst.arch.C
        clockid, flags = saved["clockid"], saved["settime_flags"]
        new = lib.ucr_timerfd_create(clockid)
        if new < 0:
            raise UcrError(f"cannot recreate {where} (clock {clockid}): {os.strerror(-new)}")
        try:
            value = saved["value_ns"]
            if value and flags & C["TFD_TIMER_ABSTIME"]:
                value += saved["now_ns"]  # the deadline it had
            step = ffi.new("int *")
            err = lib.ucr_timerfd_restore(new, clockid, flags, value, saved["interval_ns"], saved["ticks"], MARGIN_NS,
                                          step)
            if err < 0 and step[0] == 1:
                raise UcrError(f"cannot set {where}: {os.strerror(-err)}")
            if err < 0:
                raise UcrError(f"cannot give {where} its unread expirations back (TFD_IOC_SET_TICKS needs "
                               f"CONFIG_CHECKPOINT_RESTORE): {os.strerror(-err)}")
        except BaseException:
            os.close(new)
            raise
        os.set_blocking(new, not rec["flags"] & os.O_NONBLOCK)
        return new
