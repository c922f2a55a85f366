"""`usercr run`: start a workload so that it can later be restored with the
same PIDs (user-cr's nsexec).

With --pidns, CMD runs as PID 1 of a new PID namespace (with --ipcns, also in
an IPC namespace of its own), so the checkpointed tree's root is CMD itself
and `rstr --pids --pidns` can give every task its PID back. This process stays
outside as the waiter: it forwards SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2
to CMD, waits for it and exits with its status (128+N if signal N killed it).

How: the waiter calls unshare(CLONE_NEWPID | CLONE_NEWIPC) on itself and then
forks once. unshare(CLONE_NEWPID) leaves the caller's own PID namespace alone
and puts its next child, CMD, into the new one as PID 1; the waiter's IPC
namespace is the new one too, which it does not use. No intermediate process
exists. All signals the waiter handles are blocked before the fork and taken
with sigwaitinfo, so none is lost and CMD is reaped in the same loop that
forwards signals (no signal can reach a recycled PID).
"""
import os
import signal

from .errors import UcrError
from .safeio import write_file

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# Python ignores these at start-up; ignored dispositions survive exec, so CMD gets them back.
PYTHON_IGNORED = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))
EXEC_FAILED = 127


def _new_namespaces(pidns, ipcns):
    from .arch import current as current_arch
    from .native import lib
    c = current_arch().C
    flags = (c["CLONE_NEWPID"] if pidns else 0) | (c["CLONE_NEWIPC"] if ipcns else 0)
    if not flags:
        return
    what = " and ".join(n for n, on in (("PID", pidns), ("IPC", ipcns)) if on)
    r = lib.ucr_unshare(flags)
    if r < 0:
        hint = " (needs root or CAP_SYS_ADMIN)" if r == -1 else ""
        raise UcrError(f"cannot create a new {what} namespace: {os.strerror(-r)}{hint}")


def _exec_child(argv, mask, err_w):
    """In the forked child: becomes CMD, or reports the errno on err_w and exits."""
    try:
        for sig in PYTHON_IGNORED:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.execvp(argv[0], argv)
    except OSError as e:
        os.write(err_w, (e.errno or 0).to_bytes(4, "little"))
    except BaseException:
        pass
    os._exit(EXEC_FAILED)


def _status_code(status):
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _wait_forwarding(pid):
    """Forwards the signals in FORWARDED to pid until it exits; returns its exit code."""
    waited = set(FORWARDED) | {signal.SIGCHLD}
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD:
            try:
                os.kill(pid, info.si_signo)  # still our unreaped child: the PID cannot be reused
            except ProcessLookupError:
                pass
            continue
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            return _status_code(status)


def run(argv, pidns=True, ipcns=True, pidfile=None):
    """Runs argv as described above; returns the exit code to leave with."""
    if not argv:
        raise UcrError("no command given: usercr run [OPTIONS] -- CMD [ARGS...]")
    # Children must be waitable whatever our parent left us (an inherited SIG_IGN reaps them).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(FORWARDED) | {signal.SIGCHLD})
    _new_namespaces(pidns, ipcns)
    err_r, err_w = os.pipe()  # close-on-exec: EOF means exec succeeded
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        _exec_child(argv, mask, err_w)
    os.close(err_w)
    with os.fdopen(err_r, "rb") as f:
        data = f.read()
    if data:
        os.waitpid(pid, 0)
        err = int.from_bytes(data[:4], "little")
        raise UcrError(f"cannot run {argv[0]}: {os.strerror(err) if err else 'exec failed'}")
    if pidfile:  # written whole once CMD runs: a reader polling it never sees half a PID
        try:
            write_file(pidfile, f"{pid}\n")
        except UcrError:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
    return _wait_forwarding(pid)
