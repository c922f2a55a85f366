"""PIDs by default: real programs that wait for, signal or track their
children, checkpointed with --kill and restored with rstr's default options
(the original PIDs, here when they are free, else in a new PID namespace),
several times; sessions and groups whose leader is gone; job-control shells
and timeout; and a tree rstr cannot rebuild, refused by ckpt before it kills."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import alive, assert_one_line_error, ckpt, lines, run, tool, wait_until
from test_tree import assert_sane, failures, family, recycle, restored, start, ticked, ticks, tree


def kill_tree(procs, root):
    for pid in family(root):
        procs.kill(pid)


def ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def nspid(pid):
    with open(f"/proc/{pid}/status") as f:
        return int([x for x in f if x.startswith("NSpid:")][0].split()[-1])


def test_shell_loop_sees_its_childrens_exit_status(procs, tmp_path):
    """bash waits for `sh -c 'exit 7'`; checkpointed while that child runs,
    it must still log rc=7 after every restore."""
    log = tmp_path / "log"
    script = f"while :; do sh -c 'sleep 0.2; exit 7'; echo rc=$? >> {log}; done"
    root = procs.start(["bash", "-c", script]).pid
    wait_until(lambda: len(lines(log)) >= 2, what="two rounds")
    for cycle in range(3):
        wait_until(lambda: tree(root)[1:], what="a child to run")
        img = tmp_path / f"img{cycle}"
        doomed = family(root)
        ckpt(root, img, "--kill")
        for pid in doomed:
            procs.kill(pid)
        seen = len(lines(log))
        root = restored(procs, img)
        wait_until(lambda: len(lines(log)) >= seen + 3, what="three more rounds")
    assert set(lines(log)) == {"rc=7"}, lines(log)


MAKEFILE_TARGETS = 20


def make_project(where):
    """A small C project: 20 objects that each take a sleep to build, then a program."""
    where.mkdir()
    objs = []
    rules = []
    for k in range(MAKEFILE_TARGETS):
        (where / f"f{k}.c").write_text(f"int f{k}(void) {{ return {k}; }}\n")
        objs.append(f"f{k}.o")
        rules.append(f"f{k}.o: f{k}.c\n\tsleep 0.3\n\tcc -c f{k}.c -o f{k}.o\n")
    calls = " + ".join(f"f{k}()" for k in range(MAKEFILE_TARGETS))
    decls = "".join(f"int f{k}(void);\n" for k in range(MAKEFILE_TARGETS))
    (where / "main.c").write_text(f"{decls}int main(void) {{ return ({calls}) == 190 ? 0 : 1; }}\n")
    (where / "Makefile").write_text(f"prog: main.c {' '.join(objs)}\n\tcc -o prog main.c {' '.join(objs)}\n\n"
                                    + "\n".join(rules))


def test_make_j2_finishes(procs, tmp_path):
    """make -j2 checkpointed mid-build twice, restored, and the last time
    waited for by rstr: make exits 0 and every output exists."""
    src = tmp_path / "proj"
    make_project(src)
    root = procs.start(["make", "-j2", "-C", str(src)], stdout=tmp_path / "make.out").pid
    built = lambda: len(list(src.glob("*.o")))  # noqa: E731
    for cycle in range(3):
        wait_until(lambda: built() >= 3 * (cycle + 1) and tree(root)[1:], 60, "make to build some objects")
        img = tmp_path / f"img{cycle}"
        doomed = family(root)
        ckpt(root, img, "--kill")
        for pid in doomed:
            procs.kill(pid)
        if cycle < 2:
            root = restored(procs, img)
    r = run([tool("rstr"), "-i", str(img), "--copy-status"], timeout=120)
    assert r.returncode == 0, (r.stderr, open(tmp_path / "make.out").read())
    assert built() == MAKEFILE_TARGETS and (src / "prog").exists()
    assert subprocess.run([str(src / "prog")]).returncode == 0
    assert "No child processes" not in open(tmp_path / "make.out").read()


def test_flock_keeps_its_child(procs, tmp_path):
    """flock(1) waits for its command: after each restore the command is
    still its child, and flock passes on the command's exit status."""
    lock = tmp_path / "lock"
    root = procs.start(["flock", str(lock), "sh", "-c", "sleep 4; exit 5"]).pid
    wait_until(lambda: tree(root)[1:], what="flock's child")
    for cycle in range(3):
        img = tmp_path / f"img{cycle}"
        child = nspid(tree(root)[1][0])
        doomed = family(root)
        ckpt(root, img, "--kill")
        for pid in doomed:
            procs.kill(pid)
        if cycle == 2:
            break
        root = restored(procs, img)
        time.sleep(0.3)
        kid = tree(root)[1][0]
        assert alive(root) and ppid(kid) == root and nspid(kid) == child
    r = run([tool("rstr"), "-i", str(img), "--copy-status"])
    assert r.returncode == 5, r.stderr


# What the Python workloads below share: a line-at-a-time writer to the
# out file given as argv[1], and the root's tick loop, which also checks
# that no child of the root exits.
PROLOGUE = """
import ctypes, os, sys, time
out = sys.argv[1]
def say(msg):
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (msg + "\\n").encode())
    os.close(fd)
"""
ROOT_TICKS = """
say("ready")
n = 0
while True:
    if os.waitpid(-1, os.WNOHANG) != (0, 0):
        say("BAD a child of the root exited")
    say(f"tick {n}")
    n += 1
    time.sleep(0.05)
"""


DAEMON = PROLOGUE + """
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
sid, pgid = os.getsid(0), os.getpgrp()
if sid == os.getpid():
    say("BAD the daemon leads its session")
worker = os.fork()
if worker == 0:
    while True:
        if (os.getsid(0), os.getpgrp()) != (sid, pgid):
            say(f"BAD worker: session {os.getsid(0)} group {os.getpgrp()}, expected {sid} {pgid}")
        time.sleep(0.02)
say("ready")
n = 0
while True:
    if (os.getsid(0), os.getpgrp()) != (sid, pgid):
        say(f"BAD daemon: session {os.getsid(0)} group {os.getpgrp()}, expected {sid} {pgid}")
    if os.waitpid(worker, os.WNOHANG) != (0, 0):
        say("BAD the worker is gone")
    say(f"tick {n}")
    n += 1
    time.sleep(0.05)
"""


def daemon_pid(out):
    """The daemon: the process whose tick lines appear, found by its out file."""
    for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in argv and len(tree(pid)) == 2 and os.getsid(pid) != pid:
            return pid
    return None


@pytest.mark.parametrize("reap", [True, False], ids=["here", "leader-pid-taken"])
def test_double_forked_daemon(procs, tmp_path, reap):
    """A Python daemon (fork, setsid, fork, the parent exits) with a worker:
    its session and group are led by a PID nobody has any more. Restored
    three times, it keeps them. Unreaped, the gone leader is a zombie of ours
    and its PID is taken: the default restores in a new namespace then."""
    out = tmp_path / "out"
    procs.start([sys.executable, "-c", DAEMON, str(out)])
    wait_until(lambda: "ready" in lines(out), what="the daemon")
    root = procs.track(wait_until(lambda: daemon_pid(out), what="the daemon's PID"))
    for pid in family(root):
        procs.track(pid)
    sid = os.getsid(root)
    ticked(out, 3)
    for cycle in range(3):
        img = tmp_path / f"img{cycle}"
        doomed = family(root)
        ckpt(root, img, "--kill")
        if reap:
            for pid in doomed:
                procs.kill(pid)
        else:  # dead but not reaped: the zombies keep their PIDs
            wait_until(lambda: not any(alive(pid) for pid in doomed), what="the tree to die")
        root = restored(procs, img)
        assert len(tree(root)) == 2
        if reap:
            assert os.getsid(root) == sid and os.getpgid(root) == sid
        ticked(out, ticks(out)[-1] + 5)
    assert not failures(out)


SPLIT_GROUP = PROLOGUE + """
def member(group, parent):
    while True:
        if os.getpgrp() != group or os.getppid() != parent:
            say(f"BAD {os.getpid()}: group {os.getpgrp()} parent {os.getppid()}, expected {group} {parent}")
        time.sleep(0.02)
root = os.getpid()
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: A comes back to us
r, w = os.pipe()
leader = os.fork()
if leader == 0:  # L: its own group, a member A, then it exits
    os.setpgid(0, 0)
    if os.fork() == 0:
        os.read(r, 1)
        member(os.getpgrp(), root)
    time.sleep(0.3)
    os._exit(0)
p = os.fork()
if p == 0:  # P, in the root's group, with B in L's group
    time.sleep(0.1)
    b = os.fork()
    if b == 0:
        os.setpgid(0, leader)
        member(leader, os.getppid())
    while True:
        time.sleep(1)
os.waitpid(leader, 0)
os.write(w, b"go")
""" + ROOT_TICKS


def test_group_of_gone_leader_with_members_of_different_parents(procs, tmp_path):
    """L made a group, forked A and exited; A is the root's (a subreaper)
    now, while B, the child of the root's child P, joined L's group. The
    group comes back with its number and both members, each with its parent."""
    out = tmp_path / "out"
    root = procs.start([sys.executable, "-c", SPLIT_GROUP, str(out)], stdout=out).pid
    ticked(out, 3)
    before = {nspid(pid): os.getpgid(pid) for pid, _ in tree(root)}
    assert len(before) == 4 and len(set(before.values())) == 2, before
    for cycle in range(3):
        img = tmp_path / f"img{cycle}"
        root = recycle(procs, root, img)
        after = {nspid(pid): pid for pid, _ in tree(root)}
        assert after.keys() == before.keys()
        if all(k == v for k, v in after.items()):  # restored here: the group ids are the same too
            assert {pid: os.getpgid(pid) for pid in after} == before
        ticked(out, ticks(out)[-1] + 5)
    assert not failures(out)


CHAIN = PROLOGUE + """
root = os.getpid()
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
if os.fork() == 0:  # L: a session; G: a group in it; X: in both, once both are gone
    os.setsid()
    if os.fork() == 0:
        os.setpgid(0, 0)
        if os.fork() == 0:
            while os.getppid() != root:
                time.sleep(0.01)
            want = (os.getsid(0), os.getpgrp(), root)
            while True:
                if (os.getsid(0), os.getpgrp(), os.getppid()) != want:
                    say(f"BAD X: {os.getsid(0)} {os.getpgrp()} {os.getppid()}, expected {want}")
                time.sleep(0.02)
        os._exit(0)
    time.sleep(0.2)
    os._exit(0)
reaped = 0
while reaped < 2:
    os.waitpid(-1, 0)
    reaped += 1
""" + ROOT_TICKS


def test_gone_session_and_gone_group_in_it(procs, tmp_path):
    """X is in a session and a group whose leaders (L, G: a triple fork) are
    both gone, and the root's child now: a chain of two placeholders (G's born
    in L's session) brings both back; the root reaps both placeholders."""
    out = tmp_path / "out"
    root = procs.start([sys.executable, "-c", CHAIN, str(out)]).pid
    ticked(out, 3)
    (x, _), = tree(root)[1:]
    ids = (os.getsid(x), os.getpgid(x))
    assert len(set(ids + (x, root))) == 4
    for cycle in range(3):
        img = tmp_path / f"img{cycle}"
        root = recycle(procs, root, img)
        (x, _), = tree(root)[1:]
        if nspid(root) == root:
            assert (os.getsid(x), os.getpgid(x)) == ids
        ticked(out, ticks(out)[-1] + 5)
    assert not failures(out)


def test_unrestorable_tree_refused_before_kill(procs, tmp_path):
    """A session whose leader L is gone, with members of different parents:
    C is the root's (a subreaper), B is the child of A, which left the
    session (setsid) after forking B. rstr could not rebuild it, so ckpt
    refuses it in one line, with or without --kill, and it runs on."""
    code = textwrap.dedent("""
        import ctypes, os, sys, time
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
        out = sys.argv[1]
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                if os.fork() == 0:  # B stays in L's session
                    while True: time.sleep(1)
                time.sleep(0.2)
                os.setsid()         # A leaves it
                while True: time.sleep(1)
            if os.fork() == 0:     # C
                while True: time.sleep(1)
            time.sleep(0.4)
            os._exit(0)
        os.wait()
        open(out, "w").write("ready\\n")
        while True: time.sleep(1)
    """)
    out = tmp_path / "out"
    root = procs.start([sys.executable, "-c", code, str(out)]).pid
    wait_until(lambda: "ready" in lines(out), what="the tree")
    members = tree(root)
    for pid, _ in members:
        procs.track(pid)
    assert len(members) == 4
    for extra in (["--kill"], []):
        img = tmp_path / "img"
        r = run([tool("ckpt"), str(root), "-o", str(img), *extra])
        err = assert_one_line_error(r)
        assert "session" in err and "different parents" in err, err
        assert not img.exists()
        time.sleep(0.2)
        assert tree(root) == members and all(alive(pid) for pid, _ in members)
        states = [open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] for pid, _ in members]
        assert "t" not in states and "T" not in states, states


COUNTER_SCRIPT = """
set -m
cd {dir}
{counter} 20 > out &
pid=$!
sleep 0.3
for i in 1 2 3 4 5; do
    {ckpt} $pid -o img$i --kill || exit 10
    {rstr} -i img$i -W --pidfile pid$i || exit 20
    pid=$(cat pid$i)
    sleep 0.3
done
echo $pid > last
"""


@pytest.mark.parametrize("under", [[], ["timeout", "600"]], ids=["set-m", "timeout"])
def test_counter_cycled_from_job_control_shell(procs, workloads, tmp_path, under):
    """A `set -m` script (every job its own group) checkpoints and restores
    a counter five times with rstr -W, plain and under timeout(1) (which
    puts itself and the script in a group of its own). The killed counter
    stays a zombie of ours meanwhile, so later restores take a new namespace."""
    script = COUNTER_SCRIPT.format(dir=tmp_path, counter=workloads["counter"], ckpt=tool("ckpt"),
                                   rstr=tool("rstr"))
    p = procs.start([*under, "bash", "-c", script], stdout=tmp_path / "script.out")
    try:
        code = p.wait(timeout=120)
    finally:
        for f in tmp_path.glob("pid*"):
            for pid in family(int(f.read_text())):
                procs.track(pid)
    assert code == 0, open(tmp_path / "script.out").read()
    last = int((tmp_path / "last").read_text())
    values = [int(x) for x in lines(tmp_path / "out")]
    n = len(values)
    wait_until(lambda: len(lines(tmp_path / "out")) >= n + 5, what="the counter to go on")
    values = [int(x) for x in lines(tmp_path / "out")]
    assert values == list(range(len(values)))
    assert alive(last)


def test_default_falls_back_to_a_new_namespace(procs, workloads, tmp_path):
    """The original keeps running, so its PID is taken: by default rstr
    restores with the original PID in a new PID namespace, says so only
    with -v; --pids --no-pidns fails naming the PID."""
    out = tmp_path / "out"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="counter")
    img = tmp_path / "img"
    ckpt(p.pid, img)
    for verbose in ([], ["-v"]):
        pidfile = tmp_path / f"pid{len(verbose)}"
        r = run([tool("rstr"), "-i", str(img), "-W", "--pidfile", str(pidfile), *verbose])
        assert r.returncode == 0, r.stderr
        pid = int(pidfile.read_text())
        for q in family(pid):
            procs.track(q)
        assert nspid(pid) == p.pid and pid != p.pid
        if verbose:
            assert f"PID {p.pid} is in use" in r.stderr and "new PID namespace" in r.stderr, r.stderr
        else:
            assert r.stderr == ""
    r = run([tool("rstr"), "-i", str(img), "-W", "--pids", "--no-pidns"])
    assert f"PID {p.pid} is in use" in assert_one_line_error(r)


def test_lone_process_may_take_new_pids(procs, workloads, tmp_path):
    out = tmp_path / "out"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="counter")
    root = p.pid
    for cycle in range(3):
        img = tmp_path / f"img{cycle}"
        ckpt(root, img, "--kill")
        procs.kill(root)
        old, root = root, restored(procs, img, "--no-pids")
        assert nspid(root) == root and root != old
        n = len(lines(out))
        wait_until(lambda: len(lines(out)) >= n + 3, what="the counter to go on")
    values = [int(x) for x in lines(out)]
    assert values == list(range(len(values)))


def test_killed_tree_comes_back_with_its_pids_once_its_zombies_are_reaped(procs, workloads, tmp_path):
    """ckpt --kill returns once every task of the tree has exited. The
    orphans are then zombies of their new parent until it reaps them (this
    machine's init does every ~2 s; here this test, the subreaper, reaps one
    1 s late on purpose): rstr waits for those PIDs instead of taking a new
    PID namespace, and the tree comes back with its PIDs here."""
    out = tmp_path / "out"
    root = start(procs, workloads["multitask"], out)
    img = tmp_path / "img"
    doomed = [pid for pid, _ in tree(root)]
    ckpt(root, img, "--kill")
    states = {pid: _state(pid) for pid in doomed}
    assert set(states.values()) <= {"Z", None}, states
    os.waitpid(root, 0)
    orphans = [pid for pid in doomed[1:] if _state(pid) == "Z" and ppid(pid) == os.getpid()]
    assert orphans, "no zombie left to wait for"
    late = threading.Timer(1.0, lambda: [os.waitpid(pid, 0) for pid in orphans])
    late.start()
    try:
        pidfile = tmp_path / "pid"
        r = run([tool("rstr"), "-i", str(img), "-W", "-v", "--pidfile", str(pidfile)])
    finally:
        late.join(timeout=10)
    assert r.returncode == 0 and "in this PID namespace" in r.stderr, r.stderr
    back = [procs.track(pid) for pid, _ in tree(int(pidfile.read_text()))]
    assert sorted(back) == sorted(doomed) and all(nspid(pid) == pid for pid in back)
    seen = len(ticks(out))
    wait_until(lambda: len(ticks(out)) >= seen + 3, what="the restored tree to tick")
    assert_sane(out)


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None
