"""The demo: a counter is checkpointed, killed, restarted, and counts on."""
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def say(msg):
    print(f"demo: {msg}", flush=True)


def last(path):
    with open(path) as f:
        got = f.read().split()
    return got[-1] if got else "nothing"


def main():
    with tempfile.TemporaryDirectory() as tmp:
        counter, out, img = os.path.join(tmp, "counter"), os.path.join(tmp, "out"), os.path.join(tmp, "img")
        subprocess.run(["gcc", "-O2", "-o", counter, os.path.join(ROOT, "tests/workloads/counter.c")], check=True)
        # Its own files only: a stream inherited from whoever runs the demo
        # (a log file in a chroot, say) may not be there for rstr to reopen.
        proc = subprocess.Popen([counter, "100"], stdout=open(out, "w"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        restored = None
        try:
            time.sleep(1.5)
            say(f"counter (PID {proc.pid}) has counted to {last(out)}")
            subprocess.run([os.path.join(BIN, "ckpt"), str(proc.pid), "-o", img, "--kill"], check=True, timeout=60)
            proc.wait(timeout=10)
            saved = last(out)
            say(f"checkpointed at {saved} into {os.path.getsize(img)} bytes, and killed")
            subprocess.run([os.path.join(BIN, "ckptinfo"), img], check=True, timeout=60)
            time.sleep(1)
            say(f"one second later the file still ends at {last(out)}")
            pidfile = os.path.join(tmp, "pid")
            subprocess.run([os.path.join(BIN, "rstr"), "-i", img, "-W", "--pidfile", pidfile], check=True, timeout=60)
            restored = int(open(pidfile).read())
            time.sleep(1.5)
            now = last(out)
            say(f"restarted as PID {restored}; it counted on from {saved} to {now}")
            if not int(now) > int(saved):
                raise SystemExit("demo: FAILED: the restored counter did not go on")
            say("OK")
        finally:
            for pid in (proc.pid, restored):
                if pid:
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
