"""Self-checkpoint (usercr.checkpoint_self, C usercr_checkpoint_self): a
program writes its own image and goes on; killed and restored with rstr, the
copy learns it was restored and carries on counting, three cycles."""
import os
import re
import subprocess
import sys

import pytest

from conftest import lines, rstr, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
SRC = os.path.join(HERE, "selfckpt")
NATIVE = os.path.join(TOP, "usercr", "native")
BIN_DIR = os.path.dirname(sys.executable)
EVERY = 15


def _env():
    # the C library finds the helper usercr-selfckpt on PATH
    return dict(os.environ, PATH=BIN_DIR + os.pathsep + os.environ.get("PATH", ""))


@pytest.fixture(scope="module")
def c_counter(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("self") / "counter_self")
    subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-I", os.path.join(NATIVE, "include"), "-o", exe,
                    os.path.join(SRC, "counter_self.c"), "-L", NATIVE, "-lusercr"], check=True)
    return exe


def _find(log, start, pattern):
    """(index, match) of the first line from start matching pattern, or None."""
    for i, line in enumerate(lines(log)[start:], start):
        m = re.fullmatch(pattern, line)
        if m:
            return i, m
    return None


def _counts(log, n, before):
    """The counters of the last 'tick n' line before index `before`."""
    found = [ln for ln in lines(log)[:before] if ln.startswith(f"tick {n} ")]
    return [int(x) for x in found[-1].split()[2:]]


def _cycles(procs, argv, img, log, no, yes, cycles=3, rstr_args=()):
    pid = procs.start(argv, env=_env()).pid
    pos = 0
    for cycle in range(cycles):
        at, m = wait_until(lambda: _find(log, pos, rf"ckpt \d+ {no}|error .*"), 60, "a self-checkpoint")
        procs.kill(pid)
        assert not m.group(0).startswith("error"), m.group(0)
        pid = rstr(procs, img, *rstr_args)
        at, m = wait_until(lambda: _find(log, at, rf"ckpt (\d+) {yes}"), what="the restored copy's answer")
        n = int(m.group(1))
        assert n >= EVERY * (cycle + 1)
        before = _counts(log, n, at)
        _, nxt = wait_until(lambda: _find(log, at, rf"tick {n + 2} (.*)"), what="counting to go on")
        after = [int(x) for x in nxt.group(1).split()]
        # every counter (the C one's first is the tick) came back with its value and goes on
        assert len(after) == len(before) and all(a > b > 0 for a, b in zip(after, before)), (before, after)
        pos = at + 1
    procs.kill(pid)


@pytest.mark.parametrize("threads", [0, 2])
def test_python_checkpoint_self(procs, tmp_path, threads):
    img, log = tmp_path / "self.img", tmp_path / "log"
    _cycles(procs, [sys.executable, os.path.join(SRC, "counter_self.py"), str(img), str(log), str(EVERY),
                    str(threads)], img, log, "False", "True")
    assert {len(ln.split()) for ln in lines(log) if ln.startswith("tick ")} == {2 + threads}


def test_c_checkpoint_self(procs, tmp_path, c_counter):
    img, log = tmp_path / "self.img", tmp_path / "log"
    _cycles(procs, [c_counter, str(img), str(log), str(EVERY)], img, log, "0", "1")


def test_c_failure_leaves_program_running(procs, tmp_path, c_counter):
    img, log = tmp_path / "missing" / "self.img", tmp_path / "log"
    pid = procs.start([c_counter, str(img), str(log), "3"], env=_env()).pid
    _, m = wait_until(lambda: _find(log, 0, r"error 3 (.*)"), what="the failure")
    assert "cannot create" in m.group(1) and "No such file or directory" in m.group(1), m.group(1)
    wait_until(lambda: _find(log, 0, r"error 6 .*"), what="the program to go on")
    assert not img.exists()
    procs.kill(pid)


def test_c_without_helper(procs, tmp_path, c_counter):
    log = tmp_path / "log"
    env = dict(_env(), USERCR_SELFCKPT=str(tmp_path / "no-such-helper"))
    pid = procs.start([c_counter, str(tmp_path / "img"), str(log), "2"], env=env).pid
    _, m = wait_until(lambda: _find(log, 0, r"error 2 (.*)"), what="the failure")
    assert "did not start" in m.group(1)
    wait_until(lambda: _find(log, 0, r"tick 4 .*"), what="the program to go on")
    procs.kill(pid)


def test_python_failure_raises(tmp_path):
    code = ("import sys, usercr\n"
            "try:\n    usercr.checkpoint_self(sys.argv[1])\nexcept usercr.Error as e:\n"
            "    print(type(e).__name__, e)\nprint('alive')\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing" / "img")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first.startswith("Error self-checkpoint: cannot create") and second == "alive", r.stdout


def test_check_names_the_self_checkpoint_path():
    r = subprocess.run([os.path.join(BIN_DIR, "usercr"), "check"], capture_output=True, text=True, timeout=60)
    row = [ln for ln in r.stdout.splitlines() if "self-checkpoint" in ln]
    assert row and row[0].startswith("ok") and "ptrace engine run by a helper" in row[0], r.stdout


def test_c_checkpoint_self_in_new_pidns(procs, tmp_path, c_counter):
    """A copy restored into a new PID namespace checkpoints itself again: its
    helper sees that namespace's PIDs (a /proc of its own)."""
    if not os.path.ismount("/"):  # a chroot (../shared/fresh-check): no private mount of / to put the /proc under
        pytest.skip("/ is not a mount point here: the helper cannot mount a /proc of its own privately")
    img, log = tmp_path / "self.img", tmp_path / "log"
    _cycles(procs, [c_counter, str(img), str(log), str(EVERY)], img, log, "0", "1", rstr_args=("--pidns",))
