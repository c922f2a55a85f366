"""Benchmarks (not tests): ckpt and rstr of processes holding 256 MiB and 1 GiB
of touched anonymous memory and of a Python interpreter with imports, images
on tmpfs, median of 5, beside a plain 1 GiB write() to the same tmpfs measured
in the same run; then trees of 4 and 64 small processes (bench/tree.py). Prints
figures and ratios; targets are in the issue tracker."""
import os
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)
RUNS = 5
TMPFS = "/dev/shm"
HOLDER = """
import mmap, sys, time
m = mmap.mmap(-1, {size}, flags=mmap.MAP_PRIVATE)
for i in range(0, {size}, 4096):
    m[i] = (i // 4096) & 0xff
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


def start(code):
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         close_fds=True, start_new_session=True, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def timed(argv):
    t = time.perf_counter()
    subprocess.run(argv, check=True, timeout=300, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def kill(pid):
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def measure(name, code, tmp):
    dumps, restores, size = [], [], 0
    for i in range(RUNS):
        p = start(code)
        img = os.path.join(tmp, f"{name}.img")
        try:
            dumps.append(timed([os.path.join(BIN, "ckpt"), str(p.pid), "-o", img, "-f", "--kill"]))
            p.wait(timeout=30)
            size = os.path.getsize(img)
            pidfile = os.path.join(tmp, "pid")
            restores.append(timed([os.path.join(BIN, "rstr"), "-i", img, "-W", "--pidfile", pidfile]))
            kill(int(open(pidfile).read()))
        finally:
            kill(p.pid)
            p.wait(timeout=30)
            os.unlink(img)
    return statistics.median(dumps), statistics.median(restores), size


def write_rate(tmp, size=1 << 30):
    """GiB/s of one plain write() of fresh file pages, as a dump must do."""
    buf = b"\x5a" * (4 << 20)
    times = []
    for _ in range(RUNS):
        path = os.path.join(tmp, "plain")
        t = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for _ in range(size // len(buf)):
            os.write(fd, buf)
        os.close(fd)
        times.append(time.perf_counter() - t)
        os.unlink(path)
    return size / statistics.median(times) / 2**30


def precompile():
    """Byte-compiles usercr, as installing a package does, so that no command
    measured compiles it again (each would where PYTHONDONTWRITEBYTECODE is set)."""
    import compileall
    import usercr
    compileall.compile_dir(os.path.dirname(usercr.__file__), quiet=1)


def main():
    precompile()
    with tempfile.TemporaryDirectory(dir=TMPFS) as tmp:
        rate = write_rate(tmp)
        print(f"plain write() of 1 GiB to tmpfs: {rate:.2f} GiB/s")
        for name, code, mem in (("256MiB", HOLDER.format(size=256 << 20), 256 << 20),
                                ("1GiB", HOLDER.format(size=1 << 30), 1 << 30),
                                ("python", PYTHON, 0)):
            d, r, size = measure(name, code, tmp)
            line = f"{name:7} dump {d:.3f} s  restore {r:.3f} s  image {size / 2**20:.1f} MiB"
            if mem:
                dump_rate = mem / d / 2**30
                line += f"  dump {dump_rate:.2f} GiB/s = {dump_rate / rate:.0%} of write()"
            print(line, flush=True)
        import tree  # bench/tree.py: trees of 4 and 64 processes
        tree.main(tmp)


if __name__ == "__main__":
    main()
