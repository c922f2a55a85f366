"""inotify instances (fd kind inotify): one INOTIFY record per instance the
tree uses, and one INOTIFY_WATCH record per watch, with its watch descriptor,
mask and path. The kernel lists the watches in the instance's fdinfo with a
file handle each; ckpt opens the handle (open_by_handle_at, through a mount
of the watched filesystem) and reads back the path it finds.

At restart the instance is created anew and the watches are added in wd
order. The kernel hands out wds cyclically (idr_alloc_cyclic from 1: the wd
after the last one given, not the lowest free one), so a gap left by a
removed watch is reproduced by adding and removing a placeholder watch until
the next wd is the one wanted; the IN_IGNORED events those removals queue are
drained before the tree runs. Events that were queued and not yet read at the
checkpoint cannot be put back into a queue: they are lost (rstr says how many
bytes), and so are events between the checkpoint and the end of the restart."""
import errno
import fcntl
import os
import struct

from . import proc
from . import records as R
from .errors import UcrError
from .native import lib

K = R.FD_KINDS
KINDS = (K.INOTIFY,)
TARGET = "anon_inode:inotify"
PLACEHOLDERS = ("/", "/proc", "/dev", "/sys")   # harmless paths a gap's placeholder watch goes on
DRAIN_EVERY = 1024                               # placeholder removals between two drains of the queue
READ_SIZE = 65536


def classify(ctx, st, target, info):
    return K.INOTIFY if target == TARGET else None


def note(ctx, fd, st, info, fields):
    from .files import file_id   # files imports this module
    ctx.tree.setdefault("inotify", {}).setdefault(file_id(ctx, fd, st), (ctx.pid, fd))


def kernel_dev(sdev):
    """The st_dev of a kernel-internal dev_t as fdinfo prints it (MINORBITS 20)."""
    return os.makedev(sdev >> 20, sdev & 0xfffff)


def watches(pid, fd):
    """The watches of the instance at fd of pid, as fdinfo lists them: dicts
    of wd, ino, dev, mask and, when the kernel gave one, the file handle."""
    out = []
    for line in proc.read_text(pid, f"fdinfo/{fd}").splitlines():
        if not line.startswith("inotify "):
            continue
        fields = dict(item.split(":", 1) for item in line.split()[1:])
        w = dict(wd=int(fields["wd"], 16), ino=int(fields["ino"], 16), dev=kernel_dev(int(fields["sdev"], 16)),
                 mask=int(fields["mask"], 16))
        if "f_handle" in fields:
            w["handle"] = (int(fields["fhandle-type"], 16), bytes.fromhex(fields["f_handle"]))
        out.append(w)
    return sorted(out, key=lambda w: w["wd"])


def _unescape(s):
    return s.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")


def mounts():
    """st_dev -> the mount points of that filesystem in ckpt's mount
    namespace, mounts of its root first."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            major, minor = (int(x) for x in parts[2].split(":"))
            out.setdefault(os.makedev(major, minor), []).append((parts[3] != "/", _unescape(parts[4])))
    return {dev: [m for _, m in sorted(ms)] for dev, ms in out.items()}


def _same_fs(dev, pid):
    """Directories on filesystem dev that mountinfo may not list: in a chroot
    the mount of the root holding it is out of reach, but the root is not."""
    out = []
    for path in ("/", proc.path(pid, "root"), proc.path(pid, "cwd")):
        try:
            if os.stat(path).st_dev == dev:
                out.append(path)
        except OSError:
            pass
    return out


def _path_from_handle(w, mount_points):
    """The path of the watched object its file handle leads to, or None and why not."""
    if "handle" not in w:
        return None, "its filesystem gives no file handles"
    htype, hbytes = w["handle"]
    why = "no mount of its filesystem is reachable"
    for mount in mount_points:
        try:
            mfd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY)   # not O_PATH: open_by_handle_at refuses one
        except OSError:
            continue
        try:
            obj = lib.ucr_open_by_handle(mfd, htype, hbytes, len(hbytes), os.O_PATH)
        finally:
            os.close(mfd)
        if obj < 0:
            why = f"opening its file handle: {os.strerror(-obj)}"
            if obj == -errno.EPERM:
                why += " (this needs CAP_DAC_READ_SEARCH)"
            continue
        try:
            path = os.readlink(f"/proc/self/fd/{obj}")
        finally:
            os.close(obj)
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (w["dev"], w["ino"]):
            return path, None
        why = "it is deleted, or the kernel finds no path to it"
    return None, why


def _queued(pid, fd, C):
    """Bytes of events queued and not read in the instance at fd of pid."""
    copy = lib.ucr_pidfd_getfd(pid, fd)
    if copy < 0:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(copy, C["FIONREAD"], bytes(4)))[0]
    except OSError:
        return 0
    finally:
        os.close(copy)


def tree_records(tree):
    from .arch import current
    C = current().C
    instances = tree.get("inotify", {})
    table = mounts() if instances else {}
    out = []
    for fid, (pid, fd) in sorted(instances.items()):
        found = []
        for w in watches(pid, fd):
            path, why = _path_from_handle(w, table.get(w["dev"], []) + _same_fs(w["dev"], pid))
            if path is None:
                raise UcrError(f"fd {fd} of process {pid} ({TARGET}): no path for the object of watch {w['wd']} "
                               f"(inode {w['ino']} on device {os.major(w['dev'])}:{os.minor(w['dev'])}): {why}")
            found.append(R.INOTIFY_WATCH.pack(file_id=fid, wd=w["wd"], mask=w["mask"], dev=w["dev"],
                                              ino=w["ino"], tail=path))
        out.append(R.INOTIFY.pack(file_id=fid, nr_watches=len(found), queued=_queued(pid, fd, C)))
        out.extend(found)
    return out


class Restore:
    def __init__(self, rst):
        self.rst = rst
        self.saved = {rec["file_id"]: rec for rec in rst.img.tree_records("INOTIFY")}
        self.watches = {}
        for w in rst.img.tree_records("INOTIFY_WATCH"):
            self.watches.setdefault(w["file_id"], []).append(w)

    def _add(self, ino, path, mask, rec):
        wd = lib.ucr_inotify_add_watch(ino, path.encode(errors="surrogateescape"), mask)
        if wd < 0:
            raise UcrError(f"the inotify watch on {path} (fd {rec['fd']}) cannot come back: {os.strerror(-wd)}")
        return wd

    def _placeholder(self, watched):
        for path in PLACEHOLDERS:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in watched:
                return path
        raise UcrError("no path to fill the gaps between inotify watch descriptors with")

    @staticmethod
    def _drain(ino):
        while True:
            try:
                if not os.read(ino, READ_SIZE):
                    return
            except BlockingIOError:
                return

    def _watch(self, ino, rec, saved):
        C = self.rst.arch.C
        watched = set()
        for w in saved:
            try:
                st = os.stat(w["tail"], follow_symlinks=False)
            except OSError as e:
                raise UcrError(f"the inotify watch on {w['tail']} (fd {rec['fd']}) cannot come back: "
                               f"{e.strerror}") from None
            watched.add((st.st_dev, st.st_ino))
        next_wd, filled = 1, 0
        for w in sorted(saved, key=lambda w: w["wd"]):
            if w["wd"] < next_wd:
                raise UcrError(f"image corrupt: inotify watch descriptor {w['wd']} of fd {rec['fd']} repeats")
            while next_wd < w["wd"]:
                got = self._add(ino, self._placeholder(watched), C["IN_DELETE_SELF"], rec)
                lib.ucr_inotify_rm_watch(ino, got)
                if got != next_wd:
                    raise UcrError(f"inotify gave watch descriptor {got} where {next_wd} was expected")
                next_wd, filled = got + 1, filled + 1
                if filled % DRAIN_EVERY == 0:
                    self._drain(ino)
            # The saved path is the object itself: a watched symbolic link stays one.
            got = self._add(ino, w["tail"], w["mask"] | C["IN_DONT_FOLLOW"], rec)
            if got != w["wd"]:
                raise UcrError(f"the inotify watch on {w['tail']} (fd {rec['fd']}) came back as watch descriptor "
                               f"{got}, not {w['wd']}")
            next_wd = got + 1
        if filled:
            self._drain(ino)   # the placeholders' IN_IGNORED events

    def open(self, rec):
        saved = self.saved.get(rec["file_id"])
        if saved is None:
            raise UcrError(f"image corrupt: no INOTIFY record for the inotify instance at fd {rec['fd']}")
        C = self.rst.arch.C
        ino = lib.ucr_inotify_init(C["IN_NONBLOCK"] | C["IN_CLOEXEC"])
        if ino < 0:
            raise UcrError(f"cannot create an inotify instance (fd {rec['fd']}): {os.strerror(-ino)}")
        try:
            self._watch(ino, rec, self.watches.get(rec["file_id"], []))
            fcntl.fcntl(ino, fcntl.F_SETFL, rec["flags"])
        except BaseException:
            os.close(ino)
            raise
        if saved["queued"]:
            self.rst.warn(f"warning: {saved['queued']} bytes of inotify events that were queued on fd {rec['fd']} "
                          "at the checkpoint are lost")
        return ino
