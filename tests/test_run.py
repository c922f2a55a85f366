"""usercr run: CMD as PID 1 of a new PID namespace, the waiter outside, and a
workload started that way checkpointed and restored with its PID."""
import os
import signal
import subprocess

import pytest

from conftest import assert_one_line_error, ckpt, lines, rstr, run, tool, wait_until

# A CMD that reports each forwarded signal it gets (as a namespace's PID 1 it
# only receives signals it has a handler for) and exits with status 3.
TRAPPING = "for s in INT TERM HUP USR1 USR2; do trap \"echo got $s; exit 3\" $s; done; echo ready; " \
           "while :; do sleep 0.05; done"


def usercr_run(*args, **kw):
    return run([tool("usercr"), "run", *args], **kw)


def nspid(pid):
    with open(f"/proc/{pid}/status") as f:
        return [ln for ln in f if ln.startswith("NSpid:")][0].split()[1:]


def read_pid(pidfile):
    text = pidfile.read_text() if pidfile.exists() else ""
    return int(text) if text.strip() else None


def last_int(path):
    got = [int(x) for x in lines(path) if x.isdigit()]
    return got[-1] if got else None


def start_waiter(procs, tmp_path, cmd, *opts, out=None):
    """Starts `usercr run` with a pidfile; returns (waiter Popen, CMD's PID); both are cleaned up."""
    pidfile = tmp_path / f"run-{len(procs.pids)}.pid"
    w = procs.start([tool("usercr"), "run", "--pidfile", str(pidfile), *opts, "--", *cmd],
                    stdout=out or subprocess.DEVNULL)
    pid = procs.track(wait_until(lambda: read_pid(pidfile), what="the pidfile"))
    return w, pid


def test_cmd_is_pid_1_of_a_new_namespace():
    r = usercr_run("--", "sh", "-c", "echo $$")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"


def test_no_pidns_runs_a_plain_child():
    r = usercr_run("--no-pidns", "--", "sh", "-c", "echo $$")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) != 1


def test_ipc_namespace():
    mine = os.readlink("/proc/self/ns/ipc")
    new = usercr_run("--no-pidns", "--", "readlink", "/proc/self/ns/ipc")
    same = usercr_run("--no-ipcns", "--", "readlink", "/proc/self/ns/ipc")
    assert new.returncode == 0 and same.returncode == 0, (new.stderr, same.stderr)
    assert new.stdout.strip() != mine
    assert same.stdout.strip() == mine


def test_pidfile_holds_the_outer_pid(procs, tmp_path):
    w, pid = start_waiter(procs, tmp_path, ["sleep", "30"])
    ns = nspid(pid)
    assert ns[0] == str(pid) and ns[-1] == "1", ns
    assert len(ns) == len(nspid("self")) + 1
    with open(f"/proc/{pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == w.pid, "the waiter must be CMD's parent"
    assert os.readlink(f"/proc/{pid}/exe").endswith("sleep"), "the pidfile is written once CMD runs"


def test_exit_status_propagates():
    assert usercr_run("--", "sh", "-c", "exit 7").returncode == 7
    assert usercr_run("--", "true").returncode == 0
    # A namespace's PID 1 cannot kill itself with a signal; a plain child can.
    assert usercr_run("--no-pidns", "--", "sh", "-c", "kill -9 $$").returncode == 128 + 9


@pytest.mark.parametrize("opts", [[], ["--no-pidns", "--no-ipcns"]])
def test_missing_command(opts):
    r = usercr_run(*opts, "--", "/nonexistent/usercr-test-command", "arg")
    err = assert_one_line_error(r)
    assert r.returncode == 1
    assert err == "usercr run: error: cannot run /nonexistent/usercr-test-command: No such file or directory"


def test_not_executable(tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    r = usercr_run("--", str(script))
    assert r.returncode == 1
    assert "Permission denied" in assert_one_line_error(r)


def test_no_command_and_unknown_option():
    r = usercr_run()
    assert r.returncode == 2 and "missing argument CMD" in assert_one_line_error(r)
    r = usercr_run("--bogus", "--", "true")
    assert r.returncode == 2 and "no such option: --bogus" in assert_one_line_error(r)


@pytest.mark.parametrize("sig", ["INT", "TERM", "HUP", "USR1", "USR2"])
def test_signals_are_forwarded(procs, tmp_path, sig):
    out = tmp_path / "out"
    w, pid = start_waiter(procs, tmp_path, ["sh", "-c", TRAPPING], out=out)
    wait_until(lambda: "ready" in lines(out), what="CMD to set its traps")
    os.kill(w.pid, getattr(signal, f"SIG{sig}"))
    assert w.wait(timeout=20) == 3
    assert lines(out)[-1] == f"got {sig}"


def test_restored_as_pid_1_of_a_new_namespace(procs, workloads, tmp_path):
    """ckpt the PID from --pidfile, then rstr --pids --pidns: the counter goes on as PID 1."""
    out, img = tmp_path / "out", tmp_path / "img"
    w, pid = start_waiter(procs, tmp_path, [workloads["counter"], "20"], out=out)
    wait_until(lambda: (last_int(out) or 0) >= 5, what="counter to reach 5")
    ckpt(pid, img, "--kill")
    assert w.wait(timeout=20) == 128 + 9, "the waiter exits as CMD did"
    saved = last_int(out)
    restored = rstr(procs, img, "--pids", "--pidns")
    wait_until(lambda: last_int(out) >= saved + 5, what="restored counter to go on")
    values = [int(x) for x in lines(out)]
    assert values == list(range(len(values))), "the restored counter must go on from the saved value"
    assert nspid(restored)[-1] == "1", nspid(restored)


def tree_nspids(root):
    """The innermost PID of root and of each of its descendants."""
    found, out = [root], []
    for pid in found:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        out.append(int(nspid(pid)[-1]))
    return sorted(out)


def test_tree_restored_with_the_same_pids(procs, workloads, tmp_path):
    """A tree started under usercr run comes back with every PID it had in its namespace."""
    out, img = tmp_path / "out", tmp_path / "img"
    w, pid = start_waiter(procs, tmp_path, [workloads["multitask"]], out=out)
    ticks = lambda: [x for x in lines(out) if x.startswith(("tick ", "BAD"))]  # noqa: E731
    wait_until(lambda: len(ticks()) >= 3, what="3 ticks")
    before = tree_nspids(pid)
    assert before == list(range(1, 8)), before
    ckpt(pid, img, "--kill")
    assert w.wait(timeout=20) == 128 + 9
    n = len(ticks())
    restored = rstr(procs, img, "--pids", "--pidns")
    wait_until(lambda: len(ticks()) >= n + 3, what="the restored tree to tick on")
    assert tree_nspids(restored) == before
    got = ticks()
    assert got == [f"tick {i}" for i in range(len(got))], got[-3:]
