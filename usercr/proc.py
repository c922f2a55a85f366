"""Small named readers of /proc, in the manner of psutil's _pslinux.py."""
import os

from .arch import current as current_arch
from .errors import UcrError

PROC = "/proc"


def path(pid, *parts):
    return os.path.join(PROC, str(pid), *parts)


def read_text(pid, name):
    try:
        with open(path(pid, name)) as f:
            return f.read()
    except FileNotFoundError:
        raise UcrError(f"process {pid} does not exist") from None
    except ProcessLookupError:
        raise UcrError(f"process {pid} exited") from None


def read_bytes(pid, name):
    try:
        with open(path(pid, name), "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise UcrError(f"process {pid} does not exist") from None


CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def caps(pid):
    """The capability sets of pid (its main thread), in CAP_SETS order."""
    st = status(pid)
    return [int(st[k], 16) for k in CAP_SETS]


def exists(pid):
    return os.path.exists(path(pid, "stat"))


class Mapping:
    """One line of /proc/PID/maps (a plain class: dataclasses costs ckpt and rstr ~10 ms to import)."""
    __slots__ = ("start", "end", "perms", "offset", "dev", "inode", "name")

    def __init__(self, start, end, perms, offset, dev, inode, name):
        self.start, self.end, self.perms, self.offset = start, end, perms, offset
        self.dev, self.inode, self.name = dev, inode, name

    def __repr__(self):
        return (f"Mapping(start={self.start:#x}, end={self.end:#x}, perms={self.perms!r}, offset={self.offset}, "
                f"dev={self.dev}, inode={self.inode}, name={self.name!r})")

    def __eq__(self, other):
        return isinstance(other, Mapping) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    @property
    def prot(self):
        return (1 if "r" in self.perms else 0) | (2 if "w" in self.perms else 0) | (4 if "x" in self.perms else 0)

    @property
    def shared(self):
        return self.perms[3] == "s"

    @property
    def special(self):
        """Kernel-provided mappings such as [vdso], [vvar], [vvar_vclock]."""
        return self.name.startswith("[") and self.name not in ("[heap]", "[stack]") \
            and not self.name.startswith("[anon:")

    @property
    def deleted(self):
        return self.name.endswith(" (deleted)")


ARM_VECTORS = (0xffff0000, 0xffff1000)


def maps(pid):
    return parse_maps(read_text(pid, "maps"))


def parse_maps(text):
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        lo, hi = parts[0].split("-")
        major, minor = parts[3].split(":")
        m = Mapping(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16),
                    os.makedev(int(major, 16), int(minor, 16)), int(parts[4]), parts[5] if len(parts) > 5 else "")
        if not m.name and (m.start, m.end) == ARM_VECTORS and m.perms == "r-xp":
            m.name = "[vectors]"  # qemu-user shows 32-bit ARM's vectors page without its name
        out.append(m)
    return out


def status(pid):
    out = {}
    for line in read_text(pid, "status").splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def stat_fields(pid):
    """Fields of /proc/PID/stat, 1-based as in proc(5); comm may hold spaces."""
    text = read_text(pid, "stat")
    lpar, rpar = text.index("("), text.rindex(")")
    return [None, text[:lpar].strip(), text[lpar + 1:rpar]] + text[rpar + 2:].split()


def threads(pid, missing_ok=False):
    try:
        return sorted(int(t) for t in os.listdir(path(pid, "task")))
    except (FileNotFoundError, ProcessLookupError):
        if missing_ok:
            return []
        raise UcrError(f"process {pid} does not exist") from None


def state(pid):
    """The one-letter state of /proc/PID/stat, or None once it is gone."""
    try:
        return stat_fields(pid)[3]
    except UcrError:
        return None


def children(pid):
    """The children of every thread of process pid."""
    out = set()
    for tid in threads(pid, missing_ok=True):
        try:
            with open(path(pid, "task", str(tid), "children")) as f:
                out.update(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def nspids(pid):
    """The PIDs of a task from this namespace inward (NSpid)."""
    return [int(x) for x in status(pid)["NSpid"].split()]




SIGEV = {"signal": "SIGEV_SIGNAL", "none": "SIGEV_NONE", "thread": "SIGEV_THREAD"}  # as /proc/PID/timers names them


def posix_timers(pid):
    """POSIX timers from /proc/PID/timers: id, signo, sigev_value, notify
    (SIGEV_*), notify_tid (the thread it targets, 0 for the process), clockid."""
    out = []
    for line in read_text(pid, "timers").splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "ID":
            out.append({"id": int(value)})
        elif key == "signal":
            signo, _, sigval = value.partition("/")
            out[-1].update(signo=int(signo), value=int(sigval, 16))
        elif key == "notify":
            how, _, target = value.partition("/")
            kind, _, tid = target.partition(".")
            C = current_arch().C
            out[-1]["notify"] = C[SIGEV[how]] | (C["SIGEV_THREAD_ID"] if kind == "tid" else 0)
            out[-1]["notify_tid"] = int(tid) if kind == "tid" else 0
        elif key == "ClockID":
            out[-1]["clockid"] = int(value)
    return out


def readlink(pid, name):
    try:
        return os.readlink(path(pid, name))
    except (FileNotFoundError, ProcessLookupError):
        raise UcrError(f"process {pid} exited") from None


def fds(pid):
    """[(fd, target, fdinfo dict)] for every open descriptor; the fdinfo's
    `lock:` lines are a list under "lock"."""
    out = []
    try:
        names = os.listdir(path(pid, "fd"))
    except (FileNotFoundError, ProcessLookupError):
        raise UcrError(f"process {pid} exited") from None
    for name in sorted(names, key=int):
        fd = int(name)
        try:
            target = os.readlink(path(pid, "fd", name))
            info = {}
            with open(path(pid, "fdinfo", name)) as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key == "lock":
                        info.setdefault("lock", []).append(value.strip())
                    else:
                        info[key] = value.strip()
        except (FileNotFoundError, ProcessLookupError):
            continue  # closed meanwhile; a stopped task cannot do that, so it was ours
        out.append((fd, target, info))
    return out


def sigmask(value):
    return int(value, 16)


def rlimits(pid):
    import resource
    try:
        return [resource.prlimit(pid, r) for r in range(16)]
    except PermissionError:  # another uid's: prlimit would need CAP_SYS_RESOURCE; the table says the same
        rows = [line[26:].split()[:2] for line in read_text(pid, "limits").splitlines()[1:17]]
        return [tuple(resource.RLIM_INFINITY if v == "unlimited" else int(v) for v in row) for row in rows]
