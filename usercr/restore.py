"""The user engine's restart: read the image's metadata, prepare one restore
plan per process in a region free in every layout, create the root with
clone3, and let the restorer blob rebuild the tree from there."""
import fcntl
import os
import select
import signal
import struct

from . import cleanup
from . import ipc
from . import proc
from . import records as R
from .arch import current as current_arch
from .dump import PAGE_SIZE, PTS_MAJORS, log_nothing, pts_index, quiet_termios
from .errors import UcrError
from .image import ImageReader
from .native import ffi, lib

SIGCHLD = 17
STACK_SIZE = 64 * 1024
THREAD_STACK = 16 * 1024
MIN_REGION_ADDR = 1 << 30
RLIM_INFINITY = 2**64 - 1
STATUS = struct.Struct("<iiQii")
POLL_INTERVAL = 0.5
MAP_SHARED, MAP_ANONYMOUS = 0x01, 0x20
TIOCSPTLCK, TIOCGPTPEER = 0x40045431, 0x5441

STEP_TEXT = {
    lib.UCR_STEP_RSEQ_DROP: "dropping the restorer's own rseq registration",
    lib.UCR_STEP_PARK: "moving the vDSO aside",
    lib.UCR_STEP_UNMAP: "unmapping the old address space",
    lib.UCR_STEP_MAP: "mapping memory at 0x{detail:x}",
    lib.UCR_STEP_READ: "reading page data at image offset {detail}",
    lib.UCR_STEP_RECORD: "page data at image offset {detail}: image corrupt",
    lib.UCR_STEP_CHECKSUM: "image corrupt: checksum mismatch (a byte of the image changed)",
    lib.UCR_STEP_PROTECT: "setting protection of memory at 0x{detail:x}",
    lib.UCR_STEP_SPECIAL: "moving the vDSO to 0x{detail:x}",
    lib.UCR_STEP_MM: "setting the memory map fields (prctl PR_SET_MM_MAP)",
    lib.UCR_STEP_FDS: "installing fd {detail}",
    lib.UCR_STEP_FS: "restoring the working directory",
    lib.UCR_STEP_RLIMIT: "restoring resource limit {detail}",
    lib.UCR_STEP_SIGACTION: "restoring the action of signal {detail}",
    lib.UCR_STEP_SIGQUEUE: "queueing pending signal {detail}",
    lib.UCR_STEP_CREDS: "restoring credentials",
    lib.UCR_STEP_RSEQ: "registering rseq at 0x{detail:x}",
    lib.UCR_STEP_TLS: "restoring TLS",
    lib.UCR_STEP_CLONE: "creating process {detail}",
    lib.UCR_STEP_IDS: "restoring the session and process group of process {detail}",
    lib.UCR_STEP_THREAD: "creating thread {detail}",
    lib.UCR_STEP_TIMER: "restoring timer {detail}",
    lib.UCR_STEP_ZOMBIE: "waiting for zombie {detail} to exit",
}
ERRNO_TEXT = {61: "image truncated"}  # ENODATA from the restorer's reader


def page_up(n):
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class Process:
    """One process's records: `one` by name, `many` lists, and its threads,
    each a dict of the THREAD record, its CPU records and its SIGPENDING list."""

    def __init__(self, task):
        self.one = {"TASK": task}
        self.many = {"FILE": [], "VMA": [], "SPECIAL_DATA": [], "SIGPENDING": [], "POSIX_TIMER": []}
        self.threads = []

    @property
    def pid(self):
        return self.one["TASK"]["pid"]

    @property
    def zombie(self):
        return bool(self.one["TASK"]["zombie"])

    def add(self, rec):
        if rec.name == "THREAD":
            self.threads.append({"THREAD": rec, "SIGPENDING": []})
        elif rec.name == "SIGPENDING" and not rec["shared"] and self.threads:
            self.threads[-1]["SIGPENDING"].append(rec)
        elif rec.name in self.many:
            self.many[rec.name].append(rec)
        elif self.threads and 200 < rec.type < 300:
            self.threads[-1][rec.name] = rec
        else:
            self.one[rec.name] = rec

    def __getitem__(self, name):
        return self.one[name]

    def check(self):
        if self.zombie:
            return
        for name in ("CREDS", "RLIMITS", "FS", "SIGHAND", "SIGNAL", "MM"):
            if name not in self.one:
                raise UcrError(f"image corrupt: no {name} record for process {self.pid}")
        if not self.threads or len(self.threads) != self.one["TASK"]["nr_threads"]:
            raise UcrError(f"image corrupt: thread records of process {self.pid} do not match its TASK record")
        if len(self.many["VMA"]) != self.one["MM"]["nr_vmas"]:
            raise UcrError(f"image corrupt: VMA count of process {self.pid} does not match its MM record")


class Image:
    """The metadata of an image, up to PAGES_BEGIN, checked."""

    def __init__(self, reader, arch):
        self.header = reader.header()
        if self.header["arch_id"] != arch.ARCH_ID:
            name = R.ARCH_NAMES.get(self.header["arch_id"], f"id {self.header['arch_id']}")
            raise UcrError(f"image is for {name}; this machine runs {arch.NAME}")
        if self.header["page_size"] != PAGE_SIZE:
            raise UcrError(f"image page size {self.header['page_size']} differs from this system's {PAGE_SIZE}")
        self.one, self.pids, self.procs, self.pipes, self.ipc, self.ttys = {}, [], [], {}, [], {}
        while True:
            rec = reader.next()
            if rec.type == R.PAGES_BEGIN.type:
                if (rec["csum_a"], rec["csum_b"]) != reader.csum_before:
                    raise UcrError("image corrupt: checksum mismatch in the metadata (a byte of the image changed)")
                self.nr_sections = rec["nr_sections"]
                break
            if rec.type in (R.TAIL.type, R.PAGES.type, R.PAGES_END.type):
                raise UcrError(f"image corrupt at offset {rec.offset}: {rec.name} before the page data marker")
            if rec.name == "PIDS":
                self.pids.append(rec)
            elif rec.name == "TASK":
                self.procs.append(Process(rec))
            elif rec.name == "PIPE":
                self.pipes[rec["ino"]] = rec
            elif rec.name == "TTY":
                self.ttys[rec["index"]] = rec
            elif rec.name.startswith("IPC_"):
                self.ipc.append(rec)
            elif self.procs:
                self.procs[-1].add(rec)
            else:
                self.one[rec.name] = rec
        self._check_tree()

    def _check_tree(self):
        if "TREE" not in self.one or not self.procs:
            raise UcrError("image corrupt: no task tree")
        tree = self.one["TREE"]
        if not tree["nr_tasks"] == len(self.pids) == len(self.procs):
            raise UcrError("image corrupt: the task tree does not match the tasks it holds "
                           f"({tree['nr_tasks']} in TREE, {len(self.pids)} PIDS, {len(self.procs)} TASK records)")
        self.index = {}
        for i, (ids, p) in enumerate(zip(self.pids, self.procs)):
            if ids["pid"] in self.index:
                raise UcrError(f"image corrupt: PID {ids['pid']} appears twice in the task tree")
            if ids["pid"] != p.pid or ids["pid"] <= 0:
                raise UcrError(f"image corrupt: task tree entry {i} (PID {ids['pid']}) does not match "
                               f"its TASK record (PID {p.pid})")
            self.index[ids["pid"]] = i
            p.check()
        if self.pids[0]["pid"] != tree["root_pid"] or self.procs[0].zombie:
            raise UcrError("image corrupt: the task tree's root is not its first task")
        self.parent = [None]
        for ids in self.pids[1:]:
            ppid = self.index.get(ids["ppid"])
            if ppid is None or ppid >= self.index[ids["pid"]]:
                raise UcrError(f"image corrupt: the parent {ids['ppid']} of PID {ids['pid']} is not "
                               "before it in the task tree")
            self.parent.append(ppid)
        if self.nr_sections != sum(not p.zombie for p in self.procs):
            raise UcrError("image corrupt: the number of page sections does not match the live tasks")

    def descends(self, i, ancestor):
        while i is not None:
            if i == ancestor:
                return True
            i = self.parent[i]
        return False


class Creation:
    """Who creates whom, and how each process gets its session and process
    group, as the restorer does it (user-cr's creator forest, in small).
    Nodes are the image's processes, then one placeholder per session or
    group leader that is gone: created with the leader's PID, it takes the
    session (or group) and creates the members at the top of it with
    CLONE_PARENT, so that they are its parent's children as they were, then
    exits and is reaped. ids of processes outside the tree stand for rstr's
    own session and group, and so does the group the root leads when its
    session is outside. Raises UcrError where the image's sessions and groups
    cannot be rebuilt that way."""

    def __init__(self, img):
        ids, index = img.pids, img.index
        n = len(ids)
        root = ids[0]
        self.outside = lambda v: v == 0 or (v == root["pid"] and root["sid"] == 0)  # noqa: E731
        gone = sorted({v for t in ids for v in (t["sid"], t["pgid"]) if not self.outside(v) and v not in index})
        self.placeholders = gone
        self.creator = list(img.parent)
        self.clone_parent = [False] * n
        sessions = {t["sid"] for t in ids}
        for k, lead in enumerate(gone):
            members = {i for i, t in enumerate(ids) if lead in (t["sid"], t["pgid"])}
            tops = [i for i in members if img.parent[i] not in members]
            parents = {img.parent[i] for i in tops}
            if len(parents) != 1 or None in parents:
                raise UcrError(f"the members of session or group {lead}, whose leader is gone, have different "
                               "parents; that cannot be recreated")
            self.creator.append(parents.pop())
            self.clone_parent.append(False)
            for i in tops:
                self.creator[i], self.clone_parent[i] = n + k, True
        self.setsid = [t["sid"] == t["pid"] for t in ids] + [lead in sessions for lead in gone]
        self.action, self.leader = [], []
        for i, t in enumerate(ids):
            if self.setsid[i] or self.outside(t["pgid"]) or t["pgid"] not in index:
                action, leader = 0, -1   # kept from its creator (a placeholder leads a gone group)
            elif t["pgid"] == t["pid"]:
                action, leader = 1, -1
            else:
                action, leader = 2, index[t["pgid"]]
                if ids[leader]["pgid"] != ids[leader]["pid"]:
                    raise UcrError(f"process {t['pid']} is in process group {t['pgid']}, which process "
                                   f"{t['pgid']} does not lead; that cannot be recreated")
                if img.descends(leader, i):
                    raise UcrError(f"process {t['pid']} is in the process group of its descendant {t['pgid']}; "
                                   "that cannot be recreated")
            self.action.append(action)
            self.leader.append(leader)
        self.action += [0 if self.setsid[n + k] else 1 for k in range(len(gone))]
        self.leader += [-1] * len(gone)
        self._check(img)

    def key(self, v, index):
        if self.outside(v):
            return "out"
        return index[v] if v in index else len(index) + self.placeholders.index(v)

    def _check(self, img):
        """Plays the creation through and compares with the image."""
        sid, pgid = {}, {}

        def sim(node):
            if node not in sid:
                up = self.creator[node]
                up_sid, up_pgid = sim(up) if up is not None else ("out", "out")
                sid[node] = node if self.setsid[node] else up_sid
                pgid[node] = node if self.setsid[node] or self.action[node] == 1 else \
                    self.leader[node] if self.action[node] == 2 else up_pgid
            return sid[node], pgid[node]
        for i, t in enumerate(img.pids):
            want = (self.key(t["sid"], img.index), self.key(t["pgid"], img.index))
            joins_elsewhere = self.action[i] == 2 and sim(self.leader[i])[0] != sim(i)[0]
            if sim(i) != want or joins_elsewhere:
                raise UcrError(f"the session {t['sid']} and process group {t['pgid']} of process {t['pid']} "
                               "cannot be recreated")

    def children(self, node):
        """The nodes node creates, group leaders first so that members rarely wait."""
        kids = [j for j, c in enumerate(self.creator) if c == node]
        return sorted(kids, key=lambda j: (self.action[j] == 2, j))


class Region:
    """The restorer's address range: code, plans and arrays, parking, thread
    stacks and stack (private to each process), then the shared table."""

    def __init__(self, private_size, shared_size):
        self.private_size = private_size
        self.size = private_size + shared_size
        self.start = None
        self.used = 0

    def place(self, busy):
        """Lowest free gap above MIN_REGION_ADDR among the busy ranges."""
        cand = MIN_REGION_ADDR
        for lo, hi in sorted(busy):
            if hi <= cand:
                continue
            if lo >= cand + self.size:
                break
            cand = page_up(hi)
        r = lib.ucr_map_region(cand, self.private_size, 0)
        if r == 0:
            self.start = cand
            r = lib.ucr_map_region(self.shared_start, self.size - self.private_size, 1)
        if r < 0:
            raise UcrError(f"cannot map the restorer region at 0x{cand:x}: {os.strerror(-r)}")

    @property
    def end(self):
        return self.start + self.size

    @property
    def shared_start(self):
        return self.start + self.private_size

    def put(self, data, align=16):
        """Copies bytes into the data part; returns their address."""
        self.used = (self.used + align - 1) & ~(align - 1)
        addr = self.data_start + self.used
        ffi.memmove(ffi.cast("void *", addr), data, len(data))
        self.used += len(data)
        return addr

    def array(self, ctype, items, fill):
        """An array of struct ctype in the region, each element set by fill(elem, item)."""
        arr = ffi.new(f"struct {ctype}[]", max(1, len(items)))
        for i, item in enumerate(items):
            fill(arr[i], item)
        return self.put(ffi.buffer(arr), 64), len(items)


class Restorer:
    def __init__(self, image, arch, in_fd, pids, log):
        self.img = image
        self.arch = arch
        self.in_fd = in_fd
        self.pids = pids
        self.log = log
        self.opened = []      # fds rstr opened for the tasks, at fd_base or above
        self.region = None
        self.files = {}       # file_id -> fd
        self.pipe_ends = {}   # ino -> {access mode: fd}
        self.shm = {}         # (dev, ino) -> memfd
        self.cwd = {}         # path -> fd
        self.ptys = {}        # image pty index -> (master fd, slave fd)
        self.status_r = self.go_w = None

    def _keep(self, fd):
        """Moves an fd rstr opened to fd_base or above, out of the tasks' way."""
        new = fcntl.fcntl(fd, fcntl.F_DUPFD, self.fd_base)
        os.close(fd)
        self.opened.append(new)
        return new

    # Files
    def _external(self, rec):
        """Standard streams that are a terminal (other than a pseudo-terminal
        whose master the tree holds), a socket, or a pipe the tree holds only
        one end of follow rstr's own (unless that is the image)."""
        kind = R.FILE_KINDS[rec["kind"]]
        if kind == "pty-slave" and rec["size"] not in self.img.ttys:
            kind = "tty"
        if rec["fd"] > 2 or kind not in ("tty", "socket", "pipe"):
            return False
        if kind == "pipe":
            modes = {f["flags"] & os.O_ACCMODE for p in self.img.procs for f in p.many["FILE"]
                     if f["kind"] == rec["kind"] and f["ino"] == rec["ino"]}
            return len(modes) == 1
        return True

    def _open_file(self, rec):
        path, fd = rec["tail"], rec["fd"]
        kind = R.FILE_KINDS[rec["kind"]]
        if self._external(rec):
            if fd != self.in_fd and _fd_open(fd):
                return os.dup(fd)
            return os.open("/dev/null", rec["flags"] & os.O_ACCMODE)
        if kind in ("pipe", "fifo"):
            return self._open_pipe(rec)
        if kind in ("pty-master", "pty-slave") and rec["size"] in self.img.ttys:
            master, slave = self._pty(rec["size"])
            if kind == "pty-master":  # reopening the master would make a new terminal
                return os.dup(master)
            return os.open(f"/proc/self/fd/{slave}", rec["flags"] | os.O_NOCTTY)
        if kind in ("tty", "socket", "pty-slave"):
            raise UcrError(f"fd {fd} is a {kind} ({path}); restoring that is not supported yet")
        try:
            st = os.stat(path)
        except OSError as e:
            raise UcrError(f"file {path} (fd {fd}) is gone since the checkpoint: {e.strerror}") from None
        if kind == "reg" and not rec["flags"] & os.O_APPEND and st.st_size != rec["size"]:
            raise UcrError(f"file {path} (fd {fd}) changed size since the checkpoint "
                           f"({rec['size']} -> {st.st_size} bytes)")
        flags = rec["flags"] & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL)
        try:
            new = os.open(path, flags)
        except OSError as e:
            raise UcrError(f"cannot reopen {path} (fd {fd}): {e.strerror}") from None
        if kind == "reg":
            os.lseek(new, rec["pos"], os.SEEK_SET)
        return new

    def _pipe(self, rec):
        """Both ends of the pipe or FIFO rec names, filled with its buffered data."""
        ino = rec["ino"]
        if ino in self.pipe_ends:
            return self.pipe_ends[ino]
        saved = self.img.pipes.get(ino)
        if saved is None:
            raise UcrError(f"image corrupt: no PIPE record for the pipe at fd {rec['fd']}")
        if R.FILE_KINDS[rec["kind"]] == "fifo":
            try:
                both = os.open(rec["tail"], os.O_RDWR | os.O_NONBLOCK)
            except OSError as e:
                raise UcrError(f"FIFO {rec['tail']} (fd {rec['fd']}): {e.strerror}") from None
            r = w = self._keep(both)
        else:
            r, w = (self._keep(e) for e in os.pipe())
        if saved["capacity"] > 65536:
            fcntl.fcntl(w, 1031, saved["capacity"])  # F_SETPIPE_SZ
        data = saved["tail"]
        while data:
            data = data[os.write(w, data):]
        self.pipe_ends[ino] = {os.O_RDONLY: r, os.O_WRONLY: w}
        return self.pipe_ends[ino]

    def _open_pipe(self, rec):
        ends = self._pipe(rec)
        mode = rec["flags"] & os.O_ACCMODE
        end = ends.get(mode, ends[os.O_RDONLY])
        # A new open file description on the same pipe, with the saved flags.
        new = os.open(f"/proc/self/fd/{end}", mode | os.O_NONBLOCK)
        fcntl.fcntl(new, fcntl.F_SETFL, rec["flags"])
        return new

    def _pty(self, index):
        """A new pseudo-terminal for the image's pty index: modes, window
        size, and the data that was queued in it (written with echo and
        output processing off, as it was processed already)."""
        if index in self.ptys:
            return self.ptys[index]
        import termios
        saved = self.img.ttys[index]
        try:
            master = self._keep(os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY))
            fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
            slave = self._keep(fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY))
        except OSError as e:
            raise UcrError(f"cannot create a pseudo-terminal: {e.strerror}") from None
        modes = struct.pack("<8Q", *saved["termios"])
        fcntl.ioctl(slave, termios.TCSETS, quiet_termios(modes))
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("<Q", saved["winsize"]))
        data = saved["tail"]
        os.write(master, data[:saved["input_len"]])
        os.write(slave, data[saved["input_len"]:saved["input_len"] + saved["output_len"]])
        fcntl.ioctl(slave, termios.TCSETS, modes)
        self.ptys[index] = master, slave
        return master, slave

    def _file(self, rec):
        """The kept fd for rec's open file description, opened once per file_id."""
        fid = rec["file_id"]
        if fid not in self.files:
            self.files[fid] = self._keep(self._open_file(rec))
        return self.files[fid]

    def _open_vma_file(self, rec):
        path = rec["tail"]
        try:
            st = os.stat(path)
        except OSError as e:
            raise UcrError(f"mapped file {path} is gone since the checkpoint: {e.strerror}") from None
        if st.st_size != rec["size"]:
            raise UcrError(f"mapped file {path} changed size since the checkpoint ({rec['size']} -> {st.st_size} bytes)")
        writable = rec["flags"] & 0x01 and rec["prot"] & 2  # shared and writable
        try:
            return self._keep(os.open(path, os.O_RDWR if writable else os.O_RDONLY))
        except OSError as e:
            raise UcrError(f"cannot open mapped file {path}: {e.strerror}") from None

    def _shared_memory(self):
        """One memfd per shared anonymous object, as large as its largest use."""
        sizes = {}
        for p in self.img.procs:
            for v in p.many["VMA"]:
                if v["kind"] == 3:
                    key = (v["dev"], v["ino"])
                    sizes[key] = max(sizes.get(key, 0), v["offset"] + v["end"] - v["start"])
        for key, size in sizes.items():
            fd = os.memfd_create("usercr-shared", 0)
            os.ftruncate(fd, size)
            self.shm[key] = self._keep(fd)

    def _open_exe(self, path):
        """The executable for /proc/PID/exe, or -1 to keep rstr's. The kernel
        refuses a new one while the old is still mapped, which it is when both
        are the same file (a Python restoring a Python), and then keeping it is right."""
        try:
            st, mine = os.stat(path), os.stat("/proc/self/exe")
        except OSError:
            return -1
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return -1
        return self._keep(os.open(path, os.O_RDONLY))

    def _dir(self, path):
        if path not in self.cwd:
            try:
                self.cwd[path] = self._keep(os.open(path, os.O_PATH | os.O_DIRECTORY))
            except OSError as e:
                raise UcrError(f"working directory {e.filename} is gone: {e.strerror}") from None
        return self.cwd[path]

    # vDSO and friends
    def _specials(self, p, mine):
        """Pairs each special mapping of the image with this kernel's."""
        image_sp = {v["tail"]: v for v in p.many["VMA"] if v["kind"] == 2}
        here = {m.name: m for m in mine if m.special and m.name not in self.arch.GATE_MAPPINGS}
        if set(image_sp) != set(here):
            raise UcrError(f"kernel special mappings differ: image has {sorted(image_sp)}, "
                           f"this kernel {sorted(here)}; restart on a kernel with the same vDSO layout")
        base_img = min(v["start"] for v in image_sp.values()) if image_sp else 0
        base_here = min(m.start for m in here.values()) if here else 0
        for name, v in image_sp.items():
            m = here[name]
            if m.end - m.start != v["end"] - v["start"] or m.start - base_here != v["start"] - base_img:
                raise UcrError(f"{name} of this kernel ({m.end - m.start} bytes) does not match the image's "
                               f"({v['end'] - v['start']} bytes); restart on a kernel with the same vDSO layout")
        for data in p.many["SPECIAL_DATA"]:
            vdso = here.get("[vdso]")
            if vdso and bytes(ffi.buffer(ffi.cast("char *", vdso.start), vdso.end - vdso.start)) != data["tail"]:
                raise UcrError("the vDSO of this kernel differs from the image's; restart on the kernel "
                               "that made the checkpoint")
        return {name: m.start for name, m in here.items()}

    def _data_size(self):
        size = ffi.sizeof("struct ucr_plan") + 64 * 1024
        for p in self.img.procs:
            size += ffi.sizeof("struct ucr_plan") + 8 * 64
            size += len(p.many["VMA"]) * ffi.sizeof("struct ucr_vma")
            size += len(p.many["FILE"]) * ffi.sizeof("struct ucr_fd")
            size += (len(p.many["SIGPENDING"]) + sum(len(t["SIGPENDING"]) for t in p.threads)) \
                * ffi.sizeof("struct ucr_siginfo")
            size += len(p.many["POSIX_TIMER"]) * ffi.sizeof("struct ucr_timer")
            size += len(p.threads) * (ffi.sizeof("struct ucr_thread") + 32 * 1024)  # with its signal frame
            size += 2 * (ffi.sizeof("struct ucr_child") + 64)
            if "MM" in p.one:
                size += len(p["MM"]["tail"]) + 4 * len(p["CREDS"]["tail"])
        return page_up(size)

    def prepare(self):
        img, arch = self.img, self.arch
        arch.check_header(img.one[arch.HEADER_RECORD.name], self.log)
        mine = self.mine = proc.maps("self")
        live = [p for p in img.procs if not p.zombie]
        self.special_cur = {}
        for p in live:
            if hasattr(arch, "check_task"):  # arm: per-task rules (ThumbEE, OABI/EABI)
                arch.check_task({**img.one, **p.one, **p.threads[0]}, _warn)
            self.special_cur = self._specials(p, mine)
        self.creation = Creation(img)
        nodes = len(img.procs) + len(self.creation.placeholders)
        self.status_r, status_w = os.pipe()
        go_r, self.go_w = os.pipe()

        # Everything the tasks keep or the restorer uses sits at fd_base or above.
        busy_fds = [int(f) for f in os.listdir("/proc/self/fd")]
        self.fd_base = max(busy_fds + [r["fd"] for p in img.procs for r in p.many["FILE"]] + [2]) + 1
        self._shared_memory()
        self.image_fd = self._keep(os.dup(self.in_fd))
        self.status_w = self._keep(status_w)
        self.go_r = self._keep(go_r)

        blob = bytes(ffi.buffer(lib.ucr_restorer_blob(), lib.ucr_restorer_size()))
        blob, syscall_at = cleanup.with_syscall_insn(blob, arch)
        park = max(sum(v["end"] - v["start"] for v in p.many["VMA"] if v["kind"] == 2) for p in live)
        max_threads = max(len(p.threads) for p in live)
        data_size = self._data_size()
        shared_size = page_up(ffi.sizeof("struct ucr_shared") + 8 * nodes)
        region = Region(page_up(len(blob)) + data_size + park + max_threads * THREAD_STACK + STACK_SIZE,
                        shared_size)
        busy = [(m.start, m.end) for m in mine] + [(v["start"], v["end"]) for p in live for v in p.many["VMA"]]
        self.region = region
        region.place(busy)
        self.syscall_addr = region.start + syscall_at
        region.data_start = region.start + page_up(len(blob))
        region.park_start = region.data_start + data_size
        region.stacks_start = region.park_start + park
        ffi.memmove(ffi.cast("void *", region.start), blob, len(blob))

        self.shared = ffi.cast("struct ucr_shared *", region.shared_start)
        self.shared.csum[0], self.shared.csum[1] = self.reader_csum
        self.shared.image_offset = self.reader_offset
        self.plans = [ffi.cast("struct ucr_plan *", region.put(bytes(ffi.sizeof("struct ucr_plan")), 64))
                      for _ in range(nodes)]
        turn = 0
        for i, p in enumerate(img.procs):
            self._plan(i, p, turn, turn == len(live) - 1)
            turn += not p.zombie
        for k, lead in enumerate(self.creation.placeholders):
            self._common(len(img.procs) + k, lead)
            self.plans[len(img.procs) + k].placeholder = 1
        if region.used > data_size:
            raise UcrError("internal error: restore plan larger than its region")
        lib.ucr_protect(region.start, page_up(len(blob)), 5)  # PROT_READ | PROT_EXEC
        cur = ffi.new("uint64_t *"), ffi.new("uint32_t *"), ffi.new("uint32_t *")
        lib.ucr_rseq_self(*cur)
        root = self.plans[0]
        root.cur_rseq, root.cur_rseq_len, root.cur_rseq_sig = cur[0][0], cur[1][0], cur[2][0]
        self.child_fds = [self.status_w, self.go_r]

    def _common(self, node, pid):
        """What every plan has: the region, the fds, its ids and its children."""
        img, region, creation = self.img, self.region, self.creation
        plan = self.plans[node]
        plan.region_start, plan.region_end, plan.page_size = region.start, region.end, PAGE_SIZE
        plan.stack_top = region.shared_start
        plan.shared = region.shared_start
        plan.image_fd, plan.status_fd, plan.go_fd, plan.fd_base = \
            self.image_fd, self.status_w, self.go_r, self.fd_base
        plan.index, plan.image_pid = node, pid
        plan.setsid, plan.pgid_action, plan.pgid_leader = \
            creation.setsid[node], creation.action[node], creation.leader[node]
        plan.ctty_fd = -1
        n = len(img.procs)

        def child(c, j):
            c.plan, c.pid = int(ffi.cast("uintptr_t", self.plans[j])), \
                (img.procs[j].pid if j < n else creation.placeholders[j - n]) if self.pids else 0
            c.exit_signal = img.procs[j]["TASK"]["exit_signal"] if j < n else SIGCHLD
            c.zombie, c.placeholder = j < n and img.procs[j].zombie, j >= n
            c.clone_parent = creation.clone_parent[j]
        plan.children, plan.nr_children = region.array("ucr_child", creation.children(node), child)
        return plan

    def _plan(self, i, p, turn, last):
        plan = self._common(i, p.pid)
        plan.ctty_fd, plan.ctty_fg = self._ctty(p["TASK"]), p["TASK"]["ctty_fg"]
        task = p["TASK"]
        comm = task["comm"].encode()[:15]
        ffi.memmove(plan.comm, comm + b"\0", len(comm) + 1)
        if p.zombie:
            plan.zombie, plan.exit_status = 1, task["exit_status"]
            return
        plan.pages_turn, plan.last_pages = turn, last
        plan.pdeathsig = task["pdeathsig"]
        self._memory(plan, p)
        self._files(plan, p)
        self._threads(plan, p)
        acts = p["SIGHAND"]["actions"]
        for k in range(64):
            a = plan.sigactions[k]
            a.handler, a.flags, a.restorer, a.mask = acts[4 * k:4 * k + 4]
        for k, v in enumerate(p["SIGNAL"]["itimers"]):
            plan.itimers[k] = v
        tids = [t["THREAD"]["tid"] for t in p.threads]

        def timer(t, rec):
            t.id, t.clockid, t.signo, t.notify, t.value = rec["id"], rec["clockid"], rec["signo"], rec["notify"], \
                rec["value"]
            t.thread = tids.index(rec["notify_tid"]) if rec["notify_tid"] in tids else -1
            t.its = [*divmod(rec["interval_ns"], 10**9), *divmod(rec["value_ns"], 10**9)]
        plan.timers, plan.nr_timers = self.region.array("ucr_timer", p.many["POSIX_TIMER"], timer)
        plan.nr_rlimits = 16
        for k, v in enumerate(self._rlimits(p)):
            plan.rlimits[k] = v
        cwd, root = p["FS"]["tail"]
        plan.cwd_fd, plan.root_fd = self._dir(cwd), self._dir(root) if root != "/" else -1
        plan.umask = p["FS"]["umask"]
        self._creds(plan, p)

    def _ctty(self, task):
        """The kept slave fd of the controlling terminal, when it is a
        pseudo-terminal restored with the tree; -1 otherwise."""
        rdev = task["tty_nr"]
        if os.major(rdev) not in PTS_MAJORS:
            return -1
        index = pts_index(rdev)
        return self._pty(index)[1] if index in self.img.ttys else -1

    def _memory(self, plan, p):
        vmas, region = p.many["VMA"], self.region
        park_at = [region.park_start]

        def vma(a, v):
            a.start, a.end, a.offset, a.prot, a.mmap_flags = v["start"], v["end"], v["offset"], v["prot"], v["flags"]
            a.kind, a.fd = v["kind"], -1
            if v["kind"] == 1:
                a.fd = self._open_vma_file(v)
            elif v["kind"] == 3:
                a.fd, a.mmap_flags = self.shm[(v["dev"], v["ino"])], MAP_SHARED
            elif v["kind"] == 4:
                a.fd = v["ino"]
            elif v["kind"] == 2:
                a.cur, a.park = self.special_cur[v["tail"]], park_at[0]
                park_at[0] += v["end"] - v["start"]
        plan.vmas, plan.nr_vmas = region.array("ucr_vma", vmas, vma)
        gate_start = min([m.start for m in self.mine if m.name in self.arch.GATE_MAPPINGS] + [2**64])
        plan.unmap_end = max([m.end for m in self.mine if m.start < gate_start] + [v["end"] for v in vmas])
        mm = p["MM"]
        for k, key in enumerate(("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
                                 "start_stack", "arg_start", "arg_end", "env_start", "env_end")):
            plan.mm[k] = mm[key]
        plan.auxv = region.put(mm["tail"]) if mm["tail"] else 0
        plan.auxv_size = len(mm["tail"])
        plan.exe_fd = self._open_exe(p["TASK"]["tail"])

    def _files(self, plan, p):
        def fd(f, rec):
            f.src, f.dst, f.cloexec = self._file(rec), rec["fd"], rec["fd_flags"]
        plan.fds, plan.nr_fds = self.region.array("ucr_fd", p.many["FILE"], fd)

    def _threads(self, plan, p):
        arch, region = self.arch, self.region
        vmas = p.many["VMA"]
        pending = [(1, 0, rec) for rec in p.many["SIGPENDING"]]
        pending += [(0, k, rec) for k, t in enumerate(p.threads) for rec in t["SIGPENDING"]]

        def siginfo(s, item):
            s.shared, s.thread, rec = item
            s.signo = rec["signo"]
            ffi.memmove(s.info, rec["tail"], 128)
        plan.siginfo, plan.nr_siginfo = region.array("ucr_siginfo", pending, siginfo)

        def thread(t, item):
            k, records = item
            th = records["THREAD"]
            regs, fpstate = arch.cpu_state(records)
            sp = arch.stack_pointer(regs)
            stack_vma = next((v for v in vmas if v["start"] <= sp - 1 < v["end"]), None)
            if stack_vma is None:
                raise UcrError(f"image corrupt: the stack pointer of thread {th['tid']} is outside every mapping")
            frame_addr, frame, sigreturn_sp = arch.build_sigframe(
                regs, fpstate, th["blocked"], (th["altstack_sp"], th["altstack_flags"], th["altstack_size"]),
                stack_vma["start"], self.img.one[arch.HEADER_RECORD.name])
            t.plan = int(ffi.cast("uintptr_t", plan))
            t.sigframe = region.put(frame, 64)
            t.sigframe_len, t.sigframe_dest, t.sigreturn_sp = len(frame), frame_addr, sigreturn_sp
            for n, v in enumerate(arch.tls(regs)):
                t.tls[n] = v
            t.rseq, t.rseq_len, t.rseq_sig = th["rseq_ptr"], th["rseq_len"], th["rseq_sig"]
            t.clear_child_tid, t.robust_list, t.robust_len = th["clear_child_tid"], th["robust_list"], th["robust_len"]
            t.stack_top = region.stacks_start + (k + 1) * THREAD_STACK
            t.tid = th["tid"] if self.pids else 0
        plan.threads, plan.nr_threads = region.array("ucr_thread", list(enumerate(p.threads)), thread)

    def _rlimits(self, p):
        import resource
        out = []
        lims = p["RLIMITS"]["limits"]
        for res in range(16):
            cur, hard = lims[2 * res], lims[2 * res + 1]
            _, my_hard = resource.getrlimit(res)
            my_hard &= RLIM_INFINITY
            if hard > my_hard and os.geteuid() != 0:
                self.log(f"warning: resource limit {res} lowered to {my_hard}")
                hard = my_hard
            out += [min(cur, hard), hard]
        return out

    def _creds(self, plan, p):
        c = p["CREDS"]
        for key in ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid"):
            setattr(plan, key, c[key])
        groups = c["tail"]
        if os.geteuid() == 0:
            plan.restore_creds = 1
            plan.groups = self.region.put(struct.pack(f"<{len(groups)}I", *groups)) if groups else 0
            plan.nr_groups = len(groups)
        elif (os.getuid(), os.getgid()) != (c["uid"], c["gid"]):
            raise UcrError(f"the image runs as uid {c['uid']}; restarting it needs root")

    def spawn(self, set_tid, flags=0):
        arr = ffi.new("int32_t[]", set_tid or [0])
        return lib.ucr_spawn_restorer(flags, arr, len(set_tid), SIGCHLD, self.region.start,
                                      int(ffi.cast("uintptr_t", self.plans[0])), self.region.shared_start)

    def close_fds(self):
        for fd in self.opened:
            os.close(fd)
        self.opened = []

    def cleanup_parent(self):
        self.close_fds()
        if self.region is not None and self.region.start is not None:
            lib.ucr_unmap(self.region.start, self.region.size)
            self.region.start = None

    def slots(self):
        """(pid in the tree's namespace, state) of every process created so far."""
        slots = ffi.cast("struct ucr_slot *", ffi.addressof(self.shared.slots[0]))
        return [(slots[i].pid, slots[i].state) for i in range(len(self.img.procs))]

    def _failure(self, data):
        step, err, detail, task, _ = STATUS.unpack(data)
        what = STEP_TEXT.get(step, f"step {step}").format(detail=detail)
        n = len(self.img.procs)
        where = f" (process {self.img.procs[task].pid})" if 1 < n > task else \
            f" (the stand-in for gone leader {self.creation.placeholders[task - n]})" if task >= n else ""
        if step == lib.UCR_STEP_CLONE and err == 17:
            return UcrError(f"PID {detail} is in use; restart with --pidns or --no-pids")
        if step == lib.UCR_STEP_THREAD and err == 17:
            return UcrError(f"thread ID {detail} is in use; restart with --pidns or --no-pids")
        if step == lib.UCR_STEP_CHECKSUM:
            return UcrError(what)
        if step == lib.UCR_STEP_READ and err == 61:
            return UcrError(f"image truncated at offset {detail}")
        reason = ERRNO_TEXT.get(err) or (os.strerror(err) if err else "")
        return UcrError(f"restart failed {what}{where}" + (f": {reason}" if reason else ""))

    def wait_ready(self, top):
        """Waits until every live process reported ready; raises UcrError on
        the first failure, or when a task died without a word (top is the
        process rstr created: the root, or PID 1 of the new namespace)."""
        want = sum(not p.zombie for p in self.img.procs)
        data = b""
        while want:
            ready, _, _ = select.select([self.status_r], [], [], POLL_INTERVAL)
            if not ready:
                self._check_alive(top)
                continue
            chunk = os.read(self.status_r, 4096)
            if not chunk:  # every restorer is gone
                self._check_alive(top)
                raise UcrError("the restored tasks died before they were ready")
            data += chunk
            while len(data) >= STATUS.size:
                msg, data = data[:STATUS.size], data[STATUS.size:]
                if STATUS.unpack(msg)[0] != lib.UCR_STEP_READY:
                    raise self._failure(msg)
                want -= 1

    def _check_alive(self, top):
        got, status = os.waitpid(top, os.WNOHANG)
        if got == top:
            how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else \
                f"status {os.waitstatus_to_exitcode(status)}"
            raise UcrError(f"the restored task died before it was ready ({how})")
        states = _tree_states(top)
        for (pid, state), p in zip(self.slots(), self.img.procs):
            if pid and state not in (lib.UCR_SLOT_READY, lib.UCR_SLOT_ZOMBIE) and states.get(pid, "Z") == "Z":
                raise UcrError(f"restored process {p.pid} died before it was ready")


def _tree_states(top):
    """{PID in the innermost namespace: state} of top and its descendants."""
    out, stack = {}, [top]
    while stack:
        pid = stack.pop()
        try:
            out[proc.nspids(pid)[-1]] = proc.state(pid)
        except (UcrError, KeyError):
            continue
        stack.extend(proc.children(pid))
    return out


def _warn(msg):
    """A warning that does not stop the restart: always on stderr."""
    import sys
    print(f"rstr: {msg}", file=sys.stderr)


def _fd_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _reaper(rst, orig_pid):
    """PID 1 of a new namespace: creates the root with its original PID,
    reaps whatever is orphaned there, and exits as the root did."""
    code = 127
    try:
        os.close(rst.status_r)
        os.close(rst.go_w)
        pid = rst.spawn([orig_pid])
        if pid < 0:
            os.write(rst.status_w, STATUS.pack(lib.UCR_STEP_CLONE, -pid, orig_pid, 0, 0))
            os._exit(code)
        rst.cleanup_parent()
        # Hold none of rstr's files: with --no-wait, rstr's caller waits for their EOF.
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        while True:
            try:
                got, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if got == pid:
                code = os.waitstatus_to_exitcode(status)
                code = 128 - code if code < 0 else code
    finally:
        os._exit(code)


def _check_pids_free(image):
    for p in image.procs:
        for tid in [p.pid] + [t["THREAD"]["tid"] for t in p.threads]:
            if os.path.exists(f"/proc/{tid}"):
                what = "PID" if tid == p.pid else f"thread ID (of process {p.pid})"
                raise UcrError(f"{what} {tid} is in use; restart with --pidns or --no-pids")


def _kill(pid):
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _restore_tree(image, reader, arch, in_fd, pids, pidns, log):
    """Creates one copy of the tree and waits until it is ready; returns
    (top: the process rstr created, root, go fd that releases the tree,
    its cleanup.Leave)."""
    rst = Restorer(image, arch, in_fd, pids, log)
    rst.reader_csum = (reader.csum[0], reader.csum[1])
    rst.reader_offset = reader.offset
    orig_pid = image.procs[0].pid
    top = None
    try:
        ipc.restore(image.ipc)
        rst.prepare()
        if pids and pidns and orig_pid == 1:
            top = rst.spawn([1], arch.C["CLONE_NEWPID"])
        elif pids and pidns:
            top = lib.ucr_fork_pidns()
            if top == 0:
                _reaper(rst, orig_pid)
        else:
            top = rst.spawn([orig_pid] if pids else [])
        if top == -17:  # EEXIST
            raise UcrError(f"PID {orig_pid} is in use; restart with --pidns or --no-pids")
        if top < 0:
            raise UcrError(f"creating the task failed: {os.strerror(-top)}")
        rst.close_fds()
        rst.wait_ready(top)
        root = min(proc.children(top)) if pids and pidns and orig_pid != 1 else top
        region = rst.region
        return top, root, rst.go_w, cleanup.Leave(arch, region.start, region.end, rst.syscall_addr, root, log)
    except BaseException:
        if top and top > 0:
            if not pidns:  # otherwise PID 1 of the namespace takes them all along
                for pid, _ in rst.slots():
                    if pid > 0 and pid != top:
                        try:
                            os.kill(pid, 9)
                        except ProcessLookupError:
                            pass
            _kill(top)
        if rst.go_w is not None:
            os.close(rst.go_w)
        raise
    finally:
        if rst.status_r is not None:
            os.close(rst.status_r)
        rst.cleanup_parent()


def _copy_input(in_fd, offset):
    """An fd of its own on the image, at offset: the page data is read once
    per copy. A stream that cannot seek is kept in memory for that."""
    try:
        os.lseek(in_fd, 0, os.SEEK_CUR)
        fd = os.open(f"/proc/self/fd/{in_fd}", os.O_RDONLY)
    except OSError:
        fd = os.memfd_create("usercr-image", 0)
        os.lseek(fd, offset, os.SEEK_SET)
        while True:
            chunk = os.read(in_fd, 1 << 20)
            if not chunk:
                break
            os.write(fd, chunk)
        os.dup2(fd, in_fd)
        os.close(fd)
        fd = os.open(f"/proc/self/fd/{in_fd}", os.O_RDONLY)
    os.lseek(fd, offset, os.SEEK_SET)
    return fd


def restart(in_fd, pids=False, pidns=False, wait=True, pidfile=None, copies=1, forward=None, log=log_nothing):
    """Restores the image read from in_fd, copies times. Returns (root pids,
    wait status of the first or None); with a reaper (--pids --pidns) the
    status is the reaper's, which mirrors the root's. forward: a signal
    sent to the roots when rstr gets SIGINT while it waits."""
    arch = current_arch()
    reader = ImageReader(in_fd)
    image = Image(reader, arch)
    if pids and not pidns:
        if copies > 1:
            raise UcrError("several copies cannot all have the original PIDs; add --pidns or use --no-pids")
        _check_pids_free(image)
    if not pids and any(len(p.threads) > 1 for p in image.procs):
        _warn("warning: threads get new thread IDs with --no-pids, and programs that keep them (glibc does) "
              "may misbehave; use --pids")
    trees = []
    try:
        for k in range(copies):
            fd = _copy_input(in_fd, reader.offset) if copies > 1 else in_fd
            try:
                trees.append(_restore_tree(image, reader, arch, fd, pids, pidns, log))
            finally:
                if fd != in_fd:
                    os.close(fd)
    except BaseException:
        for top, _, go_w, _ in trees:
            _kill(top)
            os.close(go_w)
        raise
    roots = [root for _, root, _, _ in trees]
    if pidfile:
        with open(pidfile, "w") as f:
            f.write("".join(f"{root}\n" for root in roots))
    if wait and forward:  # before the release: a Ctrl-C from now on reaches the roots
        signal.signal(signal.SIGINT, lambda *_: [_signal(root, forward) for root in roots])
    live = sum(not p.zombie for p in image.procs)
    try:
        for _, _, go_w, leave in trees:
            leave.release(go_w, live)
    except BaseException:
        for top, _, _, leave in trees:
            leave.kill()
            _kill(top)
        raise
    finally:
        for _, _, go_w, _ in trees:
            os.close(go_w)
    log(f"restored {copies} x {len(image.procs)} processes, root PID(s) {' '.join(map(str, roots))}")
    if not wait:
        return roots, None
    statuses = [os.waitpid(top, 0)[1] for top, _, _, _ in trees]
    return roots, statuses[0]


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
