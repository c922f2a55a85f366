"""Process state beyond memory and files (usercr/creds.py): a stopped process
comes back stopped; capabilities, securebits, no_new_privs and seccomp
filters come back exactly; what cannot come back is refused in one line."""
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import assert_one_line_error, ckpt, lines, rstr, run, tool, wait_until
from test_tree import assert_sane, cycles, recycle, start, ticked, ticks, tree

SECURITY_LINES = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
                  "Seccomp", "Seccomp_filters")


def state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def security(pid):
    """The security lines of /proc/PID/task/*/status, main thread first."""
    out = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=lambda t: (int(t) != pid, int(t))):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            out.append([x for x in f.read().splitlines() if x.split(":")[0] in SECURITY_LINES])
    return out


def still(out, seconds=0.3):
    """No new line for a while: the process is not running."""
    n = len(lines(out))
    time.sleep(seconds)
    return len(lines(out)) == n


def test_stopped_comes_back_stopped(procs, workloads, tmp_path):
    """Three times: SIGSTOP, checkpoint, restore: state T, no tick, and
    after SIGCONT it counts on from where it was."""
    out = tmp_path / "out"
    root = start(procs, workloads["onetask"], out)
    for cycle in range(3):
        os.kill(root, signal.SIGSTOP)
        wait_until(lambda: state(root) == "T", what="the stop")
        root = recycle(procs, root, tmp_path / f"img{cycle}", "--pids", "--pidns")
        wait_until(lambda: state(root) == "T", what="the restored process to be stopped")
        assert still(out)
        os.kill(root, signal.SIGCONT)
        ticked(out, ticks(out)[-1] + 5)


def test_stopped_checkpointed_again_while_stopped(procs, workloads, tmp_path):
    """A checkpoint without --kill leaves a stopped process stopped; a
    restored one that was never continued is checkpointed and restored
    again, still stopped, and SIGCONT lets it run on."""
    out = tmp_path / "out"
    root = start(procs, workloads["onetask"], out)
    os.kill(root, signal.SIGSTOP)
    wait_until(lambda: state(root) == "T", what="the stop")
    ckpt(root, tmp_path / "plain")
    assert state(root) == "T" and still(out)
    for cycle in range(2):
        root = recycle(procs, root, tmp_path / f"img{cycle}", "--pids", "--pidns")
        wait_until(lambda: state(root) == "T", what="the restored process to be stopped")
        assert still(out)
    os.kill(root, signal.SIGCONT)
    ticked(out, ticks(out)[-1] + 5)


def test_parent_waits_for_and_continues_stopped_child(procs, workloads, tmp_path):
    """The restored parent's waitpid(WUNTRACED) reports its child stopped
    again (docs/architecture.md), and its SIGCONT lets the child run on."""
    out = tmp_path / "out"
    root = start(procs, workloads["procstate"], out, "parent")
    child = next(pid for pid, parent in tree(root) if parent == root)
    os.kill(child, signal.SIGSTOP)
    wait_until(lambda: "stopped 19" in lines(out), what="the parent to see the stop")
    root = recycle(procs, root, tmp_path / "img", "--pids", "--pidns")
    child = next(pid for pid, parent in tree(root) if parent == root)
    wait_until(lambda: state(child) == "T", what="the restored child to be stopped")
    wait_until(lambda: lines(out).count("stopped 19") == 2, what="the parent to see the stop again")
    assert still(out)
    os.kill(root, signal.SIGUSR1)  # the parent continues its child
    wait_until(lambda: "continued" in lines(out), what="the parent to continue the child")
    ticked(out, ticks(out)[-1] + 5)


@pytest.mark.parametrize("mode", ["secure", "threads"])
def test_capabilities_and_seccomp_three_cycles(procs, workloads, tmp_path, mode):
    """Bounding set, capability sets, an ambient capability, securebits,
    no_new_privs and two seccomp filters of a root process and its thread
    (which shares them, or with "threads" adds one of its own): the same
    /proc status lines after each cycle, and the workload finds the filters
    acting every tick. A checkpoint without --kill leaves them on."""
    out = tmp_path / "out"
    root = start(procs, workloads["procstate"], out, mode)
    filters = f"Seccomp_filters:\t{3 if mode == 'threads' else 2}"
    # the thread installs its own filter as it starts
    wait_until(lambda: len(security(root)) == 2 and security(root)[1][-1] == filters, what="the thread's filters")
    before = security(root)
    assert before[0][-2:] == ["Seccomp:\t2", "Seccomp_filters:\t2"] and len(before) == 2
    assert before[1][-1] == filters
    ckpt(root, tmp_path / "plain")
    ticked(out, ticks(out)[-1] + 5)
    for k in range(3):
        (tmp_path / str(k)).mkdir()
        root = cycles(procs, tmp_path / str(k), root, out, n=1)
        assert security(root) == before


def test_uid_keeps_capabilities(procs, workloads, tmp_path):
    """uid 1000 that kept capabilities with KEEPCAPS, and a filter installed
    with CAP_SYS_ADMIN (no no_new_privs), through three cycles."""
    out = tmp_path / "out"
    root = start(procs, workloads["procstate"], out, "uid")
    before = security(root)
    assert "CapEff:\t0000000000000420" in before[0] and "NoNewPrivs:\t0" in before[0]
    root = cycles(procs, tmp_path, root, out)
    assert security(root) == before


def test_seccomp_strict_refused(procs, workloads, tmp_path):
    out = tmp_path / "out"
    p = procs.start([workloads["procstate"], "strict"], stdout=out, stdin=subprocess.PIPE)
    wait_until(lambda: "ready" in lines(out), what="ready")
    p.stdin.write(b"x")
    p.stdin.flush()
    wait_until(lambda: ticks(out) == [0], what="tick 0")
    err = assert_one_line_error(run([tool("ckpt"), str(p.pid), "-o", str(tmp_path / "img"), "--kill"]))
    assert "strict" in err, err
    p.stdin.write(b"x")
    p.stdin.flush()
    wait_until(lambda: ticks(out) == [0, 1], what="tick 1 after the refusal")


def test_user_notify_filter_refused(procs, workloads, tmp_path):
    out = tmp_path / "out"
    root = start(procs, workloads["procstate"], out, "notify")
    err = assert_one_line_error(run([tool("ckpt"), str(root), "-o", str(tmp_path / "img"), "--kill"]))
    assert "SECCOMP_RET_USER_NOTIF" in err, err
    ticked(out, ticks(out)[-1] + 5)
    assert_sane(out)


DROPPING_COUNTER = """
import ctypes, os, sys, time
os.setgroups([]); os.setresgid(1000, 1000, 1000); os.setresuid(1000, 1000, 1000)
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, as daemons that drop root do
n = 0
while True:
    print(n, flush=True)
    n += 1
    time.sleep(0.02)
"""


def test_dumpable_flag_kept(procs, tmp_path):
    """A program that dropped root to uid 1000 and made itself dumpable again
    (its /proc files are then its user's, who may trace and checkpoint it)
    stays dumpable: the restorer's setresuid would clear the flag."""
    out = tmp_path / "out"
    p = procs.start([sys.executable, "-c", DROPPING_COUNTER], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="counting")
    pid = p.pid
    assert os.stat(f"/proc/{pid}/status").st_uid == 1000
    for cycle in range(2):
        img = tmp_path / f"img{cycle}"
        ckpt(pid, img, "--kill")
        procs.kill(pid)
        seen = len(lines(out))
        pid = rstr(procs, img)
        wait_until(lambda: len(lines(out)) >= seen + 3, what="counting on")
        assert os.stat(f"/proc/{pid}/status").st_uid == 1000, "restored dumpable, as it was"
