"""Runs inside the ARM VM (cross/test_arm.py puts it there): for every
workload, start it, checkpoint it with ckpt --kill, restart it with rstr, let
it finish and check its own verdict. Cases named tree-NAME or kind-NAME (fd kinds:
epoll, eventfd, ...) run a process-tree workload of tests/workloads (tick protocol in wl.h) through three cycles of
ckpt --kill / kill the tree / rstr --pids --pidns, as tests/test_tree.py does;
incr-chain and incr-precopy do the same with ckpt --parent and --pre-copy.
One line per case:
    RESULT <case> PASS|FAIL <s> ckpt=<s> rstr=<s> rc=<status> | <detail>
Usage: python3 arm_vm_driver.py BINDIR CASE=PROGRAM... (PROGRAM: a workload binary)
Every wait is bounded; every process started here is killed by PID at the end."""
import ctypes
import os
import signal
import subprocess
import sys
import time

BIN = sys.argv[1]
TIMEOUT = 90
started = []


def kernel_said():
    """The kernel's last lines (a crash of a restored task shows there), for a failure report."""
    try:
        got = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout.splitlines()[-3:]
    except (OSError, subprocess.SubprocessError):
        return ""
    return " | kernel: " + " / ".join(got)


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


# (argv tail, ready test on the output so far, needs SIGUSR1 after restart, verdict on the final output)
CASES = {
    "counter": (["counter", "1500"], lambda o: o.count("\n") >= 30, False,
                lambda o: o.split() == [str(i) for i in range(1500)] + ["done"]),
    "memsum": (["memsum"], lambda o: "ready" in o, True, lambda o: "memsum ok" in o),
    "fp": (["fp"], lambda o: "ready" in o, True, lambda o: "fp ok" in o),
    "signal": (["signal"], lambda o: "ready" in o, True, lambda o: "signal ok" in o),
    "sleep": (["sleep", "15"], lambda o: "ready" in o, False, lambda o: "sleep ok" in o),
}
CASES["zmemsum"] = CASES["memsum"]
CKPT_OPTIONS = {"zmemsum": ["--compress"]}  # its image is compressed


def run_compat(label, prog):
    """The arm64 build given a 32-bit (compat) task: ckpt must refuse in one
    line and leave the task running unharmed (it then finishes its fp check)."""
    out = f"/tmp/{label}.out"
    with open(out, "wb") as f:
        p = subprocess.Popen([prog, "fp"], stdout=f, stderr=subprocess.STDOUT)
    started.append(p.pid)
    wait_for(lambda: "ready" in read(out), 60, f"{label} to get ready")
    t0 = time.monotonic()
    ck = subprocess.run([f"{BIN}/ckpt", str(p.pid), "-o", f"/tmp/{label}.img"], capture_output=True, text=True,
                        timeout=TIMEOUT)
    t_ckpt = time.monotonic() - t0
    os.kill(p.pid, signal.SIGUSR1)
    rc = p.wait(timeout=TIMEOUT)
    err = ck.stderr.strip()
    ok = ck.returncode == 1 and "32-bit ARM (compat)" in err and len(err.splitlines()) == 1 \
        and rc == 0 and "fp ok" in read(out)
    return ok, f"ckpt={t_ckpt:.2f}s rstr=- rc={rc} | ckpt: {err} | task: {read(out).strip().splitlines()[-1]}"


# ckpt saves SysV objects only of a tree with an IPC namespace of its own: these run under `usercr run`.
OWN_IPCNS = {"ipcshm", "ipcmsq", "ipcsem"}
# workloads that finish their check after a go file appears: signals they must report delivered
GO_FILE = {"sigpending": 12, "threadstate": 0}
CYCLES = 3
TICK_WAIT = 120  # for ready + 3 ticks, and for 5 ticks after a restore: TCG with both VMs on the host's cores


def ticks(text):
    return [int(x.split()[1]) for x in text.splitlines() if x.startswith("tick ")]


def failures(text):
    return [x for x in text.splitlines() if x.startswith("BAD")]


def ticked(out, n, what):
    """Waits for tick n or a BAD line; fails unless ticks are consecutive from 0 and none is BAD."""
    wait_for(lambda: failures(read(out)) or (ticks(read(out)) or [-1])[-1] >= n, TICK_WAIT, what)
    text = read(out)
    if failures(text) or ticks(text) != list(range(len(ticks(text)))):
        raise RuntimeError(f"while waiting for {what}: " + " / ".join(failures(text) or ["ticks not consecutive"]))


def alive(pid):
    """True while pid runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reap():
    """Reaps our ended children and orphans (we are their subreaper), so their PIDs are free again."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def kill_wait(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    wait_for(lambda: not alive(pid) and (reap() or True), 20, f"PID {pid} to die")


def tree(root):
    """root and all its descendants (through every thread's children)."""
    pids = [root]
    for pid in pids:  # grows while we walk it
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                pids += map(int, read(f"/proc/{pid}/task/{tid}/children").split())
        except OSError:  # ended meanwhile
            pass
    return pids


def family(root):
    """The tree and its parent unless that is us: the reaper of a --pidns
    restore (killing it ends the namespace) or `usercr run`'s waiter."""
    pids = tree(root)
    try:
        parent = int(read(f"/proc/{root}/stat").rsplit(")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return pids
    return pids + ([parent] if parent != os.getpid() else [])


def run_tree(label, prog, name, args=(), ckpt_args=lambda cycle: [], prelude=None, check=None):
    """ckpt_args(cycle): more ckpt options; prelude(root, out): run before the
    cycles; check(cks): a verdict on the cycles' ckpt results (None = good)."""
    out, go = f"/tmp/{label}.out", f"/tmp/{label}.go"
    argv = [prog, *args] + ([go] if name in GO_FILE else [])
    if name in OWN_IPCNS:
        run_pidfile = f"/tmp/{label}.run.pid"
        argv = [f"{BIN}/usercr", "run", "--pidfile", run_pidfile, "--"] + argv
    # O_APPEND: the tree's processes write whole lines to one file
    with open(out, "ab") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             close_fds=True, start_new_session=True)
    root, t_ck, t_rs = p.pid, [], []

    def times():
        return f"ckpt={'/'.join(t_ck) or '-'} rstr={'/'.join(t_rs) or '-'} rc=-"
    try:
        if name in OWN_IPCNS:
            root = int(wait_for(lambda: read(run_pidfile).strip(), 60, "usercr run's pidfile"))
        ticked(out, 2, "ready and 3 ticks")
        if "ready" not in read(out).splitlines():
            raise RuntimeError("ticks without a ready line")
        ntasks = len(tree(root))
        notes = [prelude(root, out)] if prelude else []
        cks = []
        for cycle in range(CYCLES):
            img, pidfile = f"/tmp/{label}.{cycle}.img", f"/tmp/{label}.{cycle}.pid"
            doomed = family(root)
            t0 = time.monotonic()
            ck = subprocess.run([f"{BIN}/ckpt", str(root), "-o", img, "--kill", *ckpt_args(cycle)],
                                capture_output=True, text=True, timeout=TIMEOUT)
            cks.append(ck)
            t_ck.append(f"{time.monotonic() - t0:.1f}")
            if ck.returncode:
                return False, (f"{times()} | cycle {cycle}: ckpt failed: {ck.stderr.strip()} | output: "
                               f"{' / '.join(read(out).splitlines()[-3:])}{kernel_said()}")
            for pid in doomed:
                kill_wait(pid)
            last = ticks(read(out))[-1]
            t0 = time.monotonic()
            rs = subprocess.run([f"{BIN}/rstr", "-i", img, "--pids", "--pidns", "-W", "--pidfile", pidfile],
                                capture_output=True, text=True, timeout=TIMEOUT)
            t_rs.append(f"{time.monotonic() - t0:.1f}")
            if rs.returncode or not read(pidfile).strip():
                return False, f"{times()} | cycle {cycle}: rstr failed (exit {rs.returncode}): {rs.stderr.strip()}"
            root = int(read(pidfile))
            ticked(out, last + 5, f"5 ticks after restore {cycle}")
        detail = ", ".join([f"{ntasks} tasks, {len(ticks(read(out)))} ticks"] + notes)
        bad = check(cks) if check else None
        if bad:
            return False, f"{times()} | {detail} | {bad}"
        if name in GO_FILE:  # the saved state is used once go exists, and the workload says ok
            open(go, "w").close()
            wait_for(lambda: failures(read(out)) or "ok" in read(out).splitlines(), TICK_WAIT, "the go step")
            text = read(out)
            delivered = [x for x in text.splitlines() if x.startswith("delivered ")]
            if failures(text) or len(delivered) != GO_FILE[name]:
                return False, f"{times()} | {len(delivered)} signals delivered: " + " / ".join(failures(text))
            detail += f", ok after go ({len(delivered)} signals delivered in order)"
        return True, f"{times()} | {detail}"
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        tail = " / ".join(read(out).strip().splitlines()[-3:])
        return False, f"{times()} | {e} | output: {tail}"
    finally:
        for pid in family(root):
            kill_wait(pid)
        if p.poll() is None:
            p.kill()
        p.wait(timeout=20)


# Incremental images and pre-copy (tests/test_incremental.py): dirty.c rewrites 1 %/s of 16 MiB
# (few pages change between two images, even under TCG), and checks all its memory every tick.
DIRTY = ("16", "1")


def no_tracking_left(pid):
    """None if pre-copy left no userfaultfd nor registered memory in pid, else what it left."""
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    flags = [ln.split()[1:] for ln in read(f"/proc/{pid}/smaps").splitlines() if ln.startswith("VmFlags:")]
    if "anon_inode:[userfaultfd]" in fds or any({"uw", "um", "ui"} & set(f) for f in flags):
        return f"pre-copy left write tracking in {pid}"
    return None


def inherited(path):
    """{depth: pages} of the PAGES_PARENT runs of an image (1: from its parent, 2: its grandparent)."""
    from usercr import records as R
    from usercr.image import ImageReader
    out = {}
    with open(path, "rb") as f:
        reader = ImageReader(f.fileno())
        reader.header()
        while (rec := reader.next(skip_data=True)).type != R.TAIL.type:
            if rec.type == R.PAGES_PARENT.type:
                out[rec["depth"]] = out.get(rec["depth"], 0) + rec["nr_pages"]
    return out


def run_incr_chain(label, prog):
    """A full image, then two incremental ones (--parent the previous), each
    with ckpt --kill and rstr between: the last restores pages from both
    ancestors (depth 1 and 2)."""
    img = lambda cycle: f"/tmp/{label}.{cycle}.img"
    notes = []

    def check(cks):
        sizes = [os.path.getsize(img(c)) for c in range(CYCLES)]
        info = subprocess.run([f"{BIN}/ckptinfo", img(CYCLES - 1)], capture_output=True, text=True, timeout=TIMEOUT)
        if f"parent: {img(CYCLES - 2)}" not in info.stdout:
            return f"ckptinfo names no parent: {info.stdout.strip()[-300:]} {info.stderr.strip()}"
        if any(s >= sizes[0] / 2 for s in sizes[1:]):
            return f"increments not smaller than half the full image: sizes {sizes}"
        depths = inherited(img(CYCLES - 1))
        if sorted(depths) != [1, 2]:  # the restore read pages from both ancestors
            return f"the last image inherits pages at depths {depths}, not at 1 and 2"
        notes.append(f"sizes {'/'.join(str(s >> 10) for s in sizes)} KiB, last inherits pages {depths}")
        return None
    ok, detail = run_tree(label, prog, "dirty", DIRTY, lambda c: ["--parent", img(c - 1)] if c else [], check=check)
    return ok, "; ".join([detail] + notes)


def write_tracking():
    """`usercr check`'s write tracking line, and the method pre-copy must then log."""
    r = subprocess.run([f"{BIN}/usercr", "check"], capture_output=True, text=True, timeout=TIMEOUT)
    line = next((ln for ln in r.stdout.splitlines() if "write tracking:" in ln), None)
    if line is None:
        raise RuntimeError(f"usercr check has no write tracking line: {r.stdout.strip()} {r.stderr.strip()}")
    return " ".join(line.split()), "write tracking" if line.startswith("ok ") else "compare"


def precopy_method(ck):
    """The method ckpt -v --pre-copy logged ('pre-copy: 0.123 s, METHOD')."""
    lines = [ln for ln in ck.stderr.splitlines() if ln.startswith("pre-copy: ")]
    return lines[-1].split(", ", 1)[1] if lines else None


def run_precopy(label, prog):
    """ckpt --pre-copy of the running program (it runs on, without tracking
    left), then cycles of ckpt --pre-copy --kill and rstr; pre-copy must use
    the mechanism `usercr check` names."""
    line, want = write_tracking()

    def prelude(root, out):
        ck = subprocess.run([f"{BIN}/ckpt", str(root), "-o", f"/tmp/{label}.running.img", "--pre-copy", "-v"],
                            capture_output=True, text=True, timeout=TIMEOUT)
        if ck.returncode:
            raise RuntimeError(f"ckpt --pre-copy (no --kill) failed: {ck.stderr.strip()[-500:]}")
        left = no_tracking_left(root)
        if left:
            raise RuntimeError(left)
        method = precopy_method(ck)
        if not method or not method.startswith(want):
            raise RuntimeError(f"pre-copy used {method!r}, but {line}")
        ticked(out, ticks(read(out))[-1] + 3, "3 ticks after ckpt --pre-copy")
        return f"{line} | pre-copy: {method}"

    def check(cks):
        methods = {precopy_method(ck) for ck in cks}
        if len(methods) != 1 or not str(next(iter(methods))).startswith(want):
            return f"pre-copy --kill used {methods}, but {line}"
        return None
    return run_tree(label, prog, "dirty", DIRTY, lambda c: ["--pre-copy", "-v"], prelude, check)


def loopback_up():
    """The VM's init leaves lo down; up, it has 127.0.0.1 (and ::1 with IPv6)."""
    subprocess.run(["busybox", "ip", "link", "set", "lo", "up"], check=True, capture_output=True, timeout=TIMEOUT)


def run_case(label, prog, kind):
    if label == "kind-tcploop":
        loopback_up()
        ok, detail = run_tree(label, prog, kind)
        fam = [x for x in read(f"/tmp/{label}.out").splitlines() if x.startswith("families ")]
        return ok, f"{detail}; {fam[0] if fam else 'no families line'}"
    if label == "incr-chain":
        return run_incr_chain(label, prog)
    if label == "incr-precopy":
        return run_precopy(label, prog)
    if label.startswith(("tree-", "kind-")):
        return run_tree(label, prog, kind)
    if kind == "compat":
        return run_compat(label, prog)
    args, ready, go, verdict = CASES[kind]
    out, img, pidfile = f"/tmp/{label}.out", f"/tmp/{label}.img", f"/tmp/{label}.pid"
    with open(out, "wb") as f:
        p = subprocess.Popen([prog] + args, stdout=f, stderr=subprocess.STDOUT)
    started.append(p.pid)
    wait_for(lambda: ready(read(out)), 60, f"{label} to get ready")
    if kind == "sleep":
        time.sleep(0.5)
    t0 = time.monotonic()
    ck = subprocess.run([f"{BIN}/ckpt", str(p.pid), "-o", img, "--kill"] + CKPT_OPTIONS.get(kind, []),
                        capture_output=True, text=True, timeout=TIMEOUT)
    t_ckpt = time.monotonic() - t0
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)
    if ck.returncode:
        return False, f"ckpt={t_ckpt:.2f}s rstr=- rc=- | ckpt failed: {ck.stderr.strip()}"
    t0 = time.monotonic()
    errf = open(f"/tmp/{label}.rstr.err", "w+")
    r = subprocess.Popen([f"{BIN}/rstr", "-i", img, "--pidfile", pidfile, "--copy-status"],
                         stdout=errf, stderr=errf)
    started.append(r.pid)
    try:
        pid = wait_for(lambda: read(pidfile).strip() or (r.poll() is not None and "dead"), 60, "rstr's pidfile")
        t_rstr = time.monotonic() - t0
        if pid == "dead":
            errf.seek(0)
            return False, f"ckpt={t_ckpt:.2f}s rstr=- rc={r.returncode} | rstr failed: {errf.read().strip()}"
        started.append(int(pid))
        if go:
            os.kill(int(pid), signal.SIGUSR1)
        rc = r.wait(timeout=TIMEOUT)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return False, f"ckpt={t_ckpt:.2f}s rstr=? rc=? | {e}"
    errf.seek(0)
    text = read(out)
    ok = rc == 0 and verdict(text)
    last = " / ".join(text.strip().splitlines()[-2:])
    err = errf.read().strip().replace("\n", " / ")
    return ok, f"ckpt={t_ckpt:.2f}s rstr={t_rstr:.2f}s rc={rc} | {last}" + (f" | stderr: {err}" if err else "")


def main():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: restored orphans come back to us
    failed = 0
    try:
        for spec in sys.argv[2:]:
            label, prog = spec.split("=", 1)
            kind = label.split("-")[-1]
            t0 = time.monotonic()
            try:
                ok, detail = run_case(label, prog, kind)
            except Exception as e:  # one line per case whatever happens
                ok, detail = False, f"{type(e).__name__}: {e}"
            failed += not ok
            print(f"RESULT {label} {'PASS' if ok else 'FAIL'} {time.monotonic() - t0:.1f}s {detail}", flush=True)
    finally:
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
