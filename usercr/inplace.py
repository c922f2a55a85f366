"""Restoring where clone3 is missing (qemu-user 7.2 answers ENOSYS to every
form of it): a lone single-threaded process is created by a plain fork of
rstr, which then becomes the program through the restorer as usual. Its PID
is new (fork cannot choose one). It unmaps only what its /proc/self/maps
lists (qemu-user keeps memory of its own in the guest's address range, which
a blanket munmap would take from under it) and sets the brk with brk(),
which is the emulator's own (restorer.c brk_to: docs/self-checkpoint.md,
"The brk under qemu-user"). Where PR_SET_MM_MAP fails (qemu-user: EINVAL)
it is skipped, and what it sets stays rstr's: said once."""
import errno

from .errors import UcrError
from .records import VMA_KINDS
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


def brk_failure(addr, err):
    """The restorer could not make qemu-user's brk the image's (restorer.c brk_to)."""
    if err == errno.EEXIST:
        return UcrError(f"the image maps 0x{addr:x}, inside the heap room qemu-user keeps for rstr's own brk "
                        "(growing the brk there would zero it); it cannot be restored under qemu-user")
    return UcrError(f"qemu-user could not grow rstr's brk to the program's 0x{addr:x}; it cannot be restored "
                    "under qemu-user")


def brk_note(pid, raised):
    return (f"note: qemu-user takes no brk below rstr's own first one: process {pid}'s brk() answers at least "
            f"0x{raised:x} (the memory up to it mapped empty)")


def _same_kind(v, m):
    """The image's own trampoline page at that place: the same code, whoever wrote it."""
    return (v["start"], v["end"]) == (m.start, m.end) and v["kind"] == VMA_KINDS.ANON and v["prot"] == m.prot


class Restore:
    def __init__(self, rst):
        self.rst = rst

    def data_size(self, p):
        return MAPS_SIZE if self.rst.forked else 0

    def _trampoline(self, p):
        """qemu-user returns from guest signal handlers through a page of its
        own (aarch64): it stays, where the image has nothing else."""
        at = lib.ucr_sigreturn_address()
        m = next((m for m in self.rst.mine if m.start <= at < m.end), None)
        if m is None or m.name:
            return 0, 0
        for v in p.records("VMA"):
            if v["start"] < m.end and m.start < v["end"] and not _same_kind(v, m):
                raise UcrError(f"the image maps 0x{v['start']:x}, where the emulator's signal return code lies "
                               "here (qemu-user); it cannot be restored in this process")
        return m.start, m.end

    def prepare(self, plan, p):
        if not self.rst.forked:
            return
        plan.forked = 1
        plan.maps_buf, plan.maps_size = self.rst.region.put(bytes(MAPS_SIZE)), MAPS_SIZE
        plan.keep_start, plan.keep_end = self._trampoline(p)
        self.rst.warn(f"note: no clone3 here (qemu-user?): process {p.pid} was restored with a new PID")
        if lib.ucr_probe_mm_map_size() < 0:
            plan.skip_mm = 1
            self.rst.warn("note: no prctl PR_SET_MM here (qemu-user?): the restored process's "
                          "/proc/PID/cmdline, environ, auxv and exe stay those of rstr")
