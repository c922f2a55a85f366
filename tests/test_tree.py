"""Process trees: each self-checking workload (protocol in workloads/wl.h) is
checkpointed with --kill, killed and restored three times in a row, and must
tick on with consecutive tick numbers and no BAD line."""
import os
import re

import pytest

from conftest import assert_one_line_error, ckpt, lines, rstr, run, tool, wait_until

CYCLED = ["onetask", "multitask", "bigmem", "pipes", "pipes2", "fifo", "shmem", "ipcshm", "ipcmsq", "ipcsem",
          "ipcshm_multi", "zombie", "pgrp", "orphans", "pty", "threads", "tree64", "vforker"]
# ckpt saves SysV objects only of a tree with an IPC namespace of its own.
OWN_IPCNS = {"ipcshm", "ipcmsq", "ipcsem", "ipcshm_multi"}


def ticks(out):
    return [int(x.split()[1]) for x in lines(out) if x.startswith("tick ")]


def failures(out):
    return [x for x in lines(out) if x.startswith("BAD")]


def assert_sane(out):
    assert not failures(out), failures(out)
    got = ticks(out)
    assert got == list(range(len(got))), "tick numbers must be consecutive from 0"


def ticked(out, n):
    """Waits for tick n (or a BAD line), then checks the output so far."""
    wait_until(lambda: failures(out) or (ticks(out) or [-1])[-1] >= n, 30, f"tick {n}")
    assert_sane(out)


def tree(root):
    """(pid, parent PID) of root (parent None) and of all its descendants."""
    found = [(root, None)]
    for pid, _ in found:  # grows while we walk it
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    found += [(int(c), pid) for c in f.read().split()]
        except OSError:  # ended meanwhile
            pass
    return found


def family(root):
    """The tree's PIDs and its parent unless that is us: the reaper of a
    --pidns restore (killing it ends the namespace) or `usercr run`'s waiter."""
    pids = [pid for pid, _ in tree(root)]
    try:
        with open(f"/proc/{root}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return pids
    return pids + ([parent] if parent != os.getpid() else [])


def start(procs, exe, out, *args, ipcns=False):
    """Starts a workload as a session leader or, with ipcns, under `usercr run`
    (new PID and IPC namespaces); waits for ready and 3 ticks. Returns the root's PID."""
    argv = [exe, *map(str, args)]
    if ipcns:
        pidfile = out.with_name("run.pid")
        procs.start([tool("usercr"), "run", "--pidfile", str(pidfile), "--", *argv], stdout=out)
        root = procs.track(wait_until(lambda: pidfile.exists() and int(pidfile.read_text()), what="the pidfile"))
    else:
        root = procs.start(argv, stdout=out).pid
    wait_until(lambda: failures(out) or ("ready" in lines(out) and len(ticks(out)) >= 3), 30, "ready and 3 ticks")
    assert_sane(out)
    return root


def checkpoint_killed(procs, root, img):
    """Checkpoints the tree of root into img with --kill and kills every PID of it."""
    doomed = family(root)
    ckpt(root, img, "--kill")
    for pid in doomed:
        procs.kill(pid)


def restored(procs, img, *how):
    """Restores img; returns its root, the tree tracked."""
    root = rstr(procs, img, *how)
    for pid in family(root):
        procs.track(pid)
    return root


def recycle(procs, root, img, *how):
    """One checkpoint --kill and restore; returns the restored root."""
    checkpoint_killed(procs, root, img)
    return restored(procs, img, *how)


def cycles(procs, tmp_path, root, out, how=(), n=3):
    """n times: checkpoint with --kill, kill every PID of the tree, restore
    (by default: with the original PIDs, here or in a new namespace), and
    wait for 5 more ticks. Returns the restored root's PID."""
    for cycle in range(n):
        img = tmp_path / f"img{cycle}"
        checkpoint_killed(procs, root, img)
        last = ticks(out)[-1]
        root = restored(procs, img, *how)
        ticked(out, last + 5)
    return root


@pytest.mark.parametrize("name", CYCLED)
def test_three_cycles(procs, workloads, tmp_path, name):
    out = tmp_path / "out"
    root = start(procs, workloads[name], out, *([tmp_path] if name == "fifo" else []), ipcns=name in OWN_IPCNS)
    cycles(procs, tmp_path, root, out)


def test_itimer_rates(procs, workloads, tmp_path):
    out = tmp_path / "out"
    cycles(procs, tmp_path, start(procs, workloads["itimer"], out), out)
    seen = len(lines(out))
    ticked(out, ticks(out)[-1] + 25)
    timers = [[int(v) for v in x.split()[1:]] for x in lines(out)[seen:] if x.startswith("timers ")]
    (alrm0, usr0, ms0), (alrm1, usr1, ms1) = timers[0], timers[-1]
    secs = (ms1 - ms0) / 1000
    assert 30 <= (alrm1 - alrm0) / secs <= 130, "ITIMER_REAL must go on every 10 ms"
    assert 60 <= (usr1 - usr0) / secs <= 260, "the POSIX timer must go on every 5 ms"


def test_pending_signals_delivered_after_restore(procs, workloads, tmp_path):
    out, go = tmp_path / "out", tmp_path / "go"
    cycles(procs, tmp_path, start(procs, workloads["sigpending"], out, go), out)
    go.touch()
    wait_until(lambda: failures(out) or "ok" in lines(out), 30, "the signals to be delivered")
    assert_sane(out)
    assert len([x for x in lines(out) if x.startswith("delivered ")]) == 12


def test_thread_state_used_after_restore(procs, workloads, tmp_path):
    """A signal pending on one thread, a thread's sigaltstack and a thread
    that exits and is joined (clear_child_tid) all work after three cycles."""
    out, go = tmp_path / "out", tmp_path / "go"
    cycles(procs, tmp_path, start(procs, workloads["threadstate"], out, go), out)
    go.touch()
    wait_until(lambda: failures(out) or "ok" in lines(out), 30, "the threads to finish")
    assert_sane(out)


def test_pids_kept_in_new_namespace(procs, workloads, tmp_path):
    out = tmp_path / "out"
    root = start(procs, workloads["multitask"], out)
    before = tree(root)
    root = cycles(procs, tmp_path, root, out, how=("--pids", "--pidns"), n=1)

    def inner(pid):
        with open(f"/proc/{pid}/status") as f:
            return int([x for x in f if x.startswith("NSpid:")][0].split()[-1])

    after = [(inner(pid), parent and inner(parent)) for pid, parent in tree(root)]
    assert len(before) == 7 and sorted(after) == sorted(before)


def test_pids_in_use_is_one_clear_error(procs, workloads, tmp_path):
    out, img = tmp_path / "out", tmp_path / "img"
    root = start(procs, workloads["multitask"], out)
    pids = {str(pid) for pid, _ in tree(root)}
    ckpt(root, img)  # the tree keeps running, so its PIDs stay taken
    pidfile = tmp_path / "pid"
    r = run([tool("rstr"), "-i", str(img), "-W", "--pids", "--no-pidns", "--pidfile", str(pidfile)])
    if pidfile.exists():  # a wrong success must not leak the restored tree
        procs.track(int(pidfile.read_text()))
    err = assert_one_line_error(r)
    assert pids & set(re.findall(r"\d+", err)) and "--pidns" in err and "--no-pids" in err, err
    ticked(out, ticks(out)[-1] + 5)


def test_new_pids_refused_for_a_tree(procs, workloads, tmp_path):
    """--no-pids would give the root's children new PIDs, which the root
    knows: refused in one line, before anything is restored."""
    out, img = tmp_path / "out", tmp_path / "img"
    root = start(procs, workloads["multitask"], out)
    ckpt(root, img)
    pidfile = tmp_path / "pid"
    r = run([tool("rstr"), "-i", str(img), "-W", "--no-pids", "--pidfile", str(pidfile)])
    if pidfile.exists():
        procs.track(int(pidfile.read_text()))
    err = assert_one_line_error(r)
    assert "--no-pids" in err and str(root) in err and "children" in err, err
    assert not pidfile.exists()
    ticked(out, ticks(out)[-1] + 3)

