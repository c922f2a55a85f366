"""Rootless use: a user other than root checkpoints and restores its own
processes, with CAP_CHECKPOINT_RESTORE (ambient, or a file capability on a
copy of the Python interpreter) and without; root checkpoints a user's
processes. The suite runs as root and drops to nobody with setpriv."""
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile

import pytest

from conftest import HERE, alive, assert_one_line_error, ckpt, run, tool, wait_until
from test_leftovers import assert_same_layouts, layouts
from test_tree import family, start, ticked, ticks

USER = pwd.getpwnam("nobody")
AMBIENT = ["--inh-caps", "+checkpoint_restore", "--ambient-caps", "+checkpoint_restore"]
PATHS = [os.path.dirname(HERE), sysconfig.get_paths()["purelib"]]
LAUNCH = ("import sys; sys.path[:0] = {paths!r}; from usercr.cli import {cmd}_main; sys.argv[0] = {cmd!r}; "
          "sys.exit({cmd}_main())")


def reachable(path):
    """Whether any user can run path: the file and every directory above it."""
    path = os.path.realpath(path)
    if not os.stat(path).st_mode & stat.S_IXOTH:
        return False
    while path != "/":
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
    return True


def user_python():
    """An interpreter of this Python's version that nobody can run (the
    venv's may live under /root)."""
    v = sys.version_info
    for exe in (sys.executable, f"/usr/bin/python{v.major}.{v.minor}", f"/usr/local/bin/python{v.major}.{v.minor}"):
        if os.path.exists(exe) and reachable(exe):
            return os.path.realpath(exe)
    if not os.stat("/").st_mode & stat.S_IXOTH:  # a chroot made 0700 (../shared/fresh-check): no user runs anything
        pytest.skip("/ is closed to other users here: no unprivileged user can run a program")
    pytest.fail(f"no Python {v.major}.{v.minor} that user nobody can run")


@pytest.fixture
def home():
    """A directory of nobody's own for its images and outputs."""
    d = tempfile.mkdtemp(prefix="usercr-rootless-")
    os.chown(d, USER.pw_uid, USER.pw_gid)
    yield d
    shutil.rmtree(d)


class User:
    """Runs workloads and usercr as nobody; how: None (no capability),
    "ambient" or "file" (setcap on a copy of the interpreter)."""

    def __init__(self, home, how):
        self.home, self.caps, self.python = home, AMBIENT if how == "ambient" else [], user_python()
        if how == "file":
            copy = os.path.join(home, "python-cr")
            shutil.copy(self.python, copy)
            subprocess.run(["setcap", "cap_checkpoint_restore+ep", copy], check=True)
            self.python = copy

    def setpriv(self, *argv, caps=True):
        return ["setpriv", f"--reuid={USER.pw_uid}", f"--regid={USER.pw_gid}", "--clear-groups",
                *(self.caps if caps else []), *map(str, argv)]

    def usercr(self, cmd, *args, caps=True):
        return run(self.setpriv(self.python, "-c", LAUNCH.format(paths=PATHS, cmd=cmd), *args, caps=caps))

    def file(self, name):
        """A file of nobody's in its home (the restored program reopens it as nobody)."""
        path = os.path.join(self.home, name)
        open(path, "w").close()
        os.chown(path, USER.pw_uid, USER.pw_gid)
        return path

    def start(self, procs, workload, out):
        """The workload, without capabilities, as nobody; returns its PID once it ticks."""
        return start(procs, "setpriv", out, *self.setpriv(workload, caps=False)[1:])

    def checkpoint_killed(self, procs, root, img):
        doomed = family(root)
        r = self.usercr("ckpt", root, "-o", img, "--kill")
        assert r.returncode == 0, r.stderr
        for pid in doomed:
            procs.kill(pid)
        return r

    def restored(self, procs, img, *how):
        pidfile = os.path.join(self.home, "rstr.pid")
        r = self.usercr("rstr", "-i", img, "-W", "--pidfile", pidfile, *how)
        assert r.returncode == 0, r.stderr
        root = procs.track(int(open(pidfile).read()))
        for pid in family(root):
            procs.track(pid)
        return root, r


def status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


def assert_nobody_without_caps(pid):
    st = status(pid)
    assert st["Uid"].split() == [str(USER.pw_uid)] * 4 and st["Gid"].split() == [str(USER.pw_gid)] * 4
    assert [st[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")] == ["0000000000000000"] * 4


@pytest.mark.parametrize("how", ["ambient", "file"])
def test_own_tree_with_capability(procs, workloads, home, how):
    """Three cycles of a tree of processes with threads and pipes, by nobody
    holding CAP_CHECKPOINT_RESTORE: original PIDs, the exe link, and the
    processes get exactly their own creds back, without rstr's capability."""
    u = User(home, how)
    out = u.file("out")
    root = u.start(procs, workloads["multitask"], out)
    before = layouts(root)
    for cycle in range(3):
        pids = sorted(family(root))
        u.checkpoint_killed(procs, root, os.path.join(home, f"img{cycle}"))
        last = ticks(out)[-1]
        root, r = u.restored(procs, os.path.join(home, f"img{cycle}"))
        assert r.stderr == ""
        ticked(out, last + 5)
        assert sorted(family(root)) == pids
        assert_same_layouts(before, layouts(root))  # the restorer region is gone too
        for pid in family(root):
            assert_nobody_without_caps(pid)
            assert os.readlink(f"/proc/{pid}/exe") == workloads["multitask"]


def test_without_capability(procs, workloads, home):
    """Without the capability ckpt works from the mapped files' paths; rstr
    refuses the original PIDs in one line naming the capability and how to
    grant it, leaving nothing; --no-pids of a lone process restores it with
    one warning that /proc/PID/exe names the interpreter."""
    u = User(home, None)
    out = u.file("out")
    pid = procs.start(u.setpriv(workloads["counter"]), stdout=out).pid
    wait_until(lambda: len(open(out).read().split()) > 3, what="3 counts")
    img = os.path.join(home, "img")
    u.checkpoint_killed(procs, pid, img)
    count = len(open(out).read().split())
    err = assert_one_line_error(u.usercr("rstr", "-i", img, "-W"))
    assert "CAP_CHECKPOINT_RESTORE" in err and "setcap" in err and "--ambient-caps" in err, err
    assert not alive(pid) and count == len(open(out).read().split())
    root, r = u.restored(procs, img, "--no-pids")
    warnings = r.stderr.splitlines()
    assert len(warnings) == 1 and "/proc/PID/exe" in warnings[0] and "CAP_CHECKPOINT_RESTORE" in warnings[0], r.stderr
    wait_until(lambda: len(open(out).read().split()) > count + 5, what="5 more counts")
    numbers = [int(x) for x in open(out).read().split()]
    assert numbers == list(range(len(numbers)))
    assert_nobody_without_caps(root)
    assert open(f"/proc/{root}/cmdline").read().split("\0")[0] == workloads["counter"]


def test_more_capabilities_than_rstr_refused(procs, workloads, home):
    """A process that had CAP_CHECKPOINT_RESTORE is not restored by a user
    without it: the restored process would gain it."""
    u = User(home, "ambient")
    out = u.file("out")
    pid = procs.start(u.setpriv(workloads["counter"]), stdout=out).pid
    wait_until(lambda: len(open(out).read().split()) > 3, what="3 counts")
    img = os.path.join(home, "img")
    u.checkpoint_killed(procs, pid, img)
    err = assert_one_line_error(u.usercr("rstr", "-i", img, "-W", "--no-pids", caps=False))
    assert "capabilities rstr does not have" in err, err


def test_other_users_image_refused(procs, workloads, home):
    """An image of root's process, readable by nobody, is refused by nobody's rstr: it cannot have root's uid."""
    u = User(home, "ambient")
    out = os.path.join(home, "root-out")
    pid = procs.start([workloads["counter"]], stdout=out).pid
    wait_until(lambda: len(open(out).read().split()) > 3, what="3 counts")
    img = os.path.join(home, "img")
    ckpt(pid, img)
    os.chmod(img, 0o644)
    err = assert_one_line_error(u.usercr("rstr", "-i", img, "-W", "--no-pids"))
    assert "uid 0" in err and "needs root" in err, err
    assert alive(pid)


def test_mapped_file_covered_refused_without_capability(procs, workloads, home):
    """Without /proc/PID/map_files a mapped file is found by its path; when
    that path now names another file (a mount over its directory), ckpt
    refuses in one line and the process runs on. With the capability it works."""
    u = User(home, None)
    bindir = os.path.join(home, "bin")
    os.mkdir(bindir)
    exe = os.path.join(bindir, "counter")
    shutil.copy(workloads["counter"], exe)
    out = u.file("out")
    pid = procs.start(u.setpriv(exe), stdout=out).pid
    wait_until(lambda: len(open(out).read().split()) > 3, what="3 counts")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", bindir], check=True)
    try:
        shutil.copy(workloads["counter"], exe)
        err = assert_one_line_error(u.usercr("ckpt", pid, "-o", os.path.join(home, "img")))
        assert f"cannot stat {exe}" in err and "another file" in err and "CAP_CHECKPOINT_RESTORE" in err, err
        count = len(open(out).read().split())
        wait_until(lambda: len(open(out).read().split()) > count + 3, what="the process to run on")
        r = User(home, "ambient").usercr("ckpt", pid, "-o", os.path.join(home, "img"))
        assert r.returncode == 0, r.stderr
    finally:
        subprocess.run(["umount", bindir], check=True)


def test_root_checkpoints_users_tree(procs, workloads, home):
    """Root checkpoints nobody's tree and restores it: the processes are nobody's again."""
    u = User(home, None)
    out = u.file("out")
    root = u.start(procs, workloads["multitask"], out)
    before = sorted(family(root))
    img = os.path.join(home, "img")
    for pid in before:
        assert status(pid)["Uid"].split()[0] == str(USER.pw_uid)
    doomed = family(root)
    ckpt(root, img, "--kill")
    for pid in doomed:
        procs.kill(pid)
    last = ticks(out)[-1]
    pidfile = os.path.join(home, "root.pid")
    r = run([tool("rstr"), "-i", img, "-W", "--pidfile", pidfile])
    assert r.returncode == 0, r.stderr
    root = procs.track(int(open(pidfile).read()))
    for pid in family(root):
        procs.track(pid)
    ticked(out, last + 5)
    assert sorted(family(root)) == before
    for pid in family(root):
        assert_nobody_without_caps(pid)


@pytest.mark.parametrize("how", [None, "ambient", "file"])
def test_check_per_user(home, how):
    """usercr check says what nobody can do; with the capability everything
    it needs is there (also from a Python with a file capability, which is
    not dumpable: the probes look at a process like the ones ckpt saves)."""
    r = User(home, how).usercr("usercr", "check")
    row = next(x for x in r.stdout.splitlines() if "this user" in x)
    if how:
        assert row.startswith("ok") and "has CAP_CHECKPOINT_RESTORE" in row, row
        assert r.returncode == 0, r.stdout
    else:
        assert row.startswith("missing") and "setcap" in row and r.returncode == 1, row


def test_due_timerfds_without_timer_list(procs, workloads, home):
    """nobody's ckpt cannot read /proc/timer_list (root only), so it cannot
    see whether a timerfd reading 0 left is due with its interrupt not yet
    served; it waits a little for the timer's ticks to move instead. The
    disarmed timer of timerfd_due stays disarmed, its 64 fast timers keep
    expiring. (Whether a due one is caught is test_anonfds' part: as nobody,
    ckpt reads the timers too late after the freeze to find one due.)"""
    assert not os.stat("/proc/timer_list").st_mode & stat.S_IROTH
    u = User(home, "ambient")
    out = u.file("out")
    root = u.start(procs, workloads["timerfd_due"], out)
    for cycle in range(3):
        img = os.path.join(home, f"img{cycle}")
        u.checkpoint_killed(procs, root, img)
        last = ticks(out)[-1]
        root, _ = u.restored(procs, img)
        ticked(out, last + 5)
