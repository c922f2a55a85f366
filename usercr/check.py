"""usercr check: probes of what this system offers, each with its fix."""
import contextlib
import ctypes
import errno
import os
import re
import signal
import time

from . import proc, rootless
from .arch import current as current_arch
from .engine import kernel_engine_available
from .native import lib
from .ptrace import PTRACE_INTERRUPT, PTRACE_SEIZE, PTRACE_DETACH, wait_stop

_C = current_arch().C
CAP_SYS_ADMIN, CAP_CHECKPOINT_RESTORE = _C["CAP_SYS_ADMIN"], _C["CAP_CHECKPOINT_RESTORE"]


def _cap(bit):
    return bool(int(proc.status("self")["CapEff"], 16) >> bit & 1)


def _kernel_at_least(major, minor):
    parts = os.uname().release.split(".")
    return (int(parts[0]), int(re.sub(r"\D.*", "", parts[1]))) >= (major, minor)


@contextlib.contextmanager
def _target():
    """A child to probe as ckpt would a process. It runs sleep: a check
    started from a Python with a file capability is not dumpable, nor are
    its forks, and neither ptrace nor /proc/PID/pagemap would let it at them."""
    r, w = os.pipe()  # close-on-exec: EOF once the child runs sleep
    child = os.fork()
    if child == 0:
        try:
            os.execvp("sleep", ["sleep", "5"])
        finally:
            time.sleep(5)
            os._exit(0)
    os.close(w)
    try:
        try:
            os.read(r, 1)
        finally:
            os.close(r)
        yield child
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def check_ptrace():
    with _target() as child:
        r = lib.ucr_ptrace(PTRACE_SEIZE, child, 0, 0)
        if r < 0:
            return False, f"PTRACE_SEIZE: {os.strerror(-r)}; set kernel.yama.ptrace_scope=0 or run as root"
        lib.ucr_ptrace(PTRACE_INTERRUPT, child, 0, 0)
        wait_stop(child, 5)
        lib.ucr_ptrace(PTRACE_DETACH, child, 0, 0)
        return True, ""


def check_restorer_cleanup():
    """rstr unmaps its restorer region from the restored tasks with ptrace."""
    ok, why = check_ptrace()
    if ok:
        return True, ""
    return False, f"no ptrace ({why.split(';')[0]}): rstr leaves its restorer region mapped in restored processes"


def check_clone3_set_tid():
    if not _kernel_at_least(5, 5):
        return False, "needs Linux 5.5 or newer (falls back to ns_last_pid)"
    if not (_cap(CAP_SYS_ADMIN) or _cap(CAP_CHECKPOINT_RESTORE)):
        return False, f"needs CAP_CHECKPOINT_RESTORE (or root) for the original PIDs; {rootless.GRANT}"
    return True, ""


def check_namespace(kind):
    try:
        limit = int(open(f"/proc/sys/user/max_{kind}_namespaces").read())
    except OSError:
        return False, f"kernel built without {kind} namespaces (CONFIG_{kind.upper()}_NS)"
    if not limit:
        return False, f"sysctl user.max_{kind}_namespaces=0; raise it"
    return True, ""


def check_process_vm_readv():
    r = lib.ucr_probe_vm_readv()
    return r == 0, "" if r == 0 else f"{os.strerror(-r)} (CONFIG_CROSS_MEMORY_ATTACH)"


def check_prctl_mm_map():
    r = lib.ucr_probe_mm_map_size()
    if r < 0:
        return False, f"{os.strerror(-r)}: kernel built without CONFIG_CHECKPOINT_RESTORE"
    return True, f"struct size {r}"


def check_pagemap():
    with _target() as child:
        try:
            with open(f"/proc/{child}/pagemap", "rb") as f:
                f.read(8)
            return True, ""
        except FileNotFoundError:
            return False, "no /proc/PID/pagemap (CONFIG_PROC_PAGE_MONITOR)"
        except OSError as e:
            return False, f"/proc/PID/pagemap: {e.strerror}"


def check_write_tracking():
    """ckpt --pre-copy's way of finding written pages (usercr/incremental.py)."""
    r = lib.ucr_probe_write_tracking()
    if r == 0:
        return True, "userfaultfd WP_ASYNC + PAGEMAP_SCAN: pre-copy tracks writes"
    return False, (f"{os.strerror(-r)}: needs Linux 6.7+ with CONFIG_USERFAULTFD on an arch with userfaultfd write-protect; pre-copy compares "
                   "page contents instead (a longer freeze); --parent always compares")


def check_vdso():
    names = [m.name for m in proc.maps("self") if m.special]
    return True, " ".join(names)


def check_clone3():
    """rstr creates every task with clone3. Asked with no arguments, a kernel
    that has it answers EINVAL; qemu-user 7.2 answers ENOSYS."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(ctypes.c_long(current_arch().SYSCALLS["clone3"]), None, ctypes.c_long(0))
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        return False, "clone3: ENOSYS (qemu-user?): rstr cannot create the tasks here"
    return True, ""


def check_self_checkpoint():
    """The path usercr.checkpoint_self / usercr_checkpoint_self take here."""
    ok, why = check_ptrace()
    if ok:
        return True, "ptrace engine run by a helper outside the program's tree (usercr-selfckpt)"
    if not hasattr(current_arch(), "inside_cpu"):
        return False, f"no ptrace ({why.split(';')[0]}), and no ptrace-free dump on this arch yet"
    return True, (f"without ptrace ({why.split(';')[0]}): the program dumps itself from a signal handler "
                  "(single-threaded, no children); rstr restores it by fork where clone3 is missing")


def check_kernel_engine():
    if kernel_engine_available():
        return True, "linux-cr sys_checkpoint/sys_restart present"
    return False, "not a linux-cr kernel; the user engine is used (this is normal)"


def run_checks():
    """(name, ok, detail, required) rows; the kernel engine and the unmapping
    of the restorer region are optional."""
    from . import inet
    optional = ("kernel engine (linux-cr)", "restorer unmapped after restart", "write tracking", "self-checkpoint",
                "TCP repair mode", "nft for ckpt --tcp-established")
    return [(name, *fn(), name not in optional) for name, fn in (
        (f"this user (uid {os.geteuid()})", rootless.check_user),
        ("ptrace seize/interrupt", check_ptrace),
        ("clone3", check_clone3),
        ("clone3 with set_tid", check_clone3_set_tid),
        ("pid namespaces", lambda: check_namespace("pid")),
        ("user namespaces", lambda: check_namespace("user")),
        ("process_vm_readv", check_process_vm_readv),
        ("prctl PR_SET_MM_MAP", check_prctl_mm_map),
        ("pagemap", check_pagemap),
        ("vDSO layout", check_vdso),
        ("write tracking", check_write_tracking),
        ("restorer unmapped after restart", check_restorer_cleanup),
        ("self-checkpoint", check_self_checkpoint),
        ("TCP repair mode", inet.check_repair),
        ("nft for ckpt --tcp-established", inet.check_nft),
        ("kernel engine (linux-cr)", check_kernel_engine),
    )]
