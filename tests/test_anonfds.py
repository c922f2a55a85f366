"""eventfd, timerfd and signalfd across three checkpoint (--kill) and
default restart cycles each: self-checking workloads (protocol in
workloads/wl.h) that count, time and signal themselves through them, and
util-linux script, which waits on a signalfd and a pseudo-terminal."""
import sys
import re
import signal
import time

from conftest import ckpt, lines, rstr, wait_until
from test_tree import assert_sane, cycles, failures, family, start, ticked, ticks, tree

from usercr.arch import current as current_arch
from usercr.image import ImageReader
from usercr.model import Image

ONCE_AHEAD = 0.4   # timerfd.c's one-shot timer is set this far ahead


def image_records(img, name):
    with open(img, "rb") as f:
        return Image(ImageReader(f.fileno()), current_arch()).tree_records(name)


def test_eventfd(procs, workloads, tmp_path):
    """A counter beyond 32 bits, EFD_SEMAPHORE, O_NONBLOCK and close-on-exec
    come back, and two eventfds stay shared between parent and child."""
    out = tmp_path / "out"
    cycles(procs, tmp_path, start(procs, workloads["eventfd"], out), out)
    saved = image_records(tmp_path / "img2", "EVENTFD")
    assert len(saved) == 4 and sum(r["semaphore"] for r in saved) == 1, saved


def test_signalfd(procs, workloads, tmp_path):
    """Signals the process sent itself before the checkpoint arrive through
    the signalfd after the restart, with their values; its mask keeps
    out the others."""
    out = tmp_path / "out"
    cycles(procs, tmp_path, start(procs, workloads["signalfd"], out), out)
    (saved,) = image_records(tmp_path / "img2", "SIGNALFD")
    mask = (1 << signal.SIGUSR1 - 1) | (1 << signal.SIGUSR2 - 1) | (1 << signal.SIGRTMIN + 1 - 1)
    assert saved["sigmask"] == mask, hex(saved["sigmask"])


def armed(out):
    return [int(x.split()[1]) for x in lines(out) if x.startswith("armed ")]


def test_timerfd(procs, workloads, tmp_path):
    """Each cycle is checkpointed right after the one-shot timer was set, and
    restored once it would have expired: it is read after the restart.
    The periodic timers' counts are checked by the workload itself."""
    out = tmp_path / "out"
    root = start(procs, workloads["timerfd"], out)
    in_gap, unread = 0, 0
    for cycle in range(3):
        n = armed(out)[-1]
        wait_until(lambda: failures(out) or armed(out)[-1] > n, 10, "the one-shot timer to be set again")
        assert_sane(out)
        seen, n = time.monotonic(), armed(out)[-1]
        img = tmp_path / f"img{cycle}"
        doomed = family(root)
        ckpt(root, img, "--kill")
        for pid in doomed:
            procs.kill(pid)
        once = [r for r in image_records(img, "TIMERFD") if not r["interval_ns"]]
        assert len(once) == 1 and once[0]["settime_flags"] == current_arch().C["TFD_TIMER_ABSTIME"], once
        in_gap += once[0]["value_ns"] > 0   # not yet expired when it was saved
        unread += max(r["ticks"] for r in image_records(img, "TIMERFD") if r["interval_ns"] == 10_000_000)
        time.sleep(max(0, seen + ONCE_AHEAD + 0.2 - time.monotonic()))
        last = ticks(out)[-1]
        root = rstr(procs, img)
        wait_until(lambda: failures(out) or f"fired {n}" in lines(out), 10, f"one-shot timer {n} to be read")
        ticked(out, last + 5)
    assert in_gap, "the one-shot timer expired before the checkpoint every time (ckpt too slow?)"
    assert unread, "the lazily read timer never had expirations waiting at a checkpoint"
    periodic = {r["interval_ns"] for r in image_records(tmp_path / "img2", "TIMERFD")}
    assert periodic == {0, 10_000_000, 30_000_000, 50_000_000}


def numbers(path):
    return [int(x) for x in re.findall(rb"\d+", path.read_bytes())]


def test_script(procs, workloads, tmp_path):
    """`script -qfc counter /dev/null` (a signalfd and the master of the
    pseudo-terminal its child counts on) goes on counting, every number
    once and in order."""
    out = tmp_path / "out"
    root = procs.start(["script", "-qfc", workloads["counter"], "/dev/null"], stdout=out).pid
    wait_until(lambda: len(numbers(out)) >= 5, what="counting")
    size = len(tree(root))  # script and its child (through sh where $SHELL is dash)
    for cycle in range(3):
        img = tmp_path / f"img{cycle}"
        doomed = family(root)  # with the reaper, if the restore took a new PID namespace
        assert len(tree(root)) == size
        ckpt(root, img, "--kill")
        for pid in doomed:
            procs.kill(pid)
        last = numbers(out)[-1]
        root = rstr(procs, img)
        for pid in family(root):
            procs.track(pid)
        wait_until(lambda: numbers(out)[-1] >= last + 10, what="counting on after the restart")
        assert len(tree(root)) == size
    got = numbers(out)
    assert got == list(range(len(got))), "every number once, in order"
    assert image_records(tmp_path / "img2", "SIGNALFD")


HOLDER = r"""
import os, sys, time
fds = [os.eventfd(count, os.EFD_SEMAPHORE if sem else 0) for sem in (0, 1) for count in (0, 1, 2, 5)]
print(" ".join(map(str, fds)), flush=True)
time.sleep(60)
"""


def test_eventfd_semaphore_probe(procs, tmp_path):
    """On kernels whose fdinfo does not say eventfd-semaphore (before 6.5),
    ckpt finds EFD_SEMAPHORE by a read and a write on a copy of the fd:
    right for every counter value, which it leaves as it was."""
    from usercr import eventfd
    out = tmp_path / "out"
    pid = procs.start([sys.executable, "-c", HOLDER], stdout=out).pid
    fds = wait_until(lambda: lines(out) and [int(x) for x in lines(out)[0].split()], what="the eventfds")
    for i, fd in enumerate(fds):
        count, semaphore = (0, 1, 2, 5)[i % 4], i >= 4
        assert eventfd._semaphore(pid, fd, count) == semaphore, (count, semaphore)
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            info = dict(line.split(":", 1) for line in f)
        assert int(info["eventfd-count"], 16) == count


def test_due_timerfds_stay_armed(procs, workloads, tmp_path):
    """64 periodic 1 ms timerfds: a checkpoint often finds one due whose
    expiry its CPU's timer interrupt has not served yet, which reads as
    disarmed (fdinfo and timerfd_gettime say 0 left); ckpt waits for the
    interrupt (/proc/timer_list) instead of saving it disarmed. The workload
    checks that every timer keeps expiring (before the fix: stopped within
    two cycles)."""
    out = tmp_path / "out"
    cycles(procs, tmp_path, start(procs, workloads["timerfd_due"], out), out, n=6)


EXPIRED = r"""
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]
def set_abs(fd, ns, interval_ns=0):
    its = (Timespec * 2)(Timespec(*divmod(interval_ns, 10**9)), Timespec(*divmod(ns, 10**9)))
    assert libc.timerfd_settime(fd, 1, its, None) == 0   # TFD_TIMER_ABSTIME
read = [libc.timerfd_create(time.CLOCK_MONOTONIC, 0) for _ in range(2)]
now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
set_abs(read[0], now + 1000000)
set_abs(read[1], 0, 10**9)   # disarmed, with an interval
gap = libc.timerfd_create(time.CLOCK_MONOTONIC, 0)
set_abs(gap, now + 500 * 10**6)   # expires between checkpoint and restart
time.sleep(0.01)
os.read(read[0], 8)   # expired and read: disarmed
print(*read, gap, flush=True)
time.sleep(60)
"""


def test_expired_timerfd_keeps_its_flags(procs, tmp_path):
    """A one-shot timerfd that expired and was read, one disarmed with an
    interval, and one that expires between checkpoint and restart come back
    with the flags they were set with (fdinfo), and their interval; the last
    one with its expiration to read."""
    out = tmp_path / "out"
    pid = procs.start([sys.executable, "-c", EXPIRED], stdout=out).pid
    fds = wait_until(lambda: lines(out) and [int(x) for x in lines(out)[0].split()], what="the timerfds")

    def fdinfo(pid):
        return [{k: v.strip() for k, _, v in (ln.partition(":") for ln in open(f"/proc/{pid}/fdinfo/{fd}"))}
                for fd in fds]
    before = fdinfo(pid)
    assert [i["settime flags"] for i in before] == ["01", "01", "01"], before
    img = tmp_path / "img"
    ckpt(pid, img, "--kill")
    procs.kill(pid)
    time.sleep(0.6)
    pid = rstr(procs, img)
    after = fdinfo(pid)
    assert [i["settime flags"] for i in after] == ["01", "01", "01"], after
    assert [i["it_interval"] for i in after] == [i["it_interval"] for i in before], after
    assert [int(i["ticks"]) for i in after] == [0, 0, 1], after
