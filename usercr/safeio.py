"""Safe creation of the files ckpt, rstr and `usercr run` write: nothing is
ever written through a symbolic link or into a file another user owns, and
no half-written file ever carries its final name.

An image or a pidfile is written to a new temporary file in the
destination's directory (O_CREAT|O_EXCL|O_NOFOLLOW: never an existing file,
never through a link) and gets its name only once it is complete (an image
also on disk; a pidfile or stats file need not outlive a crash of the
machine, which ends the processes it describes): rename() replaces whatever
the name held (a planted symlink is replaced, not followed), link() adds
the name only if it is free (atomic no-clobber). A log is appended to, so
it is opened O_NOFOLLOW and must be a regular file of the caller's own."""
import errno
import os
import stat

from .errors import UcrError

NAME_MAX = 255
TMP_SUFFIX_LEN = 16  # "." + "." + 8 hex digits + ".tmp", and room to spare


class AtomicFile:
    """A file that appears under path complete or not at all. fd is the
    temporary file to write; commit() gives it the name. With replace=False
    (ckpt without -f) an existing path is an error, also one that appears
    meanwhile. With replace=True a regular file is replaced, and so is a
    symlink someone else planted; the caller's own symlink (think
    /dev/stdout), a device, a FIFO or a socket is refused, not replaced.
    Used as a context manager, an uncommitted file is removed."""

    def __init__(self, path, mode=0o600, replace=False):
        self.path, self.replace, self.fd, self.tmp = path, replace, None, None
        head, self.name = os.path.split(path)
        if not self.name:
            raise UcrError(f"cannot create {path}: it names a directory")
        try:
            self.dir_fd = os.open(head or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise UcrError(f"cannot create {path}: {e.strerror}") from None
        try:
            taken = self._taken()
            if taken is not None and not replace:
                raise UcrError(f"{path} exists; use -f to overwrite it")
            if taken is not None and stat.S_ISLNK(taken.st_mode) and taken.st_uid == os.geteuid():
                raise UcrError(f"{path} is a symbolic link of yours; give the path it points to "
                               "(a link is never written through)")
            if taken is not None and not (stat.S_ISREG(taken.st_mode) or stat.S_ISLNK(taken.st_mode)):
                raise UcrError(f"{path} is a {_kind(taken.st_mode)}; refusing to replace it with a file")
            base = self.name[:NAME_MAX - TMP_SUFFIX_LEN]
            while self.fd is None:
                self.tmp = f".{base}.{os.urandom(4).hex()}.tmp"
                try:
                    self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                      mode, dir_fd=self.dir_fd)
                except FileExistsError:
                    continue  # a name someone else took: draw another
            os.fchmod(self.fd, mode)  # whatever the umask
        except OSError as e:
            self.discard()
            raise UcrError(f"cannot create {path}: {e.strerror}") from None
        except BaseException:
            self.discard()
            raise

    def _taken(self):
        """What holds the name now (not followed), or None."""
        try:
            return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def commit(self, durable=True):
        """Gives the file its name; durable: flushed to disk first, the name after."""
        try:
            if durable:
                os.fsync(self.fd)
            if self.replace:
                os.rename(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            else:
                os.link(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd, follow_symlinks=False)
                os.unlink(self.tmp, dir_fd=self.dir_fd)
        except FileExistsError:
            raise UcrError(f"{self.path} appeared meanwhile; not overwritten (use -f to overwrite it)") from None
        except OSError as e:
            raise UcrError(f"cannot write {self.path}: {e.strerror}") from None
        self.tmp = None
        if durable:
            _sync_dir(self.dir_fd)

    def discard(self):
        """Removes the temporary file unless it was committed, and closes both fds."""
        if self.tmp is not None and self.fd is not None:
            try:
                os.unlink(self.tmp, dir_fd=self.dir_fd)
            except OSError:
                pass
        self.tmp = None
        for fd in (self.fd, self.dir_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self.dir_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.discard()


def _kind(mode):
    return "directory" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else \
        "socket" if stat.S_ISSOCK(mode) else "device"


def _sync_dir(dir_fd):
    """The new name on disk too (best effort: an O_PATH fd cannot be synced, a reopened one can)."""
    try:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file(path, text, mode=0o644):
    """Writes text to path whole (a pidfile, stats): a reader never sees half
    of it, and a symlink at path is replaced, not followed. Not synced to disk."""
    with AtomicFile(path, mode, replace=True) as f:
        data = text.encode()
        try:
            while data:
                data = data[os.write(f.fd, data):]
        except OSError as e:
            raise UcrError(f"cannot write {path}: {e.strerror}") from None
        f.commit(durable=False)


def open_log(path):
    """A log file to append to: created 0600 if new; a symlink, anything but
    a regular file, a file of another user, or one with other hard links (it
    could be any file of ours) is refused."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UcrError(f"log file {path} is a symbolic link; refusing to write through it") from None
        if e.errno == errno.ENXIO:  # a FIFO without a reader, a socket
            raise UcrError(f"log file {path} is not a regular file; refusing to append to it") from None
        raise UcrError(f"cannot open log file {path}: {e.strerror}") from None
    st = os.fstat(fd)
    problem = "is not a regular file" if not stat.S_ISREG(st.st_mode) else \
        f"belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})" if st.st_uid != os.geteuid() else \
        f"has {st.st_nlink} hard links" if st.st_nlink != 1 else None
    if problem:
        os.close(fd)
        raise UcrError(f"log file {path} {problem}; refusing to append to it")
    return os.fdopen(fd, "a")
