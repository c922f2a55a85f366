"""Image record definitions: the single source for writer, reader, ckptinfo and the C core.

Every record starts with {u32 type; u32 len}; len counts the header and the
payload but not the padding that brings the next record to an 8-byte boundary.
Fixed fields are little-endian; an optional variable tail follows them.
This module must stay importable without the rest of the package: the native
build imports it by path to generate the C header.
"""
import struct

HEADER_MAGIC = 0x00FEED0CC0A2D200
TAIL_MAGIC = 0x002D2A0CC0DEEF00
FORMAT_VERSION = 2
RECORD_HDR = struct.Struct("<II")
ALIGN = 8

# linux-cr arch ids, plus one for AArch64 which linux-cr never had.
ARCH_IDS = {"x86_32": 1, "x86_64": 2, "s390x": 3, "arm": 4, "aarch64": 5}
ARCH_NAMES = {v: k for k, v in ARCH_IDS.items()}

# Field types: name -> (struct code, C type)
_TYPES = {
    "u8": ("B", "uint8_t"), "u16": ("H", "uint16_t"),
    "u32": ("I", "uint32_t"), "s32": ("i", "int32_t"),
    "u64": ("Q", "uint64_t"), "s64": ("q", "int64_t"),
}

# Tail kinds: None (no tail), "bytes", "str" (one string), "strs" (NUL-separated list),
# "u32s"/"u64s" (arrays).
TAIL_KINDS = (None, "bytes", "str", "strs", "u32s", "u64s")


class Kinds:
    """An enumeration declared once here: Python reads Kinds.NAME (the value)
    and kinds[value] (the name); the C core gets `#define UCR_<PREFIX>_NAME value`."""

    def __init__(self, prefix, names):
        self.prefix = prefix
        self.names = dict(enumerate(names))
        for value, name in self.names.items():
            setattr(self, name.upper().replace("-", "_"), value)

    def __getitem__(self, value):
        return self.names[value]

    def get(self, value, default=None):
        return self.names.get(value, default)

    def c_defines(self):
        return [f"#define UCR_{self.prefix}_{n.upper().replace('-', '_')} {v}" for v, n in self.names.items()]


def align(n):
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class Record:
    """One record type: number, name, fixed fields, optional tail."""

    def __init__(self, type_, name, fields=(), tail=None, doc="", c=False, scope="process", many=False):
        assert tail in TAIL_KINDS and scope in ("process", "thread", "tree")
        self.type = type_
        self.name = name
        self.fields = []  # (name, code, count)
        fmt = "<"
        for fname, ftype in fields:
            count = 1
            if "[" in ftype:
                ftype, n = ftype.rstrip("]").split("[")
                count = int(n)
            if ftype == "char":
                fmt += f"{count}s"
            else:
                fmt += f"{count}{_TYPES[ftype][0]}"
            self.fields.append((fname, ftype, count))
        self.struct = struct.Struct(fmt)
        assert self.struct.size % ALIGN == 0, f"{name}: fixed part must be 8-byte sized"
        # Only plain numbers: unpack zips names and values (rstr decodes some 200 records at start)
        self.plain = tuple(f[0] for f in self.fields) if all(f[1] != "char" and f[2] == 1 for f in self.fields) \
            else None
        self.tail = tail
        self.doc = doc
        self.c = c
        self.scope = scope  # "thread": follows its THREAD record; "tree": an object the tree shares, after
                            # every process's records
        self.many = many    # a process (or thread, for SIGPENDING) may have several

    @property
    def fixed_len(self):
        return RECORD_HDR.size + self.struct.size

    def pack(self, tail=None, **values):
        flat = []
        for fname, ftype, count in self.fields:
            v = values.get(fname, b"" if ftype == "char" else 0)
            if ftype == "char":
                flat.append(v.encode() if isinstance(v, str) else v)
            elif count > 1:
                v = list(v) + [0] * (count - len(v))
                flat.extend(v)
            else:
                flat.append(v)
        body = self.struct.pack(*flat) + self._pack_tail(tail)
        length = RECORD_HDR.size + len(body)
        return RECORD_HDR.pack(self.type, length) + body + b"\0" * (align(length) - length)

    def _pack_tail(self, tail):
        if self.tail is None or tail is None:
            return b""
        if self.tail == "bytes":
            return bytes(tail)
        if self.tail == "str":
            return tail.encode() + b"\0"
        if self.tail == "strs":
            return b"".join(s.encode() + b"\0" for s in tail)
        code = "I" if self.tail == "u32s" else "Q"
        return struct.pack(f"<{len(tail)}{code}", *tail)

    def unpack(self, payload):
        """Decode the payload (everything after the record header, unpadded)."""
        if len(payload) < self.struct.size:
            raise ValueError(f"{self.name} record too short")
        values = self.struct.unpack_from(payload)
        if self.plain is not None:
            out = dict(zip(self.plain, values))
        else:
            out, flat = {}, iter(values)
            for fname, ftype, count in self.fields:
                if ftype == "char":
                    out[fname] = next(flat).split(b"\0", 1)[0].decode(errors="replace")
                elif count > 1:
                    out[fname] = [next(flat) for _ in range(count)]
                else:
                    out[fname] = next(flat)
        rest = payload[self.struct.size:]
        if self.tail == "bytes":
            out["tail"] = bytes(rest)
        elif self.tail == "str":
            out["tail"] = rest.split(b"\0", 1)[0].decode(errors="surrogateescape")
        elif self.tail == "strs":
            out["tail"] = [s.decode(errors="surrogateescape") for s in rest.split(b"\0")[:-1]]
        elif self.tail in ("u32s", "u64s"):
            code, size = ("I", 4) if self.tail == "u32s" else ("Q", 8)
            out["tail"] = list(struct.unpack(f"<{len(rest) // size}{code}", rest[: len(rest) // size * size]))
        return out


REGISTRY = {}


def _rec(*args, **kw):
    r = Record(*args, **kw)
    assert r.type not in REGISTRY, r.type
    REGISTRY[r.type] = r
    return r


# 1-8: header and buffers
HEADER = _rec(1, "HEADER", [
    ("magic", "u64"), ("version", "u32"), ("arch_id", "u32"),
    ("page_size", "u32"), ("flags", "u32"), ("time", "s64"),
    ("release", "char[72]"), ("kversion", "char[72]"), ("machine", "char[72]"),
], doc="image header: magic, format version, arch, kernel identity, page size, time", c=True)

# 101-118: tasks
TREE = _rec(102, "TREE", [("nr_tasks", "u32"), ("root_pid", "u32")],
            doc="task tree: number of processes; one PIDS record per process follows, parents first")
PIDS = _rec(101, "PIDS", [("pid", "s32"), ("tgid", "s32"), ("ppid", "s32"), ("pgid", "s32"),
                          ("sid", "s32"), ("pad", "u32")],
            doc="one process's ids as seen in the tree's PID namespace")
TASK = _rec(103, "TASK", [
    ("pid", "s32"), ("exit_signal", "s32"), ("pdeathsig", "s32"), ("personality", "u32"),
    ("comm", "char[16]"), ("tty_nr", "u64"), ("ctty_fg", "u32"), ("nr_threads", "u32"),
    ("zombie", "u32"), ("exit_status", "s32"), ("stopped", "u32"), ("dumpable", "u32"),
], tail="str", doc="process: comm, personality, threads, the signal of its group stop (0: not stopped), its "
                   "PR_GET_DUMPABLE value; "
                   "a zombie has only this record and its wait status; tail is the executable's ELF path. "
                   "Its records follow up to the next TASK")
THREAD = _rec(104, "THREAD", [
    ("tid", "s32"), ("rseq_len", "u32"), ("rseq_ptr", "u64"), ("rseq_sig", "u32"),
    ("altstack_flags", "s32"), ("altstack_sp", "u64"), ("altstack_size", "u64"),
    ("blocked", "u64"), ("clear_child_tid", "u64"), ("robust_list", "u64"), ("robust_len", "u64"),
], doc="thread: rseq registration, sigaltstack, blocked signals, clear_child_tid, robust futex list; "
       "its CPU records and per-thread SIGPENDING records follow")
CREDS = _rec(108, "CREDS", [
    ("uid", "u32"), ("euid", "u32"), ("suid", "u32"), ("fsuid", "u32"),
    ("gid", "u32"), ("egid", "u32"), ("sgid", "u32"), ("fsgid", "u32"),
], tail="u32s", doc="credentials; tail is the supplementary groups")
SECURITY = _rec(110, "SECURITY", [
    ("cap_inheritable", "u64"), ("cap_permitted", "u64"), ("cap_effective", "u64"), ("cap_bounding", "u64"),
    ("cap_ambient", "u64"), ("securebits", "u32"), ("no_new_privs", "u32"), ("seccomp", "u32"),
    ("nr_filters", "u32"),
], scope="thread", doc="thread: capability sets, securebits, no_new_privs, seccomp mode and number of filters; its "
       "SECCOMP_FILTER records follow")
SECCOMP_FILTER = _rec(111, "SECCOMP_FILTER", [("index", "u32"), ("flags", "u32")], tail="bytes",
                      scope="thread", many=True,
                      doc="thread: one seccomp filter, oldest first; flags: SECCOMP_FILTER_FLAG_LOG; tail is "
                          "its classic BPF program (struct sock_filter[])")
RLIMITS = _rec(109, "RLIMITS", [("limits", "u64[32]")],
               doc="16 rlimits as (cur, max) pairs; RLIM_INFINITY is all ones")
# Namespaces the tree has of its own, recreated by rstr before it creates the root
NAMESPACES = _rec(112, "NAMESPACES", tail="strs",
                  scope="tree", doc="the kinds of namespace (ipc, uts, net) the tree has of its own, which rstr creates anew "
                      "before the root; a kind not named is ckpt's own")
UTS_NS = _rec(113, "UTS_NS", tail="strs", scope="tree", doc="the tree's own UTS namespace; tail is [hostname, domainname]")
NET_LINK = _rec(114, "NET_LINK", [("index", "s32"), ("flags", "u32"), ("mtu", "u32"), ("pad", "u32")],
                tail="str", scope="tree", doc="a network interface of the tree's own network namespace (only the loopback "
                                "one yet): ifindex, IFF_* flags, MTU; tail is its name")
NET_ADDR = _rec(115, "NET_ADDR", [("index", "s32"), ("family", "u32"), ("prefixlen", "u32"), ("scope", "u32"),
                                  ("flags", "u32"), ("pad", "u32")], tail="bytes",
                scope="tree", doc="an address of a NET_LINK (by index): AF_INET or AF_INET6, prefix length, scope, IFA_F_* "
                    "flags; tail is the address (4 or 16 bytes)")

# 201-299: arch-specific
X86_64_HEADER = _rec(201, "X86_64_HEADER", [("xfeatures", "u64"), ("xsave_size", "u32"), ("pad", "u32")],
                     doc="x86_64: a task's default XSAVE features (XCR0 less first-use-only ones: AMX tile data) and their signal frame XSAVE size")
X86_64_CPU = _rec(202, "X86_64_CPU", [("regs", "u64[27]"), ("pad", "u64")],
                  scope="thread", doc="x86_64: struct user_regs_struct (includes fs_base/gs_base = TLS)")
X86_64_FPU = _rec(203, "X86_64_FPU", tail="bytes",
                  scope="thread", doc="x86_64: the XSAVE area as PTRACE_GETREGSET(NT_X86_XSTATE) gives it")
ARM_HEADER = _rec(211, "ARM_HEADER", [
    ("cpu_architecture", "u32"), ("mmu", "u32"), ("aeabi", "u32"), ("oabi_compat", "s32"),
    ("hwcap", "u64"), ("hwcap2", "u64"),
], doc="arm: the checkpointing system's CPU architecture (cpuinfo/AT_PLATFORM), MMU, kernel EABI "
       "support and CONFIG_OABI_COMPAT (-1: unknown), and AT_HWCAP/AT_HWCAP2 (linux-cr's arch header)")
ARM_CPU = _rec(212, "ARM_CPU", [("regs", "u32[18]")],
               scope="thread", doc="arm: r0-r15, cpsr, orig_r0 (struct pt_regs)")
ARM_THREAD = _rec(213, "ARM_THREAD", [("syscall", "s32"), ("tp_value", "u32"), ("thumbee_state", "u32"),
                                      ("pad", "u32")],
                  scope="thread", doc="arm: syscall number if stopped in one (-1: none), TLS (TPIDRURO), ThumbEE state (TEEHBR)")
ARM_VFP = _rec(214, "ARM_VFP", [("fpregs", "u64[32]"), ("fpscr", "u32"), ("pad", "u32")],
               scope="thread", doc="arm: VFP/NEON d0-d31 and fpscr (PTRACE_GETREGSET NT_ARM_VFP)")
ARM_MM_CONTEXT = _rec(215, "ARM_MM_CONTEXT", [("end_brk", "u64")],
                      doc="arm: end of the heap mapping (linux-cr's mm_context)")
ARM_TASK = _rec(216, "ARM_TASK", [("e_flags", "u32"), ("eabi_version", "s32")],
                doc="arm: the executable's ELF e_flags and EABI version (e_flags >> 24; 0: OABI/legacy, "
                    "-1: could not be read)")
AARCH64_HEADER = _rec(221, "AARCH64_HEADER", [("hwcap", "u64"), ("hwcap2", "u64")],
                      doc="aarch64: AT_HWCAP and AT_HWCAP2 of the checkpointing system")
AARCH64_CPU = _rec(222, "AARCH64_CPU", [("regs", "u64[34]"), ("tls", "u64"), ("syscall", "s32"), ("pad", "u32")],
                   scope="thread", doc="aarch64: x0-x30, sp, pc, pstate (NT_PRSTATUS), tpidr_el0 (NT_ARM_TLS), "
                       "syscall number (NT_ARM_SYSTEM_CALL, -1: none)")
AARCH64_FPSIMD = _rec(223, "AARCH64_FPSIMD", [("vregs", "u64[64]"), ("fpsr", "u32"), ("fpcr", "u32")],
                      scope="thread", doc="aarch64: v0-v31 (as low, high 64-bit halves), fpsr, fpcr (NT_PRFPREG)")

# 301-308: files
FILE = _rec(301, "FILE", [
    ("fd", "s32"), ("kind", "u32"), ("flags", "u32"), ("fd_flags", "u32"),
    ("pos", "s64"), ("size", "s64"), ("mode", "u32"), ("file_id", "u32"),
    ("dev", "u64"), ("ino", "u64"), ("rdev", "u64"),
], tail="str", many=True, doc="open file descriptor; fds with the same file_id share one open file description "
                   "(offset, flags) across the tree; tail is the path (/proc/self/... for a file of the process's "
                   "own /proc entry)")
FD_KINDS = Kinds("FD", ["reg", "dir", "chr", "tty", "pipe", "socket", "fifo", "pty-master", "pty-slave",
                        "inotify", "unix", "epoll", "eventfd", "timerfd", "signalfd", "tcp", "udp"])
PIPE = _rec(302, "PIPE", [("ino", "u64"), ("capacity", "u32"), ("pad", "u32")], tail="bytes",
            scope="tree", doc="a pipe or FIFO used in the tree (FILE records name it by ino); tail is the data "
                "buffered in it")

TTY = _rec(303, "TTY", [("index", "u32"), ("input_len", "u32"), ("output_len", "u32"), ("pad", "u32"),
                        ("termios", "u64[8]"), ("winsize", "u64")], tail="bytes",
          scope="tree", doc="a pseudo-terminal whose master the tree holds (FILE records name it by index in size): "
              "struct termios and winsize as TCGETS/TIOCGWINSZ give them, then the data queued towards "
              "the slave (input_len bytes) and towards the master (output_len bytes)")

TERMINAL = _rec(306, "TERMINAL", [("rdev", "u64"), ("termios", "u64[8]"), ("winsize", "u64")],
               scope="tree", doc="a terminal the tree uses but does not own (FILE records of kind tty or pty-slave name it by "
                   "rdev): its struct termios and winsize, put on the terminal the tree is restored on")
FILE_LOCK = _rec(304, "FILE_LOCK", [("fd", "s32"), ("file_id", "u32"), ("kind", "u32"), ("type", "u32"),
                                      ("start", "s64"), ("len", "s64")],
                 many=True, doc="a file lock the process holds, after its FILE records: kind 0 POSIX (owned by this "
                     "process), 1 OFD, 2 flock (both of the open file description file_id, once per process "
                     "holding it); type F_RDLCK/F_WRLCK; len 0: to end of file; fd: the process's fd it is on")
LOCK_KINDS = Kinds("LOCK", ["POSIX", "OFD", "flock"])

# 310-312: eventfd, timerfd, signalfd (one record per open file description, named by the FILE records' file_id)
EVENTFD = _rec(310, "EVENTFD", [("file_id", "u32"), ("semaphore", "u32"), ("count", "u64")],
               scope="tree", doc="an eventfd: its counter and whether it counts as a semaphore (EFD_SEMAPHORE)")
TIMERFD = _rec(311, "TIMERFD", [("file_id", "u32"), ("clockid", "s32"), ("settime_flags", "u32"), ("pad", "u32"),
                                ("ticks", "u64"), ("value_ns", "u64"), ("interval_ns", "u64"), ("now_ns", "u64")],
               scope="tree", doc="a timerfd: its clock, the flags it was last set with (TFD_TIMER_ABSTIME, "
                   "TFD_TIMER_CANCEL_ON_SET), its expirations not yet read, the time left (0: disarmed) and "
                   "interval, and the clock's reading when the time left was taken")
SIGNALFD = _rec(312, "SIGNALFD", [("file_id", "u32"), ("pad", "u32"), ("sigmask", "u64")],
                scope="tree", doc="a signalfd: the signals it reads (bit N-1 for signal N)")

# 313-315: epoll (usercr/epoll.py)
EPOLL_TFD = _rec(313, "EPOLL_TFD", [("epoll_id", "u32"), ("target_id", "u32"), ("tfd", "s32"), ("events", "u32"),
                                    ("data", "u64")],
                 scope="tree", many=True,
                 doc="a registration in an epoll instance (FILE records of kind epoll with file_id epoll_id): the "
                     "open file description target_id, registered under fd number tfd (maybe closed or reused "
                     "since), its events as fdinfo shows them (EPOLLERR/EPOLLHUP included; a fired one-shot "
                     "keeps only its flag bits) and its data; in the kernel's order")

# 316-317: inotify (usercr/inotify.py)
INOTIFY = _rec(316, "INOTIFY", [("file_id", "u32"), ("nr_watches", "u32"), ("queued", "u32"), ("pad", "u32")],
               scope="tree", many=True,
               doc="an inotify instance the tree uses (FILE records of kind inotify name it by file_id): its number "
                   "of watches, whose INOTIFY_WATCH records follow, and the bytes of events queued unread at the "
                   "checkpoint (lost)")
INOTIFY_WATCH = _rec(317, "INOTIFY_WATCH", [("file_id", "u32"), ("wd", "s32"), ("mask", "u32"), ("pad", "u32"),
                                            ("dev", "u64"), ("ino", "u64")], tail="str",
                     scope="tree", many=True,
                     doc="a watch of the INOTIFY instance file_id: watch descriptor, mask as fdinfo shows it "
                         "(IN_* events, IN_ONESHOT, IN_EXCL_UNLINK), the watched object's st_dev and inode; tail "
                         "is its path, found from its file handle")

# 401-405: memory
MM = _rec(401, "MM", [
    ("start_code", "u64"), ("end_code", "u64"), ("start_data", "u64"), ("end_data", "u64"),
    ("start_brk", "u64"), ("brk", "u64"), ("start_stack", "u64"), ("arg_start", "u64"),
    ("arg_end", "u64"), ("env_start", "u64"), ("env_end", "u64"), ("nr_vmas", "u64"),
], tail="bytes", doc="mm fields; tail is the saved auxv")
VMA = _rec(402, "VMA", [
    ("start", "u64"), ("end", "u64"), ("offset", "u64"), ("prot", "u32"), ("flags", "u32"),
    ("kind", "u32"), ("pad", "u32"), ("dev", "u64"), ("ino", "u64"), ("size", "s64"),
], tail="str", many=True, doc="one mapping; tail is the backing path or special name")
VMA_KINDS = Kinds("VMA", ["anon", "file", "special", "shared-anon", "sysv"])
PAGES_BEGIN = _rec(404, "PAGES_BEGIN", [("nr_sections", "u64"), ("csum_a", "u64"), ("csum_b", "u64")],
                   doc="ends the metadata; carries the checksum of everything before it, so metadata is "
                       "verified before it is used. Then one section of PAGES per live process, in PIDS "
                       "order, each ended by PAGES_END, then the TAIL")
PAGES = _rec(403, "PAGES", [("vaddr", "u64"), ("nr_pages", "u64")], tail="bytes",
             doc="a run of page contents at vaddr; the restorer reads the data in place", c=True)
PAGES_END = _rec(406, "PAGES_END", [("pid", "s32"), ("pad", "u32")],
                 doc="ends one process's page data; the next process's (or the TAIL) follows", c=True)
# 407-409: incremental images (usercr/incremental.py)
PARENT = _rec(407, "PARENT", [("size", "u64"), ("csum_a", "u64"), ("csum_b", "u64"), ("depth", "u32"),
                              ("pad", "u32")], tail="str", scope="tree",
              doc="the image this one is incremental to: its size and TAIL checksum (its identity) and the "
                  "number of images in the chain above this one; tail is its absolute path")
PAGES_PARENT = _rec(408, "PAGES_PARENT", [("vaddr", "u64"), ("nr_pages", "u64"), ("offset", "u64"),
                                          ("depth", "u32"), ("pad", "u32"), ("csum_a", "u64"), ("csum_b", "u64")],
                    doc="in a PAGES section: a run of pages unchanged since an ancestor image, which holds them "
                        "at offset (depth 1: the parent, 2: its parent...); csum is their checksum alone",
                    c=True)
SPECIAL_DATA = _rec(405, "SPECIAL_DATA", [("vaddr", "u64")], tail="bytes",
                    many=True, doc="contents of a kernel special mapping ([vdso]), for comparison at restart")

# 501-507: SysV IPC, saved when the tree has an IPC namespace of its own
_IPC_FIELDS = [("id", "s32"), ("key", "s32"), ("mode", "u32"), ("uid", "u32"), ("gid", "u32")]
IPC_SHM = _rec(501, "IPC_SHM", _IPC_FIELDS + [("pad", "u32"), ("size", "u64")], tail="bytes",
               scope="tree", doc="a SysV shared memory segment: id, key, permissions, owner, size; tail is its contents")
IPC_MSG = _rec(502, "IPC_MSG", _IPC_FIELDS + [("pad", "u32"), ("qbytes", "u64")], tail="bytes",
               scope="tree", doc="a SysV message queue; tail is its messages in order, each {u64 mtype; u64 len; "
                   "text padded to 8 bytes}")
IPC_SEM = _rec(503, "IPC_SEM", _IPC_FIELDS + [("nsems", "u32")], tail="u32s",
               scope="tree", doc="a SysV semaphore set; tail is the semaphore values")

# 601-604: signals
SIGHAND = _rec(601, "SIGHAND", [("actions", "u64[256]")],
               doc="64 signal actions as (handler, flags, restorer, mask)")
SIGNAL = _rec(602, "SIGNAL", [("itimers", "u64[12]")],
              doc="process-wide signal state: ITIMER_REAL, _VIRTUAL, _PROF as (interval s, us, value s, us)")
POSIX_TIMER = _rec(604, "POSIX_TIMER", [
    ("id", "s32"), ("clockid", "s32"), ("signo", "s32"), ("notify", "s32"), ("value", "u64"),
    ("notify_tid", "s32"), ("pad", "u32"), ("interval_ns", "u64"), ("value_ns", "u64"),
], many=True, doc="a POSIX timer: id, clock, sigevent (signo, SIGEV_* notify, sigev_value, target thread), "
       "interval and time left")
SIGPENDING = _rec(603, "SIGPENDING", [("shared", "u32"), ("signo", "u32")], tail="bytes",
                  many=True, doc="one queued signal; tail is its 128-byte siginfo")

# 701-709: sockets (unix.py)
UNIX_SOCK = _rec(701, "UNIX_SOCK", [
    ("ino", "u64"), ("peer", "u64"), ("type", "u32"), ("state", "u32"), ("backlog", "u32"), ("shutdown", "u32"),
    ("flags", "u32"), ("name_len", "u32"), ("sndbuf", "u32"), ("rcvbuf", "u32"), ("peek_off", "s32"),
    ("passcred", "u32"), ("peer_pid", "s32"), ("peer_uid", "u32"), ("peer_gid", "u32"), ("file_mode", "u32"),
    ("file_uid", "u32"), ("file_gid", "u32"),
], tail="bytes", scope="tree", many=True,
    doc="a Unix socket the tree holds (FILE records of kind unix name it by ino): SOCK_* type, TCP_* state "
        "(listen, established, close), the socket it is connected to (peer ino, 0: none), listen backlog, "
        "sk_shutdown bits, flags (1: its socket file was removed, 2: its peer was closed, 4: its peer is "
        "outside the tree, see UNIX_EXTERNAL), SO_SNDBUF, "
        "SO_RCVBUF, SO_PEEK_OFF, SO_PASSCRED, SO_PEERCRED as the program saw it (PID in the tree's "
        "namespace), its socket file's mode and owner; tail is its address (name_len bytes: a path, or "
        "abstract with a leading NUL) then, for a relative path, the directory it was bound in")
UNIX_MSG = _rec(702, "UNIX_MSG", [("ino", "u64"), ("name_len", "u32"), ("pad", "u32")], tail="bytes",
                scope="tree", many=True,
                doc="data queued for a UNIX_SOCK (ino), in order: one record per datagram or seqpacket "
                    "message, one for a stream's bytes; tail is the sender's address (name_len bytes) "
                    "then the data")
UNIX_WAITING = _rec(703, "UNIX_WAITING", [
    ("listener", "u64"), ("client", "u64"), ("pid", "s32"), ("uid", "u32"), ("gid", "u32"), ("pad", "u32")],
    scope="tree", many=True,
    doc="a connection waiting in the backlog of a listening UNIX_SOCK (listener ino), in backlog order: its "
        "client end (a UNIX_SOCK ino; 0: outside the tree) and the credentials accept() will show (PID in "
        "the tree's namespace, euid, egid)")
UNIX_EXTERNAL = _rec(704, "UNIX_EXTERNAL", [
    ("ino", "u64"), ("pid", "s32"), ("uid", "u32"), ("gid", "u32"), ("pad", "u32")], tail="bytes",
    scope="tree", many=True,
    doc="a UNIX_SOCK (ino) connected to a peer outside the tree, saved with ckpt --ext-unix-sk: restart "
        "connects it again to the peer's address (tail: a path or abstract with a leading NUL) as the "
        "process holding it (PID in the tree's namespace, euid, egid)")

# 711-719: TCP and UDP sockets (inet.py)
INET_SOCK = _rec(711, "INET_SOCK", [
    ("ino", "u64"), ("peer", "u64"), ("family", "u32"), ("type", "u32"), ("state", "u32"), ("flags", "u32"),
    ("src_port", "u32"), ("dst_port", "u32"), ("backlog", "u32"), ("reuseaddr", "u32"), ("reuseport", "u32"),
    ("keepalive", "u32"), ("keepidle", "u32"), ("keepintvl", "u32"), ("keepcnt", "u32"), ("nodelay", "u32"),
    ("v6only", "u32"), ("sndbuf", "u32"), ("rcvbuf", "u32"), ("snd_seq", "u32"), ("rcv_seq", "u32"),
    ("mss", "u32"), ("timestamp", "u32"), ("tcp_options", "u32"), ("snd_wscale", "u32"), ("rcv_wscale", "u32"),
    ("unsent", "u32"), ("snd_wl1", "u32"), ("snd_wnd", "u32"), ("max_window", "u32"), ("rcv_wnd", "u32"),
    ("rcv_wup", "u32"), ("cur_sndbuf", "u32"), ("cur_rcvbuf", "u32"),
], tail="bytes", scope="tree", many=True,
    doc="a TCP or UDP socket the tree holds (FILE records of kind tcp or udp name it by ino): AF_INET or "
        "AF_INET6, SOCK_STREAM or SOCK_DGRAM, TCP_* state (close: bound or not, listen, established; a UDP "
        "socket: established when connected), flags (1: its peer is outside the tree, saved with "
        "--tcp-established; 2: it had sent its FIN), the socket of the tree at the "
        "other end (peer ino, 0: none), local and remote port, listen backlog, SO_REUSEADDR, SO_REUSEPORT, "
        "SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT, TCP_NODELAY, IPV6_V6ONLY, SO_SNDBUF/SO_RCVBUF (0: the "
        "kernel's), and for a connection its TCP repair state: the next sequence numbers to send (write_seq) "
        "and to receive (rcv_nxt), MSS clamp, TCP timestamp, TCPI_OPT_* options and window scales, bytes of "
        "the send queue never sent, the window (struct tcp_repair_window), and the buffer sizes it had (given to a "
        "connection whose queues would not fit the default ones); tail is the local then the "
        "remote address, 16 bytes each (IPv4 as IPv4-mapped IPv6)")
INET_QUEUE = _rec(712, "INET_QUEUE", [("ino", "u64"), ("queue", "u32"), ("pad", "u32")], tail="bytes",
                  scope="tree", many=True,
                  doc="the data of an INET_SOCK's queue (ino; queue 1: received and not read, 2: sent and not "
                      "acknowledged, then never sent); tail is the bytes")
INET_OPT = _rec(713, "INET_OPT", [("ino", "u64"), ("level", "u32"), ("name", "u32")], tail="bytes",
                scope="tree", many=True,
                doc="a socket option of an INET_SOCK (ino) that differs from a fresh socket's: level and "
                    "name as setsockopt takes them (SO_LINGER, SO_PRIORITY, SO_MARK, SO_RCVLOWAT, SO_OOBINLINE, "
                    "SO_BINDTODEVICE, SO_RCVTIMEO/SNDTIMEO, IP_TOS, IP_TTL, IP_FREEBIND, IP_TRANSPARENT, "
                    "IP_MULTICAST_*, IP_RECV*, IPV6_TCLASS, IPV6_UNICAST_HOPS, IPV6_MULTICAST_*, IPV6_RECV*, "
                    "TCP_CORK, TCP_CONGESTION, TCP_USER_TIMEOUT, TCP_NOTSENT_LOWAT, TCP_DEFER_ACCEPT, "
                    "TCP_FASTOPEN, TCP_FASTOPEN_CONNECT, TCP_LINGER2, TCP_SYNCNT...), in the order rstr sets "
                    "them; tail is the value as getsockopt gave it")

FS = _rec(451, "FS", [("umask", "u32"), ("pad", "u32")], tail="strs",
          doc="fs state; tail is [cwd, root]")

TAIL = _rec(9001, "TAIL", [("magic", "u64"), ("csum_a", "u64"), ("csum_b", "u64")],
            doc="tail: magic and checksum of every byte before this record", c=True)
ERROR = _rec(9999, "ERROR", [("errno", "s32"), ("pad", "u32")], tail="str",
             doc="an error the checkpointer met; tail is the message")

BY_NAME = {r.name: r for r in REGISTRY.values()}


def c_header():
    """C declarations of record numbers and of the records the C core parses."""
    out = ["/* Generated from usercr/records.py by the native build; do not edit. */",
           "#ifndef UCR_RECORDS_H", "#define UCR_RECORDS_H", "#include <stdint.h>",
           f"#define UCR_HEADER_MAGIC 0x{HEADER_MAGIC:016x}ULL",
           f"#define UCR_TAIL_MAGIC 0x{TAIL_MAGIC:016x}ULL"]
    for r in sorted(REGISTRY.values(), key=lambda r: r.type):
        out.append(f"#define UCR_REC_{r.name} {r.type}")
    for kinds in (FD_KINDS, VMA_KINDS, LOCK_KINDS):
        out += kinds.c_defines()
    out.append("struct ucr_rec_hdr { uint32_t type; uint32_t len; };")
    for r in REGISTRY.values():
        if not r.c:
            continue
        members = []
        for fname, ftype, count in r.fields:
            ctype = "char" if ftype == "char" else _TYPES[ftype][1]
            members.append(f"{ctype} {fname}" + (f"[{count}]" if count > 1 or ftype == "char" else "") + ";")
        out.append(f"struct ucr_rec_{r.name.lower()} {{ struct ucr_rec_hdr h; " + " ".join(members) + " };")
    out.append("#endif")
    return "\n".join(out) + "\n"
