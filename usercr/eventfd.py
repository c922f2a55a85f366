"""eventfds (fd kind eventfd): one EVENTFD record per open file description
the tree holds, with its counter and EFD_SEMAPHORE, recreated by rstr before
the tree exists. The counter is read from fdinfo; a kernel whose fdinfo
does not say `eventfd-semaphore` (before 6.5) is asked by a read and a write
on a copy of the fd, which put the counter back as it was."""
import os

from . import records as R
from .errors import UcrError
from .native import lib

K = R.FD_KINDS
KINDS = (K.EVENTFD,)
TARGET = "anon_inode:[eventfd]"
U64 = 8


def classify(ctx, st, target, info):
    return K.EVENTFD if target == TARGET else None


def note(ctx, fd, st, info, fields):
    from .files import file_id  # files imports this module
    ctx.tree.setdefault("eventfds", {}).setdefault(file_id(ctx, fd, st), (ctx.pid, fd, info))


def _semaphore(pid, fd, count):
    """EFD_SEMAPHORE, found out on a copy of the fd: with the counter at 2 or
    more, a semaphore's read gives 1. The counter is then put back."""
    copy = lib.ucr_pidfd_getfd(pid, fd)
    if copy < 0:
        raise UcrError(f"cannot reach the eventfd at fd {fd} of process {pid}: {os.strerror(-copy)}")
    try:
        added = max(0, 2 - count)
        if added:
            os.eventfd_write(copy, added)
        got = os.eventfd_read(copy)
        if got == 1:
            for _ in range(added - 1):
                os.eventfd_read(copy)
            if not added:
                os.eventfd_write(copy, 1)
            return True
        if count:
            os.eventfd_write(copy, count)
        return False
    except OSError as e:
        raise UcrError(f"reading the eventfd at fd {fd} of process {pid}: {e.strerror}") from None
    finally:
        os.close(copy)


def tree_records(tree):
    out = []
    for fid, (pid, fd, info) in tree.get("eventfds", {}).items():
        count = int(info["eventfd-count"], 16)
        sem = info.get("eventfd-semaphore")
        semaphore = int(sem) if sem is not None else _semaphore(pid, fd, count)
        out.append(R.EVENTFD.pack(file_id=fid, semaphore=int(semaphore), count=count))
    return out


class Restore:
    def __init__(self, rst):
        self.rst = rst
        self.saved = {rec["file_id"]: rec for rec in rst.img.tree_records("EVENTFD")}

    def open(self, rec):
        saved = self.saved.get(rec["file_id"])
        if saved is None:
            raise UcrError(f"image corrupt: no EVENTFD record for the eventfd at fd {rec['fd']}")
        flags = self.rst.arch.C["UCR_EFD_SEMAPHORE"] if saved["semaphore"] else 0
        try:
            new = os.eventfd(0, flags)
            if saved["count"]:  # the initial value is only 32 bits wide
                os.eventfd_write(new, saved["count"])
        except OSError as e:
            raise UcrError(f"cannot recreate the eventfd at fd {rec['fd']}: {e.strerror}") from None
        os.set_blocking(new, not rec["flags"] & os.O_NONBLOCK)
        return new
