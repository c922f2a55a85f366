"""Rootless use: what a user other than root may checkpoint and restore,
and the one line that says what is missing (docs/security.md, "Rootless use").

On Linux 6.18, measured: a user's own processes can be ptraced, their
memory read and PR_SET_MM_MAP used without any capability, except that
/proc/PID/map_files, clone3 with set_tid and PR_SET_MM_MAP's exe_fd (the
/proc/PID/exe link) need CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN), and a
new PID namespace needs CAP_SYS_ADMIN."""
import os

from . import proc
from .arch import current as current_arch
from .errors import UcrError

GRANT = ("grant it with setcap cap_checkpoint_restore+ep on a copy of the Python that runs usercr (the venv's "
         "python3 is a link), or as an ambient capability: setpriv --inh-caps +checkpoint_restore "
         "--ambient-caps +checkpoint_restore (README, Rootless use)")
CAP_FIELDS = ("cap_inheritable", "cap_permitted", "cap_effective", "cap_bounding", "cap_ambient")
CREDS = ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid")


def _effective(name):
    return bool(proc.caps("self")[2] >> current_arch().C[name] & 1)


def can_checkpoint_restore():
    """What the kernel's checkpoint_restore_ns_capable asks (in our own user namespace)."""
    return _effective("CAP_CHECKPOINT_RESTORE") or _effective("CAP_SYS_ADMIN")


def check_restart(image, pids, pidns):
    """Before anything is opened or created: a user other than root restores
    only processes that ran with its own ids, needs CAP_CHECKPOINT_RESTORE
    to give back the original PIDs, CAP_SYS_ADMIN for a new PID namespace."""
    if os.geteuid() == 0:
        return
    own = proc.caps("self")
    for p in image.live:
        check_creds(p["CREDS"], p.pid)
        for t in p.threads:
            s = t.get("SECURITY")
            why = s and caps_to_drop([s[k] for k in CAP_FIELDS], own)
            if why:
                raise UcrError(f"process {p.pid} has {why}; restoring it needs root")
    if pidns and not _effective("CAP_SYS_ADMIN"):
        raise UcrError("a new PID namespace needs CAP_SYS_ADMIN (root); restart with the original PIDs in this "
                       "one (--no-pidns, once they are free) or, for a lone process, --no-pids")
    if pids and not can_checkpoint_restore():
        raise UcrError(f"restoring the original PIDs (clone3 set_tid) needs CAP_CHECKPOINT_RESTORE: {GRANT} "
                       "(or --no-pids for a lone process)")


def check_creds(c, pid):
    """A user other than root restores only processes that had exactly its
    own uids, gids and groups: rstr does not set them, it keeps its own."""
    ruid, euid, suid = os.getresuid()
    rgid, egid, sgid = os.getresgid()
    mine = dict(zip(CREDS, (ruid, euid, suid, euid, rgid, egid, sgid, egid)))
    other = [k for k in CREDS if c[k] != mine[k]]
    if other:
        k = other[0]
        raise UcrError(f"process {pid} ran with {k} {c[k]}, rstr runs with {mine[k]}; restarting it needs root")
    if sorted(c["tail"]) != sorted(os.getgroups()):
        raise UcrError(f"process {pid} ran with supplementary groups {sorted(c['tail']) or 'none'}, rstr with "
                       f"{sorted(os.getgroups()) or 'none'}; restarting it needs root")


def caps_to_drop(want, own):
    """A user other than root can give a restored thread capability sets
    [inh, prm, eff, bnd, amb] only by dropping from its own: None if want is
    reachable so, otherwise why not."""
    inh, prm, eff, bnd, amb = want
    o_inh, o_prm, _, o_bnd, _ = own
    if prm & ~o_prm or eff & ~prm or inh & ~(o_inh | o_prm) or amb & ~(prm & inh):
        return "capabilities rstr does not have"
    if bnd != o_bnd:
        return "another capability bounding set than rstr's"
    return None


def keep_exe(rst):
    """Without the capability the /proc/PID/exe link cannot be set: the
    restored processes keep rstr's (the Python interpreter), said once."""
    if os.geteuid() == 0 or can_checkpoint_restore():
        return False
    rst.warn(f"warning: /proc/PID/exe of the restored processes names {os.readlink('/proc/self/exe')}, not their "
             f"program: setting it needs CAP_CHECKPOINT_RESTORE; {GRANT}")
    return True


def check_user():
    """usercr check: what this user can do (root can do everything)."""
    uid = os.geteuid()
    if uid == 0:
        return True, "root: checkpoints and restores any user's processes"
    if can_checkpoint_restore():
        return True, (f"uid {uid} has CAP_CHECKPOINT_RESTORE: checkpoints and restores its own processes with "
                      "their PIDs (a new PID namespace needs root)")
    return False, (f"uid {uid} lacks CAP_CHECKPOINT_RESTORE: ckpt needs its processes' mapped files unchanged on "
                   f"disk, rstr only --no-pids of a lone process and loses /proc/PID/exe; {GRANT}")
