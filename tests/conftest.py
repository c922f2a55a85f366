"""Test harness: builds the workloads, runs them under a subreaper, and cleans
up every process it started, by PID, with bounded waits."""
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from usercr import proc

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = os.path.join(HERE, "workloads")
BIN = os.path.join(WORKLOADS, "bin")
PR_SET_CHILD_SUBREAPER = 36
TIMEOUT = 60


def tool(name):
    """The installed console script next to this Python."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


@pytest.fixture(scope="session", autouse=True)
def subreaper():
    """Orphans of killed or restored workloads become ours, so we reap them at
    once and their PIDs are free again (PID 1 here is a slow reaper)."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


@pytest.fixture(scope="session", autouse=True)
def default_signals():
    """Workloads get SIGINT, SIGQUIT and SIGHUP as a terminal gives them,
    however the suite was started: an ignored signal is inherited through
    exec (nohup, a background job of a script), and a shell started with a
    signal ignored cannot trap it."""
    for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGQUIT, signal.SIG_DFL),
                         (signal.SIGHUP, signal.SIG_DFL)):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, handler)


def descendants(pid):
    """Every live process below pid (its children's children too)."""
    out, todo = [], [pid]
    while todo:
        kids = proc.children(todo.pop())
        out += [k for k in kids if alive(k)]
        todo += kids
    return out


@pytest.fixture(autouse=True)
def no_leftovers():
    """A test that leaves a process running fails, and the process is killed:
    as our subreaper, we see every orphan, restored trees' included. Those
    from wider-scoped fixtures exist before the test and are let be."""
    before = set(descendants(os.getpid()))
    yield
    left = lambda: [p for p in descendants(os.getpid()) if p not in before]
    try:
        wait_until(lambda: reap_orphans() or not left(), 5, "the test's processes to exit")
    except AssertionError:
        leaked = {p: comm(p) for p in left()}
        for p in leaked:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not any(alive(p) for p in leaked) and (reap_orphans() or True), 10, "leftovers to die")
        pytest.fail(f"processes left running: {leaked}")


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


@pytest.fixture(scope="session")
def workloads():
    os.makedirs(BIN, exist_ok=True)
    out = {}
    for src in sorted(os.listdir(WORKLOADS)):
        if not src.endswith(".c"):
            continue
        name = src[:-2]
        if name.endswith("_x86_64") and os.uname().machine != "x86_64":
            continue
        exe = os.path.join(BIN, name)
        subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", exe, os.path.join(WORKLOADS, src)], check=True)
        out[name.replace("_x86_64", "")] = exe
    return out


def wait_until(cond, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def alive(pid):
    """True while pid runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def reap_orphans():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Procs:
    """Processes a test started or restored, killed by PID at the end."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.pids = []
        self.popens = []

    def start(self, argv, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, **kw):
        out = open(stdout, "a") if isinstance(stdout, (str, os.PathLike)) else stdout
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=stdin,
                             close_fds=True, start_new_session=True, **kw)
        self.popens.append(p)
        self.pids.append(p.pid)
        return p

    def track(self, pid):
        if type(pid) is not int:  # a str or bool here would never be killed
            raise TypeError(f"PID {pid!r} is not an int")
        self.pids.append(pid)
        return pid

    def kill(self, pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_until(lambda: not alive(pid) and (reap_orphans() or True), 10, f"PID {pid} to die")
        for p in self.popens:
            if p.pid == pid:
                p.wait(timeout=10)

    def cleanup(self):
        for p in self.popens:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        for pid in self.pids:
            if alive(pid):
                self.kill(pid)
        reap_orphans()


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.cleanup()


def run(argv, timeout=TIMEOUT, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, close_fds=True, **kw)


def ckpt(pid, image, *extra):
    r = run([tool("ckpt"), str(pid), "-o", str(image), *extra])
    assert r.returncode == 0, r.stderr
    return r


def rstr(procs, image, *extra, stdin=subprocess.DEVNULL):
    """Restarts without waiting; returns the restored PID (tracked for cleanup)."""
    pidfile = procs.tmp / f"rstr-{len(procs.pids)}.pid"
    r = run([tool("rstr"), "-i", str(image), "-W", "--pidfile", str(pidfile), *extra], stdin=stdin)
    assert r.returncode == 0, r.stderr
    return procs.track(int(pidfile.read_text()))


def lines(path):
    try:
        return open(path).read().splitlines()
    except FileNotFoundError:
        return []


def assert_one_line_error(r):
    assert r.returncode != 0, "expected failure"
    err = r.stderr.strip()
    assert err and "\n" not in err, f"expected one line on stderr, got: {r.stderr!r}"
    assert "Traceback" not in r.stderr
    assert "internal error" not in err, err
    return err


def rstr_said(procs, img, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None):
    """rstr -W; returns the restored PID (tracked) and what rstr said. Its
    stderr goes to a file: a restored stream that follows rstr's would hold a
    pipe open."""
    pidfile = procs.tmp / f"rstr-{len(procs.pids)}.pid"
    errfile = procs.tmp / f"rstr-{len(procs.pids)}.err"
    with open(errfile, "w") as err:
        r = subprocess.run([tool("rstr"), "-i", str(img), "-W", "--pidfile", str(pidfile)], stdin=stdin,
                           stdout=stdout, stderr=err if stderr is None else stderr, timeout=TIMEOUT, close_fds=True)
    said = errfile.read_text()
    assert r.returncode == 0, said
    return procs.track(int(pidfile.read_text())), said


class Appender:
    """A thread outside the tree appending numbered lines to path every 20 ms
    (`written` lists them); stops when the with block ends."""

    def __init__(self, path):
        self.path, self.written = path, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        while not self.done.wait(0.02):
            with open(self.path, "a") as f:
                f.write(f"{len(self.written)}\n")
            self.written.append(len(self.written))

    def __enter__(self):
        self.thread.start()
        return self

    def stop(self):
        self.done.set()
        self.thread.join(10)

    def __exit__(self, *exc):
        self.stop()


def files_image(procs, workloads, tmp_path):
    """The files workload (reading a 100000-byte input, appending to a log),
    checkpointed with --kill after 3 lines; returns (image, input)."""
    out, img, src, log = tmp_path / "out", tmp_path / "img", tmp_path / "input", tmp_path / "log"
    src.write_bytes(b"x" * 100000)
    p = procs.start([workloads["files"], str(src), str(log)], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="files workload")
    ckpt(p.pid, img, "--kill")
    procs.kill(p.pid)
    return img, src
