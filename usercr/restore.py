"""The user engine's restart: read the image's metadata, prepare one restore
plan per process in a region free in every layout, create the root with
clone3, and let the restorer blob rebuild the tree from there. Each kind of
kernel state prepares its own part of every plan (PARTS, in order)."""
import errno
import fcntl
import importlib
import os
import select
import _signal as signal  # the signal module without its enums, which cost every rstr ~2 ms to import
import struct
import time

from . import cleanup, compress, inplace, proc, rootless, safeio, threads, trust
from . import records as R
from .arch import current as current_arch
from .errors import UcrError, log_nothing
from .image import ImageReader
from .model import PAGE_SIZE, Image
from .native import ffi, lib
from .tree import Creation

STACK_SIZE = 64 * 1024
MIN_REGION_ADDR = 1 << 30
STATUS = struct.Struct("<iiQii")
PLACE_ATTEMPTS = 5
POLL_INTERVAL = 0.5
ZOMBIE_WAIT = 3.0  # for a PID the tree needs held by a zombie: some inits reap orphans every ~2 s
# The restore-side parts (modules), in the order they prepare each plan. Files
# come after memory (mapped files are opened first) and tty before files (a
# standard stream may need the terminal's part). The other kinds of fd
# (files.OWNERS) prepare nothing: their parts are imported and made when a
# FILE record of theirs is opened (Restorer.part), so that rstr does not
# import what the image does not use.
PARTS = ("inplace", "incremental", "tasks", "tty", "memory", "files", "locks", "threads", "signals", "timers",
         "rlimits", "fs", "creds")

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
    lib.UCR_STEP_CAPS: "restoring capabilities, securebits or no_new_privs (stage {detail})",
    lib.UCR_STEP_SECCOMP: "installing seccomp filter {detail}",
    lib.UCR_STEP_LOCK: "taking file lock {detail} again",
    lib.UCR_STEP_BRK: "setting the brk to 0x{detail:x}",
    lib.UCR_STEP_PARENT: "page data from ancestor image {detail} (1: the parent) does not match: it changed",
}
ERRNO_TEXT = {errno.ENODATA: "image truncated"}  # the restorer's reader


def page_up(n):
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class Region:
    """The restorer's address range: code, plans and arrays, parking, thread
    stacks and stack (private to each process), then the shared table."""

    def __init__(self, private_size, shared_size):
        self.private_size = private_size
        self.size = private_size + shared_size
        self.start = None
        self.used = 0

    def place(self, image_ranges):
        """Maps the region in the lowest gap above MIN_REGION_ADDR that is free
        in rstr and in the image. rstr's own layout is read again if it
        changed meanwhile (Python maps memory when it likes), a few times."""
        for attempt in range(PLACE_ATTEMPTS):
            cand = MIN_REGION_ADDR
            for lo, hi in sorted([(m.start, m.end) for m in proc.maps("self")] + image_ranges):
                if hi <= cand:
                    continue
                if lo >= cand + self.size:
                    break
                cand = page_up(hi)
            r = lib.ucr_map_region(cand, self.private_size, 0)
            if r == 0:
                r = lib.ucr_map_region(cand + self.private_size, self.size - self.private_size, 1)
                if r < 0:
                    lib.ucr_unmap(cand, self.private_size)
            if r == 0:
                self.start = cand
                return
            if r != -errno.EEXIST:
                break
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
    """The restore of one copy of the tree: rstr's fds handed to the tasks,
    the region with the blob and every plan, and the parts that fill them."""

    def __init__(self, image, creation, arch, in_fd, pids, log, strict_files=False):
        self.img = image
        self.creation = creation
        self.live = image.live
        self.arch = arch
        self.in_fd = in_fd
        self.pids = pids
        self.log = log
        self.strict_files = strict_files
        self.same_pidns = False  # the tree keeps its PIDs in rstr's own namespace (set by _restore_tree)
        self.forked = False   # no clone3 here: a lone process made by fork (inplace.py)
        self.opened = []      # fds rstr opened for the tasks, at fd_base or above
        self.region = None
        self.status_r = self.go_w = None
        self.warnings = []    # printed once the tree is ready: a failed restart says one line

    def keep(self, fd):
        """Moves an fd rstr opened to fd_base or above, out of the tasks' way."""
        trust.nofile_room(self.fd_base + len(self.opened) + 1)
        new = fcntl.fcntl(fd, fcntl.F_DUPFD, self.fd_base)
        os.close(fd)
        self.opened.append(new)
        return new

    def part(self, name):
        """The Restore part of module name, made when first asked for."""
        got = self.parts.get(name)
        if got is None:
            got = self.parts[name] = importlib.import_module(f"{__package__}.{name}").Restore(self)
        return got

    def warn(self, msg):
        if msg not in self.warnings:
            self.warnings.append(msg)

    def _data_size(self):
        sizes = {name: ffi.sizeof(f"struct {name}") for name in
                 ("ucr_plan", "ucr_vma", "ucr_fd", "ucr_siginfo", "ucr_timer", "ucr_thread", "ucr_child")}
        size = sizes["ucr_plan"] + 64 * 1024
        for p in self.img.procs:
            size += sizes["ucr_plan"] + 8 * 64
            size += len(p.records("VMA")) * sizes["ucr_vma"]
            size += len(p.records("FILE")) * sizes["ucr_fd"]
            size += (len(p.records("SIGPENDING")) + sum(len(t["SIGPENDING"]) for t in p.threads)) \
                * sizes["ucr_siginfo"]
            size += len(p.records("POSIX_TIMER")) * sizes["ucr_timer"]
            size += len(p.threads) * (sizes["ucr_thread"] + 32 * 1024)  # with its signal frame
            size += 2 * (sizes["ucr_child"] + 64)
            size += sum(self.parts[name].data_size(p) for name in PARTS if hasattr(self.parts[name], "data_size"))
            if "MM" in p.one:
                size += len(p["MM"]["tail"]) + 4 * len(p["CREDS"]["tail"])
        return page_up(size)

    def prepare(self):
        img, arch = self.img, self.arch
        arch.check_header(img.one[arch.HEADER_RECORD.name], self.log)
        self.mine = proc.maps("self")
        for p in self.live:
            if hasattr(arch, "check_task"):  # arm: per-task rules (ThumbEE, OABI/EABI)
                arch.check_task({**img.one, **p.one, **p.threads[0]}, _warn)
        nodes = len(img.procs) + len(self.creation.placeholders)
        self.status_r, status_w = os.pipe()
        go_r, self.go_w = os.pipe()

        # Everything the tasks keep or the restorer uses sits at fd_base or above.
        busy_fds = [int(f) for f in os.listdir("/proc/self/fd")]
        self.fd_base = max(busy_fds + [r["fd"] for p in img.procs for r in p.records("FILE")] + [2]) + 1
        self.image_fd = self.keep(os.dup(self.in_fd))
        self.status_w = self.keep(status_w)
        self.go_r = self.keep(go_r)
        self.parts = {}
        for name in PARTS:
            self.part(name)
        mem = self.part("memory")
        mem.prepare_tree()

        blob = bytes(ffi.buffer(lib.ucr_restorer_blob(), lib.ucr_restorer_size()))
        blob, syscall_at = cleanup.with_syscall_insn(blob, arch)
        max_threads = max(len(p.threads) for p in self.live)
        data_size = self._data_size()
        shared_size = page_up(ffi.sizeof("struct ucr_shared") + 8 * nodes)
        park = mem.park_size()
        region = Region(page_up(len(blob)) + data_size + park + max_threads * threads.THREAD_STACK + STACK_SIZE,
                        shared_size)
        self.region = region
        region.place(mem.busy())
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
            plan = self._common(i, p.pid)
            if not p.zombie:
                plan.pages_turn, plan.last_pages = turn, turn == len(self.live) - 1
                turn += 1
            for part in map(self.parts.get, PARTS):
                if hasattr(part, "prepare") and (not p.zombie or getattr(part, "for_zombies", False)):
                    part.prepare(plan, p)
            if p.zombie:
                plan.zombie, plan.exit_status = 1, p["TASK"]["exit_status"]
        for k, lead in enumerate(self.creation.placeholders):
            self._common(len(img.procs) + k, lead).placeholder = 1
        if region.used > data_size:
            raise UcrError("internal error: restore plan larger than its region")
        lib.ucr_protect(region.start, page_up(len(blob)), arch.C["PROT_READ"] | arch.C["PROT_EXEC"])
        cur = ffi.new("uint64_t *"), ffi.new("uint32_t *"), ffi.new("uint32_t *")
        lib.ucr_rseq_self(*cur)
        root = self.plans[self.creation.top]  # the process rstr creates drops rstr's rseq
        root.cur_rseq, root.cur_rseq_len, root.cur_rseq_sig = cur[0][0], cur[1][0], cur[2][0]

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
            c.exit_signal = img.procs[j]["TASK"]["exit_signal"] if j < n else signal.SIGCHLD
            c.zombie, c.placeholder = j < n and img.procs[j].zombie, j >= n
            c.clone_parent, c.adopted = creation.clone_parent[j], creation.creator[j] != node
        plan.children, plan.nr_children = region.array("ucr_child", creation.children(node), child)
        return plan

    def spawn(self, set_tid, flags=0):
        """Creates the top node: the root, or the placeholder above it."""
        arr = ffi.new("int32_t[]", set_tid or [0])
        return lib.ucr_spawn_restorer(flags, arr, len(set_tid), signal.SIGCHLD, self.region.start,
                                      int(ffi.cast("uintptr_t", self.plans[self.creation.top])),
                                      self.region.shared_start)

    def reap_placeholders(self, top):
        """rstr reaps the placeholders it created (top) or was given with
        CLONE_PARENT, outermost first, and returns the root's PID: its child."""
        if self.creation.top == 0:
            return top
        slots = ffi.cast("struct ucr_slot *", ffi.addressof(self.shared.slots[0]))
        for node in self.creation.adopted[None]:
            pid = top if node == self.creation.top else slots[node].pid
            if pid <= 0 or os.waitpid(pid, 0)[1] != 0:
                ready, _, _ = select.select([self.status_r], [], [], POLL_INTERVAL)
                data = os.read(self.status_r, STATUS.size) if ready else b""
                raise self._failure(data) if len(data) == STATUS.size else \
                    UcrError("the stand-in for a gone session or group leader died")
        return slots[0].pid

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
        if step == lib.UCR_STEP_CLONE and err == errno.EEXIST:
            return UcrError(f"PID {detail} is in use; restart with --pidns or --no-pids")
        if step == lib.UCR_STEP_THREAD and err == errno.EEXIST:
            return UcrError(f"thread ID {detail} is in use; restart with --pidns or --no-pids")
        if step == lib.UCR_STEP_CHECKSUM:
            return UcrError(what)
        if step == lib.UCR_STEP_LOCK and task < n:
            from .locks import failure
            return failure(self.img.procs[task], detail, err)
        if step == lib.UCR_STEP_READ and err == errno.ENODATA:
            return UcrError(f"image truncated at offset {detail}")
        if step == lib.UCR_STEP_BRK:
            return inplace.brk_failure(detail, err)
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
                step, _, detail, task, _ = STATUS.unpack(msg)
                if step != lib.UCR_STEP_READY:
                    raise self._failure(msg)
                if detail:  # only a forked restore sets it (inplace.py)
                    self.warn(inplace.brk_note(self.img.procs[task].pid, detail))
                want -= 1

    def _check_alive(self, top):
        got, status = os.waitpid(top, os.WNOHANG)
        if got == top:
            how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else \
                f"status {os.waitstatus_to_exitcode(status)}"
            raise UcrError(f"the restored task died before it was ready ({how})")
        slots = self.slots()  # first: a process created after the scan below is not in it
        states = _tree_states(top)
        for (pid, state), p in zip(slots, self.img.procs):
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


def _reaper(rst, top_pid, orig_pid):
    """PID 1 of a new namespace: creates the root (or the placeholder above
    it) with its original PID, reaps whatever is orphaned there, and exits as
    the root did."""
    code = 127
    try:
        os.close(rst.status_r)
        os.close(rst.go_w)
        pid = rst.spawn([top_pid])
        if pid < 0:
            os.write(rst.status_w, STATUS.pack(lib.UCR_STEP_CLONE, -pid, top_pid, 0, 0))
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
            if got == orig_pid:
                code = os.waitstatus_to_exitcode(status)
                code = 128 - code if code < 0 else code
    finally:
        os._exit(code)


def _taken(image, creation):
    """The first PID or TID the tree needs (its processes, threads and gone
    leaders' placeholders) that is in use here, with what it is; None if
    all are free. A session or group keeps its id after its leader exited.
    A zombie is waited for a moment: the tree killed by ckpt --kill (or by
    hand) a moment ago holds its PIDs until the tasks' new parent reaps them."""
    ids = [(tid, "PID" if tid == p.pid else f"thread ID (of process {p.pid})")
           for p in image.procs for tid in [p.pid] + [t["THREAD"]["tid"] for t in p.threads]]
    ids += [(lead, "the gone session or group leader's PID") for lead in creation.placeholders]
    deadline = time.monotonic() + ZOMBIE_WAIT
    for v, what in ids:
        while proc.exists(v):
            if proc.state(v) != "Z" or time.monotonic() > deadline:
                return v, what
            time.sleep(0.005)
    groups = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                groups.update(int(f) for f in proc.stat_fields(int(d))[5:7])
            except UcrError:
                pass
    return next(((v, what) for v, what in ids if v in groups), None)


def _noticed(image):
    """Why new PIDs would be noticed: a parent sees its children's, and
    glibc keeps its threads' IDs. None for a lone single-threaded process."""
    if len(image.procs) > 1:
        return f"process {image.procs[0].pid} has children, which its tree knows by PID"
    if len(image.procs[0].threads) > 1:
        return f"process {image.procs[0].pid} has threads, whose IDs glibc keeps"
    return None


def _pid_mode(image, creation, pids, pidns, copies, log):
    """(original PIDs?, new PID namespace?) for --pids/--no-pids and
    --pidns/--no-pidns, each None when not given: by default the original
    PIDs, here when they are all free, otherwise in a new PID namespace."""
    if pids is False:
        if pidns:
            raise UcrError("--pidns keeps the original PIDs; it does not go with --no-pids")
        why = _noticed(image)
        if why:
            raise UcrError(f"--no-pids would be noticed: {why}; restart without it")
        return False, False
    if pidns is False:
        if copies > 1:
            raise UcrError("several copies cannot all have the original PIDs; add --pidns or use --no-pids")
        taken = _taken(image, creation)
        if taken:
            raise UcrError(f"{taken[1]} {taken[0]} is in use; restart with --pidns or --no-pids")
        return True, False
    if pidns:
        return True, True
    if copies > 1:
        log("restoring each copy with the original PIDs in a new PID namespace")
        return True, True
    taken = _taken(image, creation)
    if taken:
        log(f"{taken[1]} {taken[0]} is in use here: restoring with the original PIDs in a new PID namespace")
        return True, True
    log("restoring with the original PIDs in this PID namespace")
    return True, False


def _kill(pid):
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


class Copy:
    """One restored copy of the tree, ready and waiting for the go: top is
    the process rstr created (the root, or PID 1 of a new namespace); leave
    releases it and takes the restorer out of its processes."""

    def __init__(self, top, root, go_w, rst):
        self.top, self.root, self.go_w = top, root, go_w
        self.terminal_modes, self.warnings = rst.part("files").terminal_modes, rst.warnings
        region = rst.region
        self.image_end = rst.shared.image_offset + R.TAIL.fixed_len  # where its tasks stopped reading
        self.leave = cleanup.Leave(rst.arch, region.start, region.end, rst.syscall_addr, root, rst.log)


def _restore_tree(image, creation, reader, arch, in_fd, pids, pidns, log, strict_files, forked=False):
    """Creates one copy of the tree and waits until it is ready."""
    rst = Restorer(image, creation, arch, in_fd, pids, log, strict_files)
    rst.forked = forked
    rst.same_pidns = bool(pids and not pidns)
    rst.reader_csum = (reader.csum[0], reader.csum[1])
    rst.reader_offset = reader.offset
    orig_pid = image.procs[0].pid
    top_pid = orig_pid if creation.top == 0 else creation.placeholders[creation.top - len(image.procs)]
    reaper = pids and pidns and not (orig_pid == 1 and creation.top == 0)
    top = None
    try:
        sysv = image.tree_records("IPC_SHM", "IPC_MSG", "IPC_SEM")
        if sysv or any(r["tail"] for r in image.tree_records("NAMESPACES")):  # else they have nothing to do
            from . import ipc, namespaces
            namespaces.restore(image.tree_records(*namespaces.RECORDS), sysv=bool(sysv))
            ipc.restore(sysv)
        rst.prepare()
        if pids and pidns and not reaper:
            top = rst.spawn([1], arch.C["CLONE_NEWPID"])
        elif reaper:
            top = lib.ucr_fork_pidns()
            if top == 0:
                _reaper(rst, top_pid, orig_pid)
        else:
            top = rst.spawn([top_pid] if pids else [])
        if top == -errno.EEXIST:
            raise UcrError(f"PID {top_pid} is in use; restart with --pidns or --no-pids")
        if top < 0:
            raise UcrError(f"creating the task failed: {os.strerror(-top)}")
        rst.close_fds()
        if not reaper:
            top = rst.reap_placeholders(top)
        rst.wait_ready(top)
        root = next(c for c in proc.children(top) if proc.nspids(c)[-1] == orig_pid) if reaper else top
        return Copy(top, root, rst.go_w, rst)
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


def restart(in_fd, **options):
    """Restores the image read from in_fd (plain or compressed), copies
    times. pids, pidns: True, False or None (decided here, see _pid_mode).
    Returns (root pids, wait status of the first or None); with a reaper (a
    new namespace) the status is the reaper's, which mirrors the root's.
    forward: a signal sent to the roots when rstr gets SIGINT while it waits.
    strict_files: a file whose size changed since the checkpoint is an error,
    not a warning. stats: a usercr.stats.RestartStats to fill in."""
    with compress.Input(in_fd) as stream:
        return _restart(stream, **options)


def _restart(stream, pids=None, pidns=None, wait=True, pidfile=None, copies=1, forward=None, log=log_nothing,
             strict_files=False, stats=None):
    arch = current_arch()
    in_fd = stream.fd
    reader = ImageReader(in_fd, stream.prefix)
    image = Image(reader, arch)
    creation = Creation(image.shape)
    forked = inplace.needed(image, arch, pids, pidns)
    pids, pidns = (False, False) if forked else _pid_mode(image, creation, pids, pidns, copies, log)
    rootless.check_restart(image, pids, pidns)
    trees = []
    try:
        for k in range(copies):
            fd = _copy_input(in_fd, reader.offset) if copies > 1 else in_fd
            try:
                trees.append(_restore_tree(image, creation, reader, arch, fd, pids, pidns, log, strict_files,
                                           forked))
            finally:
                if fd != in_fd:
                    os.close(fd)
        roots = [copy.root for copy in trees]
        # The trees exist: a failure from here on must not leave them behind.
        if pidfile:
            safeio.write_file(pidfile, "".join(f"{root}\n" for root in roots))
        log(f"restored {copies} x {len(image.procs)} processes, root PID(s) {' '.join(map(str, roots))}")
        stream.finish()  # a compressed stream is whole and undamaged
        if stats:
            stats.processes, stats.tops = copies * len(image.procs), [copy.top for copy in trees]
            stats.bytes_read = reader.offset + sum(copy.image_end - reader.offset for copy in trees)
            stats.finish()  # the trees are ready: what follows is theirs (the terminal, the wait)
    except BaseException:
        for copy in trees:
            _kill(copy.top)
            os.close(copy.go_w)
        raise
    if wait and forward:  # before the release: a Ctrl-C from now on reaches the roots
        signal.signal(signal.SIGINT, lambda *_: [_signal(root, forward) for root in roots])
    for msg in trees[0].warnings:
        _warn(msg)
        getattr(log, "warning", log_nothing)(msg)  # -l FILE keeps them too
    _set_terminal_modes(trees[0].terminal_modes)
    try:
        for copy in trees:
            copy.leave.release(copy.go_w, len(image.live))
    except BaseException:
        for copy in trees:
            copy.leave.kill()
            _kill(copy.top)
        raise
    finally:
        for copy in trees:
            os.close(copy.go_w)
    if not wait:
        return roots, None
    statuses = [os.waitpid(copy.top, 0)[1] for copy in trees]
    return roots, statuses[0]


def _set_terminal_modes(modes):
    """The modes the program had set on its terminal, on the one it is
    restored on (rstr's own standard streams), once output drained."""
    if not modes:
        return
    import termios
    for fd, saved in modes.items():
        try:
            fcntl.ioctl(fd, termios.TCSETSW, saved)
        except OSError as e:
            _warn(f"warning: cannot set the modes of the terminal on fd {fd}: {e.strerror}")


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
