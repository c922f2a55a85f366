"""What a checkpoint or a restart measured (ckpt/rstr --stats FILE, the API's
return values), and the progress line shown on a terminal while it runs.

dump.checkpoint and restore.restart take `stats=`, an object of these classes,
and fill it in at a few clearly marked places; they work without one."""
import os
import sys
import time


class Stats:
    """A checkpoint's figures: frozen_s (how long the tree was stopped),
    total_s, pages_scanned (pages of the mappings whose memory is saved),
    pages_written, bytes_written (the whole image)."""
    FIELDS = ("frozen_s", "total_s", "pages_scanned", "pages_written", "bytes_written")

    def __init__(self):
        self.started = time.monotonic()
        self.frozen_at = self.thawed_at = None
        self.total_s = 0.0
        self.pages_scanned = self.pages_written = self.bytes_written = 0
        self.progress = None  # a Progress, or None

    @property
    def frozen_s(self):
        if self.frozen_at is None:
            return 0.0
        return (self.thawed_at or time.monotonic()) - self.frozen_at

    def finish(self):
        """The end of the work: total_s is set (once) and the progress line goes."""
        if not self.total_s:
            self.total_s = time.monotonic() - self.started
        if self.progress:
            self.progress.stop()
            self.progress = None
        return self

    def to_dict(self):
        return {k: round(v, 6) if isinstance(v, float) else v for k in self.FIELDS for v in [getattr(self, k)]}

    def write(self, path):
        import json
        from .safeio import write_file
        write_file(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"


class RestartStats(Stats):
    """A restart's figures: total_s, bytes_read (of the image, by rstr and the
    restored tasks; each copy reads the page data again), processes (restored,
    all copies)."""
    FIELDS = ("total_s", "bytes_read", "processes")

    def __init__(self):
        super().__init__()
        self.bytes_read = self.processes = 0
        self.tops = []  # the processes rstr created, one per copy: what it waits for


class Progress:
    """A line on stderr, redrawn a few times a second once the work has
    taken longer than `after` seconds: bytes done, percent of `total` when
    it is known, MB/s. done() gives the bytes done so far; it runs in a
    thread of its own, so the work itself (a C call) needs no hook."""
    INTERVAL = 0.25

    def __init__(self, label, done, total=None, after=None, stream=None):
        if after is None:  # tests shorten it
            after = float(os.environ.get("USERCR_PROGRESS_AFTER", "1"))
        self.label, self.done, self.total, self.after = label, done, total, after
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.shown = False
        import threading
        self.quit = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def wanted(stream=None):
        """On a terminal only: a log or a pipe gets no progress lines."""
        try:
            return os.isatty((stream or sys.stderr).fileno())
        except (OSError, ValueError, AttributeError):
            return False

    def _run(self):
        if self.quit.wait(self.after):
            return
        while True:
            self._draw()
            if self.quit.wait(self.INTERVAL):
                return

    def _draw(self):
        try:
            done = self.done()
        except OSError:
            return
        rate = done / max(time.monotonic() - self.start, 1e-6) / 1e6
        total = self.total() if callable(self.total) else self.total
        pct = f" {min(99, done * 100 // total):3d}%" if total else ""
        self.stream.write(f"\r{self.label}: {done / 2**20:9.1f} MiB{pct} {rate:8.1f} MB/s\x1b[K")
        self.stream.flush()
        self.shown = True

    def stop(self):
        self.quit.set()
        self.thread.join()
        if self.shown:  # the line goes: what follows (an error, the program's output) starts clean
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def bytes_written_by_self():
    """Bytes this process has passed to write() so far (every thread, any fd)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0
