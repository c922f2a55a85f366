"""Filesystem context: working directory, root and umask (FS)."""
import stat

from . import proc
from . import records as R
from . import trust
from .errors import UcrError


def dump(ctx):
    yield R.FS.pack(umask=int(ctx.status.get("Umask", "0022"), 8),
                    tail=[proc.readlink(ctx.pid, "cwd"), proc.readlink(ctx.pid, "root")])


class Restore:
    def __init__(self, rst):
        self.rst = rst
        self.dirs = {}  # path -> kept fd

    def _dir(self, path):
        if path not in self.dirs:
            try:
                self.dirs[path] = self.rst.keep(trust.open_checked(path, stat.S_IFDIR, None, "directory"))
            except OSError as e:
                raise UcrError(f"working directory {e.filename} is gone: {e.strerror}") from None
        return self.dirs[path]

    def prepare(self, plan, p):
        cwd, root = p["FS"]["tail"]
        plan.cwd_fd, plan.root_fd = self._dir(cwd), self._dir(root) if root != "/" else -1
        plan.umask = p["FS"]["umask"]
