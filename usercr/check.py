"""usercr check: probes of what this system offers, each with its fix."""
import os
import re
import signal
import time

from . import proc
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


def check_ptrace():
    child = os.fork()
    if child == 0:
        time.sleep(5)
        os._exit(0)
    try:
        r = lib.ucr_ptrace(PTRACE_SEIZE, child, 0, 0)
        if r < 0:
            return False, f"PTRACE_SEIZE: {os.strerror(-r)}; set kernel.yama.ptrace_scope=0 or run as root"
        lib.ucr_ptrace(PTRACE_INTERRUPT, child, 0, 0)
        wait_stop(child, 5)
        lib.ucr_ptrace(PTRACE_DETACH, child, 0, 0)
        return True, ""
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


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
        return False, "needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE (run as root) for --pids"
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
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.read(8)
        return True, ""
    except OSError as e:
        return False, f"/proc/self/pagemap: {e.strerror} (CONFIG_PROC_PAGE_MONITOR)"


def check_vdso():
    names = [m.name for m in proc.maps("self") if m.special]
    return True, " ".join(names)


def check_kernel_engine():
    if kernel_engine_available():
        return True, "linux-cr sys_checkpoint/sys_restart present"
    return False, "not a linux-cr kernel; the user engine is used (this is normal)"


def run_checks():
    """(name, ok, detail, required) rows; the kernel engine and the unmapping
    of the restorer region are optional."""
    from . import inet
    optional = ("kernel engine (linux-cr)", "restorer unmapped after restart", "TCP repair mode",
                "nft for ckpt --tcp-established")
    return [(name, *fn(), name not in optional) for name, fn in (
        ("ptrace seize/interrupt", check_ptrace),
        ("clone3 with set_tid", check_clone3_set_tid),
        ("pid namespaces", lambda: check_namespace("pid")),
        ("user namespaces", lambda: check_namespace("user")),
        ("process_vm_readv", check_process_vm_readv),
        ("prctl PR_SET_MM_MAP", check_prctl_mm_map),
        ("pagemap", check_pagemap),
        ("vDSO layout", check_vdso),
        ("restorer unmapped after restart", check_restorer_cleanup),
        ("TCP repair mode", inet.check_repair),
        ("nft for ckpt --tcp-established", inet.check_nft),
        ("kernel engine (linux-cr)", check_kernel_engine),
    )]
