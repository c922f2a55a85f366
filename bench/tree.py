"""Tree benchmarks (not tests): ckpt and rstr of a 4-process and a 64-process
tree of small C processes (bench/tree.c, compiled here with gcc) that pass a
token around a ring of pipes. Images on tmpfs, median of 5. The tree is
checkpointed without --kill, so one tree serves all five dumps; each restore
(`rstr --pids --pidns -W`) is timed until rstr returns, when every task is
restored and released, and is then killed by PID (the restored tasks and the
namespace's reaper). Prints seconds, the cost per task, the 64/4 ratio (16
if the time were proportional to the number of tasks), and, from the two
sizes, the cost of each extra task and the fixed cost of a run. With a CRIU
binary (run.py --criu), CRIU dumps a fresh copy of each tree every run (its
dump kills the tree) and restores it with its PIDs (`criu restore -d`).
Run alone (python bench/tree.py) or as part of bench/run.py."""
import ctypes
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from run import BIN, RUNS, TMPFS, alive, pass_limit, timed

HERE = os.path.dirname(os.path.abspath(__file__))
PR_SET_CHILD_SUBREAPER = 36
TREES = (("4 tasks", ["3"], 4), ("64 tasks", ["3", "4", "4"], 64))


def wait_until(cond, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def tree_pids(root):
    """root and all its descendants, from /proc/PID/task/TID/children."""
    found = [root]
    for pid in found:  # grows while we walk it
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    found += [int(c) for c in f.read().split()]
        except OSError:  # ended meanwhile
            pass
    return found


def whole_tree(root, ntasks):
    """The set of the tree's PIDs once it has all ntasks tasks, else None."""
    got = tree_pids(root)
    return set(got) if len(got) == ntasks else None


def reap():
    """We are a subreaper: collect every orphan that ended."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def kill_all(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: (reap() or True) and not any(alive(pid) for pid in pids), "killed tasks to end", 10)


def build(tmp):
    exe = os.path.join(tmp, "tree")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", exe, os.path.join(HERE, "tree.c")], check=True)
    return exe


def lines(path):
    with open(path) as f:
        return f.read().splitlines()


def laps(path):
    got = [int(x.split()[1]) for x in lines(path) if x.startswith("lap ")]
    return got[-1] if got else 0


def stdout_pos(pid):
    """The offset of pid's fd 1: it grows only while that copy of the tree runs."""
    with open(f"/proc/{pid}/fdinfo/1") as f:
        return int(f.readline().split()[1])


def measure(exe, fanouts, ntasks, tmp, runs):
    """(median dump s, median restore s, image bytes, median python3 -c pass s) for one tree."""
    out, img, pidfile = (os.path.join(tmp, name) for name in ("tree.out", "tree.img", "tree.pid"))
    # O_APPEND: rstr checks the size of other files, and this one grows. Each copy
    # of the tree still has its own offset, which moves only when that copy writes.
    with open(out, "a") as f:
        p = subprocess.Popen([exe, *fanouts], stdout=f, stdin=subprocess.DEVNULL, close_fds=True,
                             start_new_session=True)
    dumps, restores, passes = [], [], []
    try:
        wait_until(lambda: "ready" in lines(out), "the tree to be ready")
        pids = wait_until(lambda: whole_tree(p.pid, ntasks), f"{ntasks} tasks")
        for _ in range(runs):
            dumps.append(timed([os.path.join(BIN, "ckpt"), str(p.pid), "-o", img, "-f"]))
        before = laps(out)
        wait_until(lambda: laps(out) > before, "the checkpointed tree to go on")
        assert set(tree_pids(p.pid)) == pids, "the checkpointed tree must keep all its tasks"
        for _ in range(runs):
            if os.path.exists(pidfile):
                os.unlink(pidfile)
            restores.append(timed([os.path.join(BIN, "rstr"), "-i", img, "--pids", "--pidns", "-W",
                                   "--pidfile", pidfile]))
            passes.append(pass_limit())
            root = int(open(pidfile).read().split()[0])
            tasks = tree_pids(root)
            reaper = [parent(root)] if parent(root) != os.getpid() else []  # none if the root is PID 1
            try:
                assert len(tasks) == ntasks, f"restored {len(tasks)} of {ntasks} tasks"
                pos = stdout_pos(root)
                wait_until(lambda: stdout_pos(root) > pos, "the restored tree to run", 10)
            finally:
                kill_all(reaper + tasks)  # the reaper first: the namespace's tasks die with it
        return statistics.median(dumps), statistics.median(restores), os.path.getsize(img), statistics.median(passes)
    finally:
        kill_all(tree_pids(p.pid))
        p.wait(timeout=30)


def criu_timed(argv, tmp):
    """timed(), as ckpt and rstr are here, with CRIU's stderr (it says at every run
    that it cannot raise RLIMIT_NOFILE) in a file, shown if the command fails."""
    with open(os.path.join(tmp, "criu.err"), "w+") as f:
        try:
            return timed(argv, stderr=f)
        except subprocess.CalledProcessError:
            f.seek(0)
            raise RuntimeError(f"{' '.join(argv)} failed: {f.read().strip()}") from None


def measure_criu(criu, exe, fanouts, ntasks, tmp, runs):
    """(median dump s, median restore s, image bytes) of CRIU for one tree."""
    out, imgdir, pidfile = (os.path.join(tmp, name) for name in ("criu-tree.out", "criu-tree", "criu-tree.pid"))
    dumps, restores = [], []
    for _ in range(runs):
        shutil.rmtree(imgdir, ignore_errors=True)
        os.mkdir(imgdir)
        for path in (out, pidfile):
            if os.path.exists(path):  # a fresh tree's "ready"; CRIU will not write over a pidfile
                os.unlink(path)
        with open(out, "a") as f:
            p = subprocess.Popen([exe, *fanouts], stdout=f, stdin=subprocess.DEVNULL, close_fds=True,
                                 start_new_session=True)
        tasks = []
        try:
            wait_until(lambda: "ready" in lines(out), "the tree to be ready")
            pids = wait_until(lambda: whole_tree(p.pid, ntasks), f"{ntasks} tasks")
            dumps.append(criu_timed([criu, "dump", "-t", str(p.pid), "-D", imgdir, "--shell-job"], tmp))
            p.wait(timeout=30)
            kill_all(pids)  # reaps the orphans, whose PIDs the restore takes again
            restores.append(criu_timed([criu, "restore", "-D", imgdir, "--shell-job", "-d", "--pidfile", pidfile], tmp))
            root = int(open(pidfile).read())
            tasks = tree_pids(root)
            assert len(tasks) == ntasks, f"CRIU restored {len(tasks)} of {ntasks} tasks"
            pos = stdout_pos(root)
            wait_until(lambda: stdout_pos(root) > pos, "the tree CRIU restored to run", 10)
        finally:
            kill_all(tree_pids(p.pid) + tasks)
            if p.returncode is None:
                p.wait(timeout=30)
    size = sum(os.path.getsize(os.path.join(imgdir, f)) for f in os.listdir(imgdir))
    shutil.rmtree(imgdir)
    return statistics.median(dumps), statistics.median(restores), size


def main(tmp=None, runs=RUNS, criu=None):
    if tmp is None:
        with tempfile.TemporaryDirectory(dir=TMPFS) as tmp:
            return main(tmp, runs, criu)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:  # orphaned restored tasks become ours to reap
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    exe = build(tmp)
    got = {}
    for name, fanouts, ntasks in TREES:
        d, r, size, pass_s = got[ntasks] = measure(exe, fanouts, ntasks, tmp, runs)
        print(f"tree {name:8} dump {d:.3f} s ({d / ntasks * 1000:.1f} ms/task)  "
              f"restore {r:.3f} s ({r / ntasks * 1000:.1f} ms/task) = {r / pass_s:.2f} x python3 -c pass  "
              f"image {size / 2**20:.1f} MiB", flush=True)
        if criu:
            cd, cr, csize = measure_criu(criu, exe, fanouts, ntasks, tmp, runs)
            print(f"{'':14} vs CRIU: dump {d / cd:.2f} x, restore {r / cr:.2f} x  "
                  f"(CRIU {cd:.3f} s / {cr:.3f} s, image {csize / 2**20:.1f} MiB)", flush=True)
    (d4, r4, _, _), (d64, r64, _, _) = got[4], got[64]
    print(f"tree 64/4 tasks: dump x{d64 / d4:.1f}  restore x{r64 / r4:.1f}  (x16 = proportional to tasks)", flush=True)
    dt, rt = (d64 - d4) / 60, (r64 - r4) / 60  # a fixed cost plus this per task
    print(f"tree per extra task: dump {dt * 1000:.1f} ms  restore {rt * 1000:.1f} ms;  "
          f"fixed: dump {d4 - 4 * dt:.3f} s  restore {r4 - 4 * rt:.3f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
