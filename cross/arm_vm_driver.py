"""Runs inside the ARM VM (cross/test_arm.py puts it there): for every
workload, start it, checkpoint it with ckpt --kill, restart it with rstr, let
it finish and check its own verdict. One line per case:
    RESULT <case> PASS|FAIL ckpt=<s> rstr=<s> rc=<status> | <detail>
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
    "sleep": (["sleep", "6"], lambda o: "ready" in o, False, lambda o: "sleep ok" in o),
}


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


def run_case(label, prog, kind):
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
    ck = subprocess.run([f"{BIN}/ckpt", str(p.pid), "-o", img, "--kill"], capture_output=True, text=True,
                        timeout=TIMEOUT)
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
