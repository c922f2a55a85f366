"""What rstr trusts in an image, and what it checks regardless.

An image decides which uid its processes run as, which files they hold open
and how, and what they map. rstr as root grants all of that, so root
restores only an image that root wrote and nobody else could change, unless
told --trust-image; a pipe on the input is the caller's own pipeline. Even a
trusted image is checked against the file system as it is now: every path
must still be what its record says (see open_checked). And an image decides
how many fds rstr holds for its tasks (nofile_room)."""
import os
import resource
import stat

from . import records as R
from .errors import UcrError

KIND_TYPES = {"reg": stat.S_IFREG, "dir": stat.S_IFDIR, "chr": stat.S_IFCHR, "fifo": stat.S_IFIFO}
TYPE_NAMES = {stat.S_IFREG: "regular file", stat.S_IFDIR: "directory", stat.S_IFCHR: "character device",
              stat.S_IFBLK: "block device", stat.S_IFIFO: "FIFO", stat.S_IFLNK: "symbolic link",
              stat.S_IFSOCK: "socket"}


def _user(uid):
    import pwd
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def check_image(fd, name, trusted):
    """As root, refuses an image (anything but a pipe or socket) that is not
    root's own or that group or others may write; name says where it is."""
    if trusted or os.geteuid() != 0:
        return
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if target.startswith(("pipe:", "socket:")):
        return
    st = os.fstat(fd)
    if st.st_uid != 0:
        raise UcrError(f"image {name} belongs to {_user(st.st_uid)}, not root: restored by root, its processes "
                       "would get whatever it says (uid, files); check it, then add --trust-image")
    if st.st_mode & 0o022:
        raise UcrError(f"image {name} (owner {_user(0)}) is writable by group or others "
                       f"(mode {stat.S_IMODE(st.st_mode):04o}): anyone could have changed it; "
                       "check it, then add --trust-image")


def _type_name(mode):
    return TYPE_NAMES.get(stat.S_IFMT(mode), "file of unknown type")


def open_checked(path, want, flags, what, rdev=None):
    """Opens path from an image with flags, only if it is a file of type want
    (S_IFMT; a character device also of number rdev). The last component is
    not followed: the image holds paths as the kernel resolved them, so a link
    there is new. The type is checked on an O_PATH fd, which the real open
    then reopens: nothing of another type is opened even for a moment (opening
    a FIFO or a device has effects). flags None: the O_PATH fd itself.
    OSError of the open is the caller's to word."""
    pfd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(pfd)
        if stat.S_IFMT(st.st_mode) != want:
            raise UcrError(f"{path} ({what}) is now a {_type_name(st.st_mode)}, not the {_type_name(want)} "
                           "the image recorded; refusing it")
        if rdev is not None and st.st_rdev != rdev:
            raise UcrError(f"{path} ({what}) is now device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}, not "
                           f"{os.major(rdev)}:{os.minor(rdev)} as the image recorded; refusing it")
        if flags is None:
            pfd, fd = None, pfd
            return fd
        return os.open(f"/proc/self/fd/{pfd}", flags & ~os.O_NOFOLLOW)
    finally:
        if pfd is not None:
            os.close(pfd)


def open_file(rec, flags):
    """open_checked for a FILE record: its kind (reg, dir, chr, fifo) and
    its mode must agree, and the path must be that."""
    kind = R.FD_KINDS[rec["kind"]]
    want = KIND_TYPES[kind]
    if stat.S_IFMT(rec["mode"]) != want:
        raise UcrError(f"image corrupt: fd {rec['fd']} is a {kind} file whose recorded mode says "
                       f"{_type_name(rec['mode'])}")
    return open_checked(rec["tail"], want, flags, f"fd {rec['fd']}",
                        rec["rdev"] if want == stat.S_IFCHR else None)


def nofile_room(need):
    """Raises rstr's soft RLIMIT_NOFILE so that fd need - 1 can be open (up to
    the hard limit; the restored tasks get the image's limits back)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if need <= soft:
        return
    if hard != resource.RLIM_INFINITY and need > hard:
        raise UcrError(f"this image needs {need} open files in rstr, more than its hard limit (RLIMIT_NOFILE "
                       f"{hard}); raise it (ulimit -Hn) and retry")
    new = max(need, 2 * soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new if hard == resource.RLIM_INFINITY else min(new, hard), hard))
