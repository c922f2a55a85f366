"""signalfds (fd kind signalfd): one SIGNALFD record per open file
description the tree holds, with the signals it reads (fdinfo `sigmask`),
recreated by rstr before the tree exists. What it reads is the reading
task's own pending signals, which come back with each task (SIGPENDING)."""
import os

from . import records as R
from .errors import UcrError
from .native import lib

K = R.FD_KINDS
KINDS = (K.SIGNALFD,)
TARGET = "anon_inode:[signalfd]"


def classify(ctx, st, target, info):
    return K.SIGNALFD if target == TARGET else None


def note(ctx, fd, st, info, fields):
    from .files import file_id  # files imports this module
    ctx.tree.setdefault("signalfds", {}).setdefault(file_id(ctx, fd, st), int(info["sigmask"], 16))


def tree_records(tree):
    return [R.SIGNALFD.pack(file_id=fid, sigmask=mask) for fid, mask in tree.get("signalfds", {}).items()]


class Restore:
    def __init__(self, rst):
        self.rst = rst
        self.saved = {rec["file_id"]: rec for rec in rst.img.tree_records("SIGNALFD")}

    def open(self, rec):
        saved = self.saved.get(rec["file_id"])
        if saved is None:
            raise UcrError(f"image corrupt: no SIGNALFD record for the signalfd at fd {rec['fd']}")
        new = lib.ucr_signalfd(saved["sigmask"])
        if new < 0:
            raise UcrError(f"cannot recreate the signalfd at fd {rec['fd']}: {os.strerror(-new)}")
        os.set_blocking(new, not rec["flags"] & os.O_NONBLOCK)
        return new
