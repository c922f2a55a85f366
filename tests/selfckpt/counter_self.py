"""Self-checkpointing counter (Python API): like counter_self.c, with
THREADS extra threads each counting on its own.
    counter_self.py IMAGE LOG [EVERY [THREADS]]
Log lines: "tick N C1 C2 ...", "ckpt N False|True", "error N MESSAGE"."""
import os
import sys
import threading
import time

from usercr import checkpoint_self

counts = []


def worker(i):
    while True:
        counts[i] += 1
        time.sleep(0.005)


def main():
    img, log = sys.argv[1], sys.argv[2]
    every = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    nthreads = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    for i in range(nthreads):
        counts.append(0)
        threading.Thread(target=worker, args=(i,), daemon=True).start()
    n = 0
    while True:
        n += 1
        os.write(fd, f"tick {n} {' '.join(map(str, counts))}\n".encode())
        if n % every == 0:
            try:
                os.write(fd, f"ckpt {n} {checkpoint_self(img)}\n".encode())
            except Exception as e:
                os.write(fd, f"error {n} {type(e).__name__}: {e}\n".encode())
        time.sleep(0.02)


main()
