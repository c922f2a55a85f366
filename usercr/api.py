"""The Python API (docs/api.md): checkpoint, restart, open_image. ckpt, rstr
and ckptinfo are thin layers over it. Options the API does not know are
passed on to usercr.dump.checkpoint and usercr.restore.restart."""
import sys
import os
import stat

from . import proc
from .errors import UsageError, Error
from .stats import Progress, RestartStats, Stats, bytes_written_by_self


def _default_log(msg):
    if "logging" in sys.modules:  # else no handler is set up to take it, and importing it costs more than the restart
        sys.modules["logging"].getLogger("usercr").info(msg)


def _image_fd(fd):
    """Refuses a terminal; an image file is made 0600 (it holds memory)."""
    try:
        st = os.fstat(fd)
    except OSError:
        raise Error(f"output fd {fd} is not open") from None
    if os.isatty(fd):
        raise Error("refusing to write an image to a terminal; use -o FILE or redirect the output")
    if stat.S_ISREG(st.st_mode):
        os.fchmod(fd, 0o600)
    return fd


def _fileno(obj):
    """obj's fd once its buffer is flushed, or None for an object without one (io.BytesIO)."""
    if isinstance(obj, int):
        return obj
    try:
        fd = obj.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    if hasattr(obj, "flush"):
        obj.flush()
    return fd


def _tree_memory(pid):
    """About the bytes the checkpoint of pid's tree writes (anonymous, shared
    and swapped memory): the 100 % of the progress line."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            st = proc.status(p)
            stack.extend(proc.children(p))
        except Error:
            continue
        total += sum(int(st.get(k, "0 kB").split()[0]) * 1024 for k in ("RssAnon", "RssShmem", "VmSwap"))
    return total


def checkpoint(pid, dest, *, kill=False, force=False, log=None, progress=False, **options):
    """Checkpoints the process tree rooted at pid to dest: a path (written
    to a temporary file, named dest once complete; an existing file only
    with force=True), an open fd, or a writable binary file object. kill:
    kill the tree once the image is complete. Returns the Stats. Raises
    usercr.Error (one line); the tree then runs on unharmed."""
    from .dump import checkpoint as dump_checkpoint, validate_target
    from .safeio import AtomicFile
    stats = Stats()
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise UsageError(f"invalid PID {pid!r}")
    validate_target(pid)  # before dest is created
    log = log or _default_log
    if progress:
        base = bytes_written_by_self()
        stats.progress = Progress("ckpt", lambda: bytes_written_by_self() - base, lambda: _tree_memory(pid))
    try:
        if isinstance(dest, (str, bytes, os.PathLike)):
            with AtomicFile(os.fsdecode(dest), 0o600, replace=force) as out:
                dump_checkpoint(pid, out.fd, kill=kill, log=log, complete=out.commit, stats=stats, **options)
            return stats
        fd = _fileno(dest)
        if fd is not None:
            dump_checkpoint(pid, _image_fd(fd), kill=kill, log=log, stats=stats, **options)
            return stats
        if not hasattr(dest, "write"):
            raise UsageError(f"cannot write an image to {dest!r}: give a path, an fd or a binary file object")
        mem = os.memfd_create("usercr-image", os.MFD_CLOEXEC)  # then copied whole into dest
        try:
            dump_checkpoint(pid, mem, kill=kill, log=log, stats=stats, **options)
            os.lseek(mem, 0, os.SEEK_SET)
            while chunk := os.read(mem, 1 << 20):
                dest.write(chunk)
        finally:
            os.close(mem)
        return stats
    finally:
        stats.finish()


class Restored:
    """A restored tree: pid (its root as seen from here; pids: one per copy),
    status (the root's exit code once waited for, as os.waitstatus_to_exitcode
    gives it: -N if signal N killed it), stats (RestartStats)."""

    def __init__(self, roots, status, stats):
        self.pids, self.pid, self.stats = roots, roots[0], stats
        self.tops = stats.tops
        self.status = None if status is None else os.waitstatus_to_exitcode(status)

    def wait(self):
        """Waits until every copy exited; returns the (first) root's exit code."""
        if self.status is None:
            statuses = [os.waitpid(top, 0)[1] for top in self.tops]
            self.status = os.waitstatus_to_exitcode(statuses[0])
        return self.status

    def kill(self):
        """Kills every process of the restored tree(s) and reaps what rstr created."""
        if self.status is not None:
            return
        for top in self.tops:
            doomed, stack = [], [top]
            while stack:
                p = stack.pop()
                doomed.append(p)
                try:
                    stack.extend(proc.children(p))
                except Error:
                    pass
            for p in doomed:
                try:
                    os.kill(p, 9)
                except ProcessLookupError:
                    pass
        self.wait()

    def __repr__(self):
        return f"Restored(pid={self.pid}, status={self.status})"


def _open_source(src, what):
    """(fd, name, close it?, trusted?) of an image source: a path, an open fd
    or a readable binary file object (one without an fd is copied to memory)."""
    if isinstance(src, (str, bytes, os.PathLike)):
        path = os.fsdecode(src)
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC), path, True, False
        except OSError as e:
            raise Error(f"cannot open {path}: {e.strerror}") from None
    fd = _fileno(src)
    if fd is not None:
        try:
            os.fstat(fd)
        except OSError:
            raise Error(f"input fd {fd} is not open") from None
        return fd, "on standard input" if fd == 0 else f"on fd {fd}", False, False
    if not hasattr(src, "read"):
        raise UsageError(f"cannot read {what} from {src!r}: give a path, an fd or a binary file object")
    mem = os.memfd_create("usercr-image", os.MFD_CLOEXEC)
    while chunk := src.read(1 << 20):
        os.write(mem, chunk)
    os.lseek(mem, 0, os.SEEK_SET)
    return mem, "in memory", True, True  # bytes the caller handed over: theirs to trust


def restart(src, *, pids=None, wait=False, log=None, progress=False, trust_image=False, **options):
    """Restores the tree of the image at src (a path, an open fd or a
    readable binary file object). pids: True (the original PIDs), False (new
    ones, a lone process only) or None (the original ones, in a new PID
    namespace if they are taken here). wait: return once the root exited.
    Other options (pidns, copies, pidfile, forward, strict_files, ...) go to
    usercr.restore.restart. Returns a Restored; raises usercr.Error, and
    then nothing restored is left."""
    from .restore import restart as restore_restart
    from .trust import check_image
    if options.get("forward") and not wait:
        raise UsageError("--signal needs --wait: rstr forwards it while it waits")
    stats = RestartStats()
    if options.get("forward"):  # restore.restart forwards Ctrl-C while it waits; the caller's handler after
        import signal
        handler = signal.getsignal(signal.SIGINT)
    fd, name, close, trusted = _open_source(src, "an image")
    try:
        check_image(fd, name, trust_image or trusted)
        st = os.fstat(fd)
        if progress and stat.S_ISREG(st.st_mode):  # the tasks read the image through this fd's offset
            stats.progress = Progress("rstr", lambda: os.lseek(fd, 0, os.SEEK_CUR), st.st_size)
        roots, status = restore_restart(fd, pids=pids, wait=wait, log=log or _default_log, stats=stats, **options)
        return Restored(roots, status, stats)
    finally:
        if options.get("forward"):
            signal.signal(signal.SIGINT, handler)
        stats.finish()
        if close:
            os.close(fd)


def open_image(src):
    """The image at src (a path, an open fd or a readable binary file
    object), read whole and checked: a usercr.info.Image."""
    from .info import Image
    fd, _, close, _ = _open_source(src, "an image")
    try:
        return Image.read(fd)
    finally:
        if close:
            os.close(fd)

