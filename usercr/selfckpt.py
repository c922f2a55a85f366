"""Self-checkpoint: a program writes an image of itself and goes on running.

checkpoint_self(dest) returns False in the program that wrote the image and
True in a copy restored from it (rstr -i dest), as DMTCP's and user-cr's
self-checkpoint do. The image is the one `ckpt PID` writes: a helper process
outside the program's tree (spawned, then orphaned by a double fork, so it is
nobody's descendant) runs the ptrace engine on the caller, which allows it
(PR_SET_PTRACER for Yama) and waits by polling a small block of its own memory
(no fd, no child: nothing of the handshake is in the image). Once every thread
is frozen the helper writes RESTORED into that block, so the memory copied
into the image says RESTORED; before it lets the program go it writes DONE.
A program that reads RESTORED checks that it really is a new task (its start
time in /proc/self/stat changed) before it believes it: a helper killed while
the program was frozen leaves RESTORED behind in the original.

The C API (usercr/native/selfckpt.c, libusercr.a) speaks the same protocol
with the same helper, `usercr-selfckpt PID ADDR DEST` (python -m usercr.selfckpt).
"""
import ctypes
import errno
import os
import signal
import struct
import subprocess
import sys
import time

from . import proc
from .errors import UcrError

PENDING, RESTORED, DONE, FAILED = 0, 1, 2, 3
MSG_SIZE = 248
POLL = 0.002
HELPER_CHECK = 0.1   # how often the waiting program asks whether the helper still lives


class _Block(ctypes.Structure):
    # The layout usercr.h's struct usercr_self_block has: state, errno, message.
    _fields_ = [("state", ctypes.c_uint32), ("err", ctypes.c_int32), ("msg", ctypes.c_char * MSG_SIZE)]


def start_time(pid="self"):
    """Field 22 of /proc/PID/stat: a restored process is a new task with a later one."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


def _prctl_ptracer(pid):
    """Yama (ptrace_scope 1) lets only ancestors trace unless the tracee names its
    tracer; without Yama the call fails with EINVAL and nothing is needed."""
    from .arch import current
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(ctypes.c_int(current().C["PR_SET_PTRACER"]), ctypes.c_ulong(pid), ctypes.c_ulong(0),
               ctypes.c_ulong(0), ctypes.c_ulong(0))


def has_ptrace():
    """Asking about ourselves as a tracee is harmless: a kernel with ptrace
    answers ESRCH; qemu-user has none (ENOSYS)."""
    from .arch import current
    from .native import lib
    return lib.ucr_ptrace(current().C["PTRACE_GETEVENTMSG"], os.getpid(), 0, 0) != -errno.ENOSYS


def _inside(dest):
    """The ptrace-free path (usercr/selfdump.py): the program dumps itself."""
    import threading
    from .native import ffi, lib
    if threading.active_count() > 1:
        raise UcrError("self-checkpoint: a multithreaded program cannot checkpoint itself without ptrace yet")
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.insert(0, {top!r}); from usercr.selfckpt import helper_main; sys.exit(helper_main())"
    args = [ffi.new("char[]", a.encode()) for a in (sys.executable, "-c", code, "--inside", dest)]
    err = ffi.new("char[]", MSG_SIZE)
    r = lib.ucr_self_inside(args + [ffi.NULL], err, MSG_SIZE)
    if r < 0:
        raise UcrError(ffi.string(err).decode(errors="replace") or
                       f"self-checkpoint: the helper died before the image was complete ({os.strerror(-r)})")
    return r == 1


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def checkpoint_self(dest):
    """Writes an image of the calling process (all its threads and its
    children) to dest, replaced atomically if it exists. Returns False here,
    True in a process restored from dest. Raises UcrError if the checkpoint
    failed (the program is then unharmed and goes on)."""
    if not has_ptrace():
        return _inside(os.path.abspath(os.fspath(dest)))
    block = _Block()
    began = start_time()
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (top, os.environ.get("PYTHONPATH")))))
    cmd = [sys.executable, "-m", "usercr.selfckpt", str(os.getpid()), str(ctypes.addressof(block)),
           os.path.abspath(os.fspath(dest))]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
    try:
        out = p.stdout.read()
    finally:
        p.stdout.close()
        p.wait()
    try:
        helper = int(out)
    except ValueError:
        p.stdin.close()
        raise UcrError(f"the self-checkpoint helper did not start (exit status {p.returncode})") from None
    _prctl_ptracer(helper)
    try:
        try:
            p.stdin.write(b"go")
        finally:
            p.stdin.close()  # no fd of the handshake stays open in the image
        return _wait(block, began, helper)
    finally:
        _prctl_ptracer(0)


def _wait(block, began, helper):
    last_check = time.monotonic()
    while True:
        state = block.state
        if state == DONE:
            return False
        if state == FAILED:
            raise UcrError(block.msg.decode(errors="replace") or "self-checkpoint failed")
        if state == RESTORED and start_time() != began:
            return True
        if time.monotonic() - last_check > HELPER_CHECK:
            last_check = time.monotonic()
            if not _alive(helper) and block.state in (PENDING, RESTORED):
                raise UcrError("the self-checkpoint helper died before the image was complete")
        time.sleep(POLL)


def _own_proc():
    """A program rstr restored into a new PID namespace sees the outer /proc;
    the engine needs the one of its own PIDs: a proc mounted nowhere, reached
    through its fd."""
    from .native import lib
    fd = lib.ucr_own_proc()
    if fd < 0:
        raise UcrError(f"cannot make a /proc of this PID namespace for the helper: {os.strerror(-fd)}")
    proc.PROC = f"/proc/self/fd/{fd}"


def helper_main(argv=None):
    """usercr-selfckpt PID ADDR DEST: stdout gets the PID of the process that
    will do the work (a grandchild: nobody's descendant once this one exits);
    it starts when "go" comes on stdin (the caller has allowed it to trace)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--inside":
        from .selfdump import inside_main
        return inside_main(argv[1])
    if len(argv) != 3:
        sys.stderr.write("usage: usercr-selfckpt PID ADDR DEST (run by checkpoint_self)\n")
        return 2
    pid, addr, dest = int(argv[0]), int(argv[1]), argv[2]
    try:  # as the program's child (Yama lets a descendant), by the PID /proc knows it by
        mem = os.open(f"/proc/{proc.status('self')['PPid']}/mem", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return 1  # the program is gone, or refused: it sees the helper gone
    child = os.fork()
    if child:
        try:
            os.write(1, f"{child}\n".encode())
        except BrokenPipeError:  # the program is gone
            os.kill(child, signal.SIGKILL)
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.close(null)
    os.setsid()  # no terminal signal may kill the helper while the program is frozen
    if os.read(0, 2) != b"go":
        os._exit(1)

    def mark(state, err=0, msg=""):
        data = struct.pack("Ii", state, err)
        if msg:
            data += msg.encode()[:MSG_SIZE - 1] + b"\0"
        os.pwrite(mem, data, addr)

    from .dump import checkpoint
    from .safeio import AtomicFile
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            _own_proc()
        with AtomicFile(dest, 0o600, replace=True) as out:
            def complete():
                out.commit()
                mark(DONE)
            checkpoint(pid, out.fd, on_frozen=lambda: mark(RESTORED), complete=complete)
    except UcrError as e:
        mark(FAILED, errno.EIO, f"self-checkpoint: {e}")
    except OSError as e:
        mark(FAILED, e.errno or errno.EIO, f"self-checkpoint: {e.strerror or e}")
    except Exception as e:  # the program must hear of any failure, or it would wait for ever
        mark(FAILED, errno.EIO, f"self-checkpoint: internal error: {type(e).__name__}: {e}")
    os._exit(0)


if __name__ == "__main__":
    sys.exit(helper_main())
