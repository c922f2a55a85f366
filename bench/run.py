"""Benchmarks (not tests). Images on tmpfs, median of RUNS. Each workload is
checkpointed (`ckpt --kill`) and restored (`rstr -W`); every figure is also
given as a ratio to a limit of this machine measured in the same run, right
beside the workload (so that a busy machine slows both alike):
  - write: one plain write() of as many bytes to a new tmpfs file (dumps);
  - read: reading the image from the same tmpfs into fresh private anonymous
    memory, faulted page by page (restores of large processes);
  - pass: `python3 -c pass`, the same interpreter as ckpt's and rstr's
    (restores of small programs).
Workloads: 256 MiB and 1 GiB of touched private memory (each page nearly all
zeros), 1 GiB that compresses 2:1 (each page half random bytes), dumped plain
and with --compress, a Python interpreter after six imports, plain and
compressed, then trees of 4 and 64 small processes (bench/tree.py), TCP
connections (bench/tcp.py) and the freeze with and without --pre-copy
(bench/precopy.py). Prints times, image sizes, the peak RSS of ckpt and
rstr (bench/peak.c), and the time the tree was frozen (ckpt --stats). With
--criu PATH, CRIU dumps and restores the same workloads for comparison.
Targets: docs/performance.md."""
import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)
HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = 5
TMPFS = "/dev/shm"
HOLDER = """
import mmap, os, sys, time
m = mmap.mmap(-1, {size}, flags=mmap.MAP_PRIVATE)
half = {half}
for i in range(0, {size}, 4096):
    m[i] = (i // 4096) & 0xff
    if half:
        m[i + 2048:i + 4096] = os.urandom(2048)
print("ready", flush=True)
while True:
    time.sleep(1)
"""
PYTHON = """
import json, decimal, sqlite3, asyncio, email, http.server, time
print("ready", flush=True)
while True:
    time.sleep(1)
"""
PEAK = None  # the compiled bench/peak.c
sys.modules.setdefault("run", sys.modules[__name__])  # tree.py's and tcp.py's `import run` share these globals


def start(code, out=None):
    """The workload, ready. out: its stdout goes to that file rather than a
    pipe to us (CRIU refuses a pipe that leads out of the dumped tree)."""
    if out is None:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             close_fds=True, start_new_session=True, text=True)
        assert p.stdout.readline().strip() == "ready"
        return p
    with open(out, "w") as f:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while "ready" not in open(out).read():
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the workload did not get ready")
        time.sleep(0.05)
    return p


def run(argv, tmp):
    """(seconds, peak RSS in MiB, stderr) of a command that must succeed. Its
    stderr goes to a file: a restored program may keep rstr's."""
    out, err = os.path.join(tmp, "peak.out"), os.path.join(tmp, "stderr")
    with open(err, "w+") as f:
        code = subprocess.run([PEAK, out] + argv, timeout=300, stdout=subprocess.DEVNULL, stderr=f).returncode
        f.seek(0)
        said = f.read()
    if code:
        raise RuntimeError(f"{' '.join(argv)} failed: {said.strip()}")
    with open(out) as f:
        secs, kib = f.read().split()
    return float(secs), int(kib) / 1024, said


def timed(argv, stderr=None):
    """Seconds of a command that must succeed (bench/tree.py), to the moment
    it exits: subprocess's wait with a timeout polls at doubling intervals and
    saw a 25 ms command end at 31.5 ms. Its pidfd becomes readable at the exit."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
    pidfd = os.pidfd_open(p.pid)
    try:
        ended = select.select([pidfd], [], [], 300)[0]
        secs = time.perf_counter() - t
    finally:
        os.close(pidfd)
    if not ended:
        p.kill()
        p.wait(timeout=30)
        raise subprocess.TimeoutExpired(argv, 300)
    if p.wait(timeout=30):
        raise subprocess.CalledProcessError(p.returncode, argv)
    return secs


def kill(pid):
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def alive(pid):
    """True while pid runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def write_limit(tmp, size):
    """Seconds of one plain write() of size fresh bytes to tmpfs, as a dump must do."""
    buf = b"\x5a" * (1 << 20)
    path = os.path.join(tmp, "plain")
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for _ in range(size // len(buf)):
        os.write(fd, buf)
    os.close(fd)
    secs = time.perf_counter() - t
    os.unlink(path)
    return secs


READER = """
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
t = time.perf_counter()
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
v = memoryview(m)
done = 0
while done < size:
    done += os.readv(fd, [v[done:done + (1 << 20)]])
print(time.perf_counter() - t)
"""


def read_limit(path):
    """Seconds to read the file at path into fresh private anonymous memory (in
    a process of its own, so that the memory is fresh)."""
    return float(subprocess.run([sys.executable, "-c", READER, path], check=True, capture_output=True,
                                text=True).stdout)


def pass_limit(tmp=None):
    """Seconds of `python3 -c pass` on the interpreter ckpt and rstr run on,
    measured as what it is compared with: through peak (tmp given, as run()) or timed()."""
    argv = [sys.executable, "-c", "pass"]
    return run(argv, tmp)[0] if tmp else timed(argv)


def frozen(stats_path):
    """frozen_s of ckpt --stats (not -v's line: -v imports logging, ~1.2 MiB of ckpt's peak RSS)."""
    with open(stats_path) as f:
        return json.load(f)["frozen_s"]


class Result:
    def __init__(self, name):
        self.name = name
        self.dump, self.restore, self.frozen, self.limit_w, self.limit_r, self.limit_p = ([] for _ in range(6))
        self.size = self.ckpt_rss = self.rstr_rss = 0

    def med(self, attr):
        return statistics.median(getattr(self, attr))


def measure(name, code, tmp, extra=()):
    """RUNS dumps and restores of a fresh copy of the workload; beside each,
    the limits it is compared with."""
    res = Result(name)
    img, pidfile, stats = (os.path.join(tmp, f) for f in (f"{name}.img", "pid", "stats.json"))
    for _ in range(RUNS):
        p = start(code)
        try:
            secs, rss, _ = run([os.path.join(BIN, "ckpt"), str(p.pid), "-o", img, "-f", "--kill", "--stats", stats,
                                *extra], tmp)
            res.dump.append(secs)
            res.frozen.append(frozen(stats))
            res.ckpt_rss = max(res.ckpt_rss, rss)
            p.wait(timeout=30)
            res.size = os.path.getsize(img)
            secs, rss, _ = run([os.path.join(BIN, "rstr"), "-i", img, "-W", "--pidfile", pidfile], tmp)
            res.restore.append(secs)
            res.rstr_rss = max(res.rstr_rss, rss)
            kill(int(open(pidfile).read()))
            res.limit_p.append(pass_limit(tmp))
            if res.size > 64 << 20:
                res.limit_r.append(read_limit(img))
                res.limit_w.append(write_limit(tmp, res.size))
        finally:
            kill(p.pid)
            p.wait(timeout=30)
            if os.path.exists(img):
                os.unlink(img)
    return res


def measure_criu(criu, name, code, tmp):
    """CRIU's dump (-t PID, which kills it) and restore (-d) of the same workload."""
    res = Result(name)
    imgdir, pidfile = os.path.join(tmp, "criu"), os.path.join(tmp, "criu.pid")
    for _ in range(RUNS):
        shutil.rmtree(imgdir, ignore_errors=True)
        os.mkdir(imgdir)
        p = start(code, os.path.join(tmp, "criu.out"))
        try:
            secs, rss, _ = run([criu, "dump", "-t", str(p.pid), "-D", imgdir, "--shell-job"], tmp)
            res.dump.append(secs)
            res.ckpt_rss = max(res.ckpt_rss, rss)
            p.wait(timeout=30)
            res.size = sum(os.path.getsize(os.path.join(imgdir, f)) for f in os.listdir(imgdir))
            if os.path.exists(pidfile):  # CRIU will not write over one (O_EXCL)
                os.unlink(pidfile)
            secs, rss, _ = run([criu, "restore", "-D", imgdir, "--shell-job", "-d", "--pidfile", pidfile], tmp)
            res.restore.append(secs)
            res.rstr_rss = max(res.rstr_rss, rss)
            pid = int(open(pidfile).read())
            if not alive(pid):  # a restore that died at once is no figure
                raise RuntimeError(f"CRIU's restored {name} workload is gone")
            kill(pid)
        finally:
            kill(p.pid)
            p.wait(timeout=30)
    shutil.rmtree(imgdir, ignore_errors=True)
    return res


def report(res, criu=None, plain=None):
    d, r = res.med("dump"), res.med("restore")
    line = (f"{res.name:13} dump {d:.3f} s  restore {r:.3f} s  frozen {res.med('frozen'):.3f} s  "
            f"image {res.size / 2**20:7.1f} MiB  peak RSS ckpt {res.ckpt_rss:.1f} / rstr {res.rstr_rss:.1f} MiB")
    print(line, flush=True)
    ratios = []
    if res.limit_w:
        ratios.append(f"dump = {d / res.med('limit_w'):.2f} x write()")
    if res.limit_r:
        ratios.append(f"restore = {r / res.med('limit_r'):.2f} x read into fresh memory")
    else:  # a small program
        ratios.append(f"restore = {r / res.med('limit_p'):.2f} x python3 -c pass")
    if plain:
        ratios.append(f"image = {res.size / plain.size:.2f} x plain, dump = {d / plain.med('dump'):.2f} x plain")
    if criu:
        cd, cr = criu.med("dump"), criu.med("restore")
        ratios.append(f"vs CRIU: dump {d / cd:.2f} x, restore {r / cr:.2f} x (CRIU {cd:.3f} s / {cr:.3f} s, "
                      f"image {criu.size / 2**20:.1f} MiB, peak RSS {criu.ckpt_rss:.1f} / {criu.rstr_rss:.1f} MiB)")
    print(f"{'':13} " + ";  ".join(ratios), flush=True)


def precompile():
    """Byte-compiles usercr, as installing a package does, so that no command
    measured compiles it again (each would where PYTHONDONTWRITEBYTECODE is set)."""
    import compileall
    import usercr
    compileall.compile_dir(os.path.dirname(usercr.__file__), quiet=1)


WORKLOADS = (  # name, code, ckpt options, the plain run it is compared with
    ("256MiB", HOLDER.format(size=256 << 20, half=0), (), None),
    ("1GiB", HOLDER.format(size=1 << 30, half=0), (), None),
    ("1GiB-2:1", HOLDER.format(size=1 << 30, half=1), (), None),
    ("1GiB-2:1 zstd", HOLDER.format(size=1 << 30, half=1), ("--compress",), "1GiB-2:1"),
    ("python", PYTHON, (), None),
    ("python zstd", PYTHON, ("--compress",), "python"),
)


def main():
    global PEAK, RUNS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--criu", metavar="PATH", help="also measure this CRIU binary (run as root)")
    ap.add_argument("--runs", type=int, default=RUNS, help=f"runs per figure, median taken (default {RUNS})")
    ap.add_argument("--only", nargs="*", help="only these workloads (names as printed; 'tree', 'tcp', 'precopy' "
                    "for those of bench/tree.py, tcp.py, precopy.py)")
    args = ap.parse_args()
    RUNS = args.runs
    precompile()
    with tempfile.TemporaryDirectory(dir=TMPFS) as tmp:
        PEAK = os.path.join(tmp, "peak")
        subprocess.run(["gcc", "-O2", "-Wall", "-o", PEAK, os.path.join(HERE, "peak.c")], check=True)
        done = {}
        for name, code, extra, plain in WORKLOADS:
            if args.only and name not in args.only:
                continue
            res = done[name] = measure(name, code, tmp, extra)
            criu = measure_criu(args.criu, name, code, tmp) if args.criu and not extra else None
            report(res, criu, done.get(plain))
        if not args.only or "tree" in args.only:
            import tree  # bench/tree.py: trees of 4 and 64 processes
            tree.main(tmp, RUNS, args.criu)
        if not args.only or "tcp" in args.only:
            import tcp  # bench/tcp.py: an asyncio server, 0 and 1,000 TCP connections
            tcp.main(tmp)
        if not args.only or "precopy" in args.only:
            import precopy  # bench/precopy.py: the freeze of 1 GiB written 1 %/s, with and without --pre-copy
            precopy.main()


if __name__ == "__main__":
    main()
