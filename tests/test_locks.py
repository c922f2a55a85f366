"""File locks: POSIX, OFD and flock locks of a tree are taken again at restart
(sqlite3 in WAL mode, flock(1), a C workload); a lease is refused at
checkpoint; a lock someone took meanwhile fails the restart cleanly."""
import fcntl
import os
import sqlite3
import struct
import subprocess
import sys

import pytest

from conftest import assert_one_line_error, ckpt, run, tool, wait_until
from test_tree import assert_sane, cycles, family, start, ticked, ticks, tree

FLOCK64 = struct.Struct("@hhqqi4x")

WRITER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
n = db.execute("select count(*) from t where who = 'w'").fetchone()[0]
print("ready", flush=True)
while True:
    db.execute("insert into t values (?, 'w')", (n,))
    print(f"tick {n}", flush=True)
    n += 1
    time.sleep(0.02)
"""


def cycle(procs, tmp_path, root, out, k):
    """One checkpoint --kill / restore cycle in a directory of its own."""
    where = tmp_path / f"cycle{k}"
    where.mkdir()
    return cycles(procs, where, root, out, n=1)


def posix_holders(path):
    """PIDs holding POSIX locks on path, from /proc/locks."""
    st = os.stat(path)
    with open("/proc/locks") as f:
        rows = [line.split() for line in f if "->" not in line]
    return {int(r[4]) for r in rows if r[1] == "POSIX" and int(r[5].split(":")[2]) == st.st_ino}


def getlk(fd, cmd, start, type_=fcntl.F_WRLCK):
    """(type, pid) of the lock a request for bytes start..start+9 would meet."""
    got = fcntl.fcntl(fd, cmd, FLOCK64.pack(type_, os.SEEK_SET, start, 10, 0))
    t, _, _, _, pid = FLOCK64.unpack(got)
    return t, pid


def test_sqlite_wal_writer(procs, tmp_path):
    """A writer with an open connection in the tree, a second client here:
    the writer's locks come back under its PID, so the second client cannot
    checkpoint and delete the WAL under it, and no row is lost."""
    db_path, out = tmp_path / "db", tmp_path / "out"
    with sqlite3.connect(db_path, isolation_level=None) as db:
        db.execute("pragma journal_mode=wal")
        db.execute("create table t (n integer, who text, primary key (who, n))")
    other = sqlite3.connect(db_path, isolation_level=None, timeout=20)
    root = start(procs, sys.executable, out, "-c", WRITER, db_path)
    assert posix_holders(f"{db_path}-shm") >= {root}
    mine = 0
    for k in range(3):
        other.execute("insert into t values (?, 'o')", (mine,))
        mine += 1
        root = cycle(procs, tmp_path, root, out, k)
        assert root in posix_holders(db_path) and root in posix_holders(f"{db_path}-shm")
        last = ticks(out)[-1]
        assert other.execute("select count(*) from t where who = 'w'").fetchone()[0] > last
        ticked(out, last + 3)
    other.close()  # the last connection but for the writer's: it must not take the WAL away
    assert os.path.exists(f"{db_path}-wal")
    last = ticks(out)[-1]
    for pid in family(root):
        procs.kill(pid)
    assert_sane(out)
    with sqlite3.connect(db_path) as db:
        assert db.execute("pragma integrity_check").fetchall() == [("ok",)]
        rows = [n for n, in db.execute("select n from t where who = 'w' order by n")]
        assert rows == list(range(len(rows))) and rows[-1] >= last
        assert [n for n, in db.execute("select n from t where who = 'o' order by n")] == list(range(mine))


def test_flock_command(procs, tmp_path):
    """flock(1) holding a lock for a counting shell: the lock is held again
    after each restore. bash, as dash runs sleep through vfork, and ckpt
    cannot stop a parent in vfork once it has stopped the child."""
    lockfile, out = tmp_path / "lock", tmp_path / "out"
    loop = 'echo ready; i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.05; done'
    root = start(procs, "flock", out, lockfile, "bash", "-c", loop)
    assert run(["flock", "-n", str(lockfile), "true"]).returncode == 1
    for k in range(3):
        root = cycle(procs, tmp_path, root, out, k)
        assert run(["flock", "-n", str(lockfile), "true"]).returncode == 1


def test_posix_ofd_flock_from_outside(procs, workloads, tmp_path):
    """The locks workload checks its locks itself each tick; from here,
    F_GETLK and F_OFD_GETLK see them held by the restored processes."""
    lockfile, out = tmp_path / "lockfile", tmp_path / "out"
    lockfile.write_bytes(bytes(100))
    root = cycles(procs, tmp_path, start(procs, workloads["locks"], out, lockfile), out)
    child = next(pid for pid, parent in tree(root) if parent == root)
    fd = os.open(lockfile, os.O_RDWR)
    try:
        for cmd in (fcntl.F_GETLK, fcntl.F_OFD_GETLK):
            assert getlk(fd, cmd, 0) == (fcntl.F_WRLCK, root)
            assert getlk(fd, cmd, 20) == (fcntl.F_WRLCK, -1)
            assert getlk(fd, cmd, 40) == (fcntl.F_RDLCK, child)
            assert getlk(fd, cmd, 60)[0] == fcntl.F_UNLCK
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    ticked(out, ticks(out)[-1] + 3)


def test_lease_refused(procs, workloads, tmp_path):
    lockfile, leased, out = tmp_path / "lockfile", tmp_path / "leased", tmp_path / "out"
    lockfile.write_bytes(bytes(100))
    leased.write_bytes(b"x")
    root = start(procs, workloads["locks"], out, lockfile, leased)
    r = run([tool("ckpt"), str(root), "-o", str(tmp_path / "img")])
    err = assert_one_line_error(r)
    assert "lease" in err and str(root) in err and str(leased) in err and "fd " in err, err
    ticked(out, ticks(out)[-1] + 5)


def _workload_running(exe):
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.readlink(f"/proc/{pid}/exe") == exe:
                return True
        except OSError:
            pass
    return False


@pytest.mark.parametrize("taken", ["posix", "flock"])
def test_lock_taken_meanwhile(procs, workloads, tmp_path, taken):
    """Someone took a lock of the image meanwhile: rstr fails in one line
    naming the file and leaves nothing running (POSIX: in the restorer;
    flock: in rstr, before the tree exists)."""
    lockfile, out, img = tmp_path / "lockfile", tmp_path / "out", tmp_path / "img"
    lockfile.write_bytes(bytes(100))
    root = start(procs, workloads["locks"], out, lockfile)
    doomed = family(root)
    ckpt(root, img, "--kill")
    for pid in doomed:
        procs.kill(pid)
    fd = os.open(lockfile, os.O_RDWR)
    try:
        if taken == "posix":  # conflicts with the root's POSIX write lock on bytes 0-9 only
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, FLOCK64.pack(fcntl.F_RDLCK, os.SEEK_SET, 5, 1, 0))
        else:
            fcntl.flock(fd, fcntl.LOCK_SH)
        pidfile = tmp_path / "pid"
        r = run([tool("rstr"), "-i", str(img), "-W", "--pids", "--pidns", "--pidfile", str(pidfile)])
        if pidfile.exists():
            procs.track(int(pidfile.read_text()))
        err = assert_one_line_error(r)
        assert str(lockfile) in err and "locked" in err and (taken == "flock" or "POSIX" in err), err
        wait_until(lambda: not _workload_running(workloads["locks"]), 10, "the half-restored tree to go")
    finally:
        os.close(fd)
    assert subprocess.run(["flock", "-n", str(lockfile), "true"], timeout=10).returncode == 0
