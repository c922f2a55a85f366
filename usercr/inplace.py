"""Restoring where clone3 is missing (qemu-user 7.2 answers ENOSYS to every
form of it): a lone single-threaded process is created by a plain fork of
rstr, which then becomes the program through the restorer as usual. Its PID
is new (fork cannot choose one). It unmaps only what its /proc/self/maps
lists (qemu-user keeps memory of its own in the guest's address range, which
a blanket munmap would take from under it) and sets the brk with brk(),
which is the emulator's own. Where PR_SET_MM_MAP fails (qemu-user: EINVAL)
it is skipped, and what it sets stays rstr's: said once."""
import errno

from .errors import UcrError
from .native import lib

MAPS_SIZE = 256 * 1024   # rstr's /proc/self/maps, read by the restorer before it unmaps


def clone3_missing(arch):
    return lib.ucr_probe_clone3(arch.SYSCALLS["clone3"]) == -errno.ENOSYS


def needed(image, arch, pids, pidns):
    """True when the tree must be restored by a fork; refuses what that cannot do."""
    if not clone3_missing(arch):
        return False
    if len(image.procs) > 1 or image.procs[0].zombie:
        raise UcrError("this system has no clone3 (ENOSYS: qemu-user?): only a lone process can be restored "
                       f"here, and process {image.procs[0].pid} has children")
    if len(image.procs[0].threads) > 1:
        raise UcrError("this system has no clone3 (ENOSYS: qemu-user?): a multithreaded process cannot be "
                       "restored here")
    if pids or pidns:
        raise UcrError("this system has no clone3 (ENOSYS: qemu-user?): the process gets a new PID; "
                       "restart without --pids/--pidns")
    return True


class Restore:
    def __init__(self, rst):
        self.rst = rst

    def data_size(self, p):
        return MAPS_SIZE if self.rst.forked else 0

    def prepare(self, plan, p):
        if not self.rst.forked:
            return
        plan.forked = 1
        plan.maps_buf, plan.maps_size = self.rst.region.put(bytes(MAPS_SIZE)), MAPS_SIZE
        self.rst.warn(f"note: no clone3 here (qemu-user?): process {p.pid} was restored with a new PID")
        if lib.ucr_probe_mm_map_size() < 0:
            plan.skip_mm = 1
            self.rst.warn("note: no prctl PR_SET_MM here (qemu-user?): the restored process's "
                          "/proc/PID/cmdline, environ, auxv and exe stay those of rstr")
