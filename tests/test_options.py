"""rstr's options on process trees (--copies, --no-pids with threads,
--signal) and ckptinfo's view of a tree."""
import json
import os
import re
import signal
import subprocess

import pytest

from conftest import alive, ckpt, lines, run, tool, wait_until
from test_bad_input import private_exe, rstr_fails
from test_tree import failures, family, start, ticked, ticks, tree


def checkpointed(procs, exe, tmp_path, *args):
    """Starts a tree workload, checkpoints it with --kill and kills what is
    left; returns (image, output file, [(pid, parent)] of the tree)."""
    out, img = tmp_path / "out", tmp_path / "img"
    root = start(procs, exe, out, *args)
    ids = tree(root)
    doomed = family(root)
    ckpt(root, img, "--kill")
    for pid in doomed:
        procs.kill(pid)
    return img, out, ids


def nspid(pid):
    """pid as its innermost PID namespace sees it."""
    with open(f"/proc/{pid}/status") as f:
        return int([x for x in f if x.startswith("NSpid:")][0].split()[-1])


def tick_counts(out):
    counts = {}
    for n in ticks(out):
        counts[n] = counts.get(n, 0) + 1
    return counts


def test_three_copies_in_their_own_namespaces(procs, workloads, tmp_path):
    """--copies 3 --pids --pidns: three trees, each with the original PIDs in
    a PID namespace of its own. They share the output file, so each tick
    number after the checkpoint is printed three times, once by each copy;
    once one copy is killed, the others go on printing every number twice."""
    img, out, before = checkpointed(procs, workloads["multitask"], tmp_path)
    last = ticks(out)[-1]
    pidfile = tmp_path / "pids"
    r = run([tool("rstr"), "-i", str(img), "-W", "--pids", "--pidns", "--copies", "3", "--pidfile", str(pidfile)])
    roots = [int(x) for x in pidfile.read_text().split()] if pidfile.exists() else []
    for root in roots:
        for pid in family(root):
            procs.track(pid)
    assert r.returncode == 0, r.stderr
    assert pidfile.read_text().count("\n") == 3 and len(set(roots)) == 3, pidfile.read_text()
    assert len({os.readlink(f"/proc/{root}/ns/pid") for root in roots}) == 3, "each copy needs its own namespace"
    for root in roots:
        inner = [(nspid(pid), parent and nspid(parent)) for pid, parent in tree(root)]
        assert sorted(inner) == sorted(before), "each copy must have the original PIDs and parents"
    want = range(last + 1, last + 6)
    wait_until(lambda: failures(out) or all(tick_counts(out).get(n, 0) >= 3 for n in want), 30,
               "every copy to tick 5 times")
    assert not failures(out), failures(out)
    counts = tick_counts(out)
    assert all(counts[n] == 1 for n in range(last + 1)), "ticks before the checkpoint appear once"
    assert all(counts[n] == 3 for n in want), counts

    for pid in family(roots[0]):  # its PID 1 among them: the whole namespace goes
        procs.kill(pid)
    assert all(alive(root) for root in roots[1:])
    top = max(ticks(out))
    want = range(top + 1, top + 6)
    wait_until(lambda: failures(out) or all(tick_counts(out).get(n, 0) >= 2 for n in want), 30,
               "the two other copies to tick on")
    assert not failures(out), failures(out)
    assert all(tick_counts(out)[n] == 2 for n in want), tick_counts(out)


def test_copies_with_pids_need_pidns(procs, workloads, tmp_path):
    exe = private_exe(workloads, "multitask", tmp_path)
    img, _, _ = checkpointed(procs, exe, tmp_path)
    err = rstr_fails(procs, img, exe, "--copies", "2", "--pids", "--no-pidns")
    assert "--pidns" in err and "--no-pids" in err, err


def test_no_pids_with_threads_refused(procs, workloads, tmp_path):
    """glibc keeps its threads' TIDs, so new ones would be noticed: --no-pids
    is refused in one line; the default restores the original TIDs, silently."""
    exe = private_exe(workloads, "threads", tmp_path)
    img, out, before = checkpointed(procs, exe, tmp_path, "new-ids")
    last = ticks(out)[-1]
    err = rstr_fails(procs, img, exe, "--no-pids")
    assert "--no-pids" in err and "threads" in err and str(before[0][0]) in err, err
    pidfile = tmp_path / "pid"
    r = run([tool("rstr"), "-i", str(img), "-W", "--pidfile", str(pidfile)])
    if r.returncode == 0:
        for pid in family(int(pidfile.read_text())):
            procs.track(pid)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    ticked(out, last + 5)


@pytest.mark.parametrize("how", [(), ("--pids", "--pidns")], ids=["default", "pidns"])
def test_signal_forwarded_on_interrupt(procs, workloads, tmp_path, how):
    """rstr --signal TERM waits; SIGINT to rstr sends SIGTERM to the restored
    root (only), which prints a line and exits 42, and --copy-status passes
    that on."""
    img, out, _ = checkpointed(procs, workloads["termexit"], tmp_path)
    last = ticks(out)[-1]
    pidfile = tmp_path / "pid"
    r = subprocess.Popen([tool("rstr"), "-i", str(img), *how, "--signal", "TERM", "--copy-status",
                          "--pidfile", str(pidfile)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         close_fds=True)
    procs.popens.append(r)
    root = wait_until(lambda: r.poll() is not None or (pidfile.exists() and int(pidfile.read_text())),
                      what="the pidfile")
    assert r.poll() is None, r.stderr.read()
    procs.track(root)
    for pid in family(root):
        procs.track(pid)
    ticked(out, last + 5)
    r.send_signal(signal.SIGINT)
    assert r.wait(timeout=20) == 42, r.stderr.read()
    assert "root got SIGTERM" in lines(out)
    assert not failures(out), failures(out)
    wait_until(lambda: not any(alive(pid) for pid, _ in tree(root)), 10, "the restored tree to end")


@pytest.mark.parametrize("name", ["NOPE", "SIGNOPE", "-3", "99", "0"])
def test_bad_signal_is_one_clear_error(procs, workloads, tmp_path, name):
    """An unknown signal is refused before anything is restored (not when
    Ctrl-C comes and rstr cannot send it)."""
    exe = private_exe(workloads, "termexit", tmp_path)
    img, _, _ = checkpointed(procs, exe, tmp_path)
    err = rstr_fails(procs, img, exe, "--signal", name)
    assert re.search(r"\bsignal\b", err) and name in err, err


def test_ckptinfo_shows_the_tree(procs, workloads, tmp_path):
    """ckptinfo -p: every process of the zombie workload (4 zombies of the
    root, a live child with a zombie of its own), indented by depth, parents
    first, zombies marked; --json lists the same."""
    out, img = tmp_path / "out", tmp_path / "img"
    root = start(procs, workloads["zombie"], out)
    ids = tree(root)

    def state(pid):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    zombie = {pid: state(pid) == "Z" for pid, _ in ids}
    assert sum(zombie.values()) == 5 and len(ids) == 7
    depth = {None: -1}
    for pid, parent in ids:  # parents come first in tree()
        depth[pid] = depth[parent] + 1
    ckpt(root, img)
    r = run([tool("ckptinfo"), "-p", str(img)])
    assert r.returncode == 0, r.stderr
    assert "7 process(es)" in r.stdout, r.stdout
    text = r.stdout.split("task tree:\n", 1)[1].splitlines()
    shown, seen = {}, set()
    for line in text:
        m = re.match(r"^  ( *)pid (\d+) ppid (\d+) .*\((zombie|\d+ thread\(s\))\)$", line)
        assert m, f"not a task tree line: {line!r}"
        pid, ppid = int(m[2]), int(m[3])
        assert pid == root or ppid in seen, f"{pid} shown before its parent {ppid}"
        seen.add(pid)
        shown[pid] = (len(m[1]) // 2, ppid, m[4] == "zombie")
    assert shown == {pid: (depth[pid], parent or 0, zombie[pid]) for pid, parent in ids}, r.stdout
    data = json.loads(run([tool("ckptinfo"), "--json", str(img)]).stdout)
    listed = {t["pid"]: (t["ppid"], t["zombie"]) for t in data["processes"]}
    assert len(data["processes"]) == 7
    assert listed == {pid: (parent or 0, zombie[pid]) for pid, parent in ids}, data["processes"]
    ticked(out, ticks(out)[-1] + 3)  # ckpt without --kill: it runs on
