"""Pre-copy benchmark (not a test): how long ckpt keeps the tree frozen for
a 1 GiB process that writes 1 % of its pages per second
(tests/workloads/dirty.c, compiled here with gcc), with and without
--pre-copy, in the same run; the target is a ratio of at most 0.15. The
frozen time is ckpt's own `frozen for X s` line (-v): from the start of the
final freeze to the release (without --kill the tree runs on while the image
is completed from the copy). Images on tmpfs, median of 5, the process
checkpointed without --kill. Run alone: python bench/precopy.py [MIB]."""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from run import BIN, RUNS, TMPFS

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "tests", "workloads", "dirty.c")


def frozen(pid, img, *extra):
    r = subprocess.run([os.path.join(BIN, "ckpt"), str(pid), "-o", img, "-f", "-v", *extra],
                       capture_output=True, text=True, timeout=300, check=True)
    return float(re.search(r"frozen for ([0-9.]+) s", r.stderr).group(1))


def main(mib=1024):
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "dirty")
        subprocess.run(["gcc", "-O2", "-o", exe, SRC], check=True)
        p = subprocess.Popen([exe, str(mib), "1", "nocheck"], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            time.sleep(1)
            img = os.path.join(TMPFS, f"usercr-precopy-{os.getpid()}")
            try:
                plain = statistics.median(frozen(p.pid, img) for _ in range(RUNS))
                pre = statistics.median(frozen(p.pid, img, "--pre-copy") for _ in range(RUNS))
            finally:
                if os.path.exists(img):
                    os.unlink(img)
        finally:
            p.kill()
            p.wait()
    print(f"{mib} MiB writing 1 %/s: frozen {plain:.3f} s plain, {pre:.3f} s with --pre-copy, "
          f"ratio {pre / plain:.3f} (target <= 0.15)")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
