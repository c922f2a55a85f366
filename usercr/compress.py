"""Compressed images. `ckpt --compress` writes the stream as a sequence of
zstd frames, which is one zstd stream: the metadata in frames of its own,
the page data in one independent frame per 256 KiB buffer, compressed by
whichever of the C core's two dump threads (the one copying memory, the one
writing the image) has time for it. rstr and ckptinfo recognise a zstd
stream by its first four bytes and read it through a decompressing child
process and a pipe, so that the restorer, which reads page data straight
from its fd, sees the plain stream. An image compressed by the zstd tool
(`ckpt ... | zstd`) reads the same way."""
import errno
import fcntl
import os

from .errors import UcrError
from .native import ffi, lib

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Speed over ratio: zstd's fast level -7 compresses ~3 GB/s on one core here
# and still takes a Python interpreter's image to ~0.38 of its size.
LEVEL = -7
PIPE_SIZE = 1 << 20


def _zstd_error(ret, what):
    if ret in (-errno.EBADMSG, -errno.ENOSYS):  # zstd's own words, or why it could not be loaded
        return UcrError(f"{what}: {ffi.string(lib.ucr_zstd_error()).decode()}")
    return UcrError(f"{what}: {os.strerror(-ret)}")


class Output:
    """A zstd stream on fd; handle goes to the C core's page writer."""

    def __init__(self, fd):
        err = ffi.new("int *")
        self.handle = lib.ucr_zout_open(fd, LEVEL, err)
        if self.handle == ffi.NULL:
            raise _zstd_error(err[0], "cannot compress the image")

    def write(self, data, end=False):
        r = lib.ucr_zout_write(self.handle, ffi.from_buffer(data), len(data), end)
        if r < 0:
            raise _zstd_error(r, "writing the image")

    def close(self):
        if self.handle != ffi.NULL:
            lib.ucr_zout_free(self.handle)
            self.handle = ffi.NULL


def _head(fd):
    """Up to the first four bytes of the stream (fewer only at its end)."""
    head = b""
    while len(head) < len(ZSTD_MAGIC):
        try:
            chunk = os.read(fd, len(ZSTD_MAGIC) - len(head))
        except OSError as e:
            raise UcrError(f"reading the image: {e.strerror}") from None
        if not chunk:
            break
        head += chunk
    return head


class Input:
    """The plain image stream of fd: fd itself, whose first bytes are
    already read (prefix), or a pipe from a child that decompresses it.
    As a context manager, a failure of the decompressor replaces the error
    it caused downstream (a truncated stream) with its own."""

    def __init__(self, fd):
        head = _head(fd)
        self.pid = None
        if head != ZSTD_MAGIC:
            self.fd, self.prefix = fd, head
            return
        self.prefix = b""
        r, w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # a smaller pipe only means more context switches
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                os.close(r)
                os.close(err_r)
                ret = lib.ucr_zstd_pump(fd, w, head, len(head))
                code = 0 if ret in (0, -errno.EPIPE) else 1  # EPIPE: the reader has what it needed
                if code:
                    what = "compressed image truncated" if ret == -errno.ENODATA else \
                        str(_zstd_error(ret, "compressed image damaged"))
                    os.write(err_w, what.encode())
            finally:
                os._exit(code)
        os.close(w)
        os.close(err_w)
        self.fd, self.err_r = r, err_r

    def _error(self):
        """The decompressor's complaint, if it made one."""
        os.set_blocking(self.err_r, False)
        try:
            return os.read(self.err_r, 512).decode(errors="replace")
        except BlockingIOError:
            return ""

    def finish(self):
        """Waits for the decompressor to end: UcrError if the stream was bad."""
        if self.pid is None:
            return
        os.close(self.fd)
        self.fd = -1
        os.set_blocking(self.err_r, True)
        msg = os.read(self.err_r, 512).decode(errors="replace")  # returns when the child exits
        self._reap()
        if msg:
            raise UcrError(msg)

    def _reap(self):
        if self.pid is not None:
            os.waitpid(self.pid, 0)
            os.close(self.err_r)
            self.pid = None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if self.pid is None:
            return False
        msg = self._error() if isinstance(value, UcrError) else ""
        if self.fd >= 0:
            os.close(self.fd)
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        self._reap()
        if msg:
            raise UcrError(msg) from None
        return False
