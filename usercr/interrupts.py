"""SIGINT, SIGTERM and SIGHUP end a command as KeyboardInterrupt, so that
every cleanup on the way out runs (tasks released, sockets out of repair
mode, half-written images removed). While a task runs a syscall ckpt put
into it, the interrupt waits until the task's own code and registers are
back: a tracer that left then would leave the task to resume inside the
injected code. Only SIGKILL of ckpt there cannot be caught."""
import _signal  # the signal module without its enums, which cost every command ~2 ms to import

_held = 0
_pending = None


def _handler(signum, frame):
    global _pending
    if _held:
        _pending = signum
        return
    raise KeyboardInterrupt


def install():
    """For the commands only: a library's caller owns its process's signals."""
    for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(sig, _handler)


class Held:
    """A section an interrupt must not cut; a held one is raised at its end."""

    def __enter__(self):
        global _held
        _held += 1
        return self

    def __exit__(self, *exc):
        global _held, _pending
        _held -= 1
        if not _held and _pending is not None and exc[0] is None:
            _pending = None
            raise KeyboardInterrupt
