"""Credentials: uids, gids and supplementary groups (CREDS)."""
import os
import struct

from . import records as R
from .errors import UcrError


def dump(ctx):
    uids = [int(x) for x in ctx.status["Uid"].split()]
    gids = [int(x) for x in ctx.status["Gid"].split()]
    groups = [int(x) for x in ctx.status.get("Groups", "").split()]
    yield R.CREDS.pack(uid=uids[0], euid=uids[1], suid=uids[2], fsuid=uids[3],
                       gid=gids[0], egid=gids[1], sgid=gids[2], fsgid=gids[3], tail=groups)


class Restore:
    def __init__(self, rst):
        self.rst = rst

    def prepare(self, plan, p):
        c = p["CREDS"]
        for key in ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid"):
            setattr(plan, key, c[key])
        groups = c["tail"]
        if os.geteuid() == 0:
            plan.restore_creds = 1
            plan.groups = self.rst.region.put(struct.pack(f"<{len(groups)}I", *groups)) if groups else 0
            plan.nr_groups = len(groups)
        elif (os.getuid(), os.getgid()) != (c["uid"], c["gid"]):
            raise UcrError(f"the image runs as uid {c['uid']}; restarting it needs root")
