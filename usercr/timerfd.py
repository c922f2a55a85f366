"""timerfds (fd kind timerfd): one TIMERFD record per open file description
the tree holds, recreated by rstr before the tree exists, with its clock,
the flags it was set with, its time left and interval, and its expirations
not yet read (fdinfo `ticks`; put back with TFD_IOC_SET_TICKS).

At checkpoint, timerfd_gettime on a copy of the fd first counts a periodic
timer's overruns into its ticks (as a read would), then fdinfo gives the
ticks; the two are read again if the timer fired in between. A timer that
reads 0 left is disarmed, or due with its expiry not yet served by the
timer interrupt of its CPU (late under load, in VMs: seen for ms): ckpt
waits until /proc/timer_list shows no timerfd due and unserved (root), or
up to UNSERVED_WAIT_S for the timer's ticks to move (other users), then
reads it again; saved as disarmed, a due periodic timer would never fire
again after the restart. A timer set
with TFD_TIMER_ABSTIME keeps its deadline on its clock: one that passed
while the tree was gone fires at restart, with every period that passed
counted. A relative timer keeps its time left: for it, time stops from
the checkpoint to the restart, as for POSIX timers. An expiry due at the
restart (or within MARGIN_NS of it) is counted by rstr, not raced with."""
import os
import time

from . import records as R
from .errors import UcrError
from .native import ffi, lib

K = R.FD_KINDS
KINDS = (K.TIMERFD,)
TARGET = "anon_inode:[timerfd]"
MARGIN_NS = 1_000_000
ATTEMPTS = 10
NS = 10**9
# An expiry due this long without being served stops the checkpoint (the tree runs on).
SERVED_LIMIT_S = 2.0
UNSERVED_WAIT_S = 0.05  # without /proc/timer_list: how long ticks may take to move
POLL_S = 0.0005
# The hrtimer callbacks of timerfds (alarm clocks: through the alarm timer's)
CALLBACKS = ("timerfd_tmrproc", "alarmtimer_fired")


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


def _unserved_expiries():
    """How many timerfd timers of the system are due but not yet served by
    their CPU's timer interrupt; None if /proc/timer_list cannot tell."""
    try:
        with open("/proc/timer_list") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    unserved = 0
    # " #3: <ptr>, timerfd_tmrproc, S:01" then " # expires at A-B nsecs [in X to Y nsecs]"
    for line, expiry in zip(lines, lines[1:]):
        fields = line.split(", ")
        if len(fields) != 3 or not line.lstrip().startswith("#") or "[in " not in expiry:
            continue
        if fields[1].startswith("0x"):
            return None  # a kernel without symbols names no callback
        unserved += fields[1] in CALLBACKS and int(expiry.split("[in ", 1)[1].split()[0]) <= 0
    return unserved


def _await_served(ticks_unmoved):
    """Returns once no timerfd expiry that is due waits for its interrupt."""
    start = time.monotonic()
    while True:
        unserved = _unserved_expiries()
        if unserved == 0:
            return
        waited = time.monotonic() - start
        if unserved is None and (not ticks_unmoved() or waited > UNSERVED_WAIT_S):
            return  # no timer_list (not root): a timer whose ticks did not move is taken as disarmed
        if waited > SERVED_LIMIT_S:
            raise UcrError(f"a timerfd expiry has been due for {SERVED_LIMIT_S:.0f} s without the kernel "
                           f"serving it; its state cannot be read (the tree runs on)")
        time.sleep(POLL_S)


def tree_records(tree):
    timers = tree.get("timerfds", {})
    states = {fid: _state(pid, fd) for fid, (pid, fd) in timers.items()}
    undecided = [fid for fid, st in states.items() if not st["value_ns"]]  # disarmed, or due and unserved
    for _ in range(ATTEMPTS):
        if not undecided:
            break
        _await_served(lambda: any(_state(*timers[fid])["ticks"] == states[fid]["ticks"] for fid in undecided))
        again = {fid: _state(*timers[fid]) for fid in undecided}
        # one that was due and is due again already (a period shorter than these steps) is waited for again
        undecided = [fid for fid, st in again.items() if not st["value_ns"] and st["ticks"] != states[fid]["ticks"]]
        states.update(again)
    return [R.TIMERFD.pack(file_id=fid, **st) for fid, st in states.items()]


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
            if err < 0 and step[0] == 3:
                raise UcrError(f"cannot set {where}: it kept expiring before its unread expirations could be "
                               f"given back (interval {saved['interval_ns']} ns)")
            if err < 0:
                raise UcrError(f"cannot give {where} its unread expirations back (TFD_IOC_SET_TICKS needs "
                               f"CONFIG_CHECKPOINT_RESTORE): {os.strerror(-err)}")
        except BaseException:
            os.close(new)
            raise
        os.set_blocking(new, not rec["flags"] & os.O_NONBLOCK)
        return new
