"""The user engine's restart: read the image's metadata, prepare the restore
plan in a region free in both layouts, create the task with clone3, and let
the restorer blob rebuild it."""
import fcntl
import os
import select
import struct

from . import proc
from . import records as R
from .arch import current as current_arch
from .dump import PAGE_SIZE, log_nothing
from .errors import UcrError
from .image import ImageReader
from .native import ffi, lib

CLONE_NEWPID = 0x20000000
SIGCHLD = 17
STACK_SIZE = 64 * 1024
MIN_REGION_ADDR = 1 << 30
RLIM_INFINITY = 2**64 - 1
STATUS = struct.Struct("<iiQ")

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
    lib.UCR_STEP_CLONE: "creating the task in the new PID namespace",
}
ERRNO_TEXT = {61: "image truncated"}  # ENODATA from the restorer's reader


def page_up(n):
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class Image:
    """The metadata records of a one-task image, up to PAGES_BEGIN."""

    def __init__(self, reader, arch):
        self.header = reader.header()
        if self.header["arch_id"] != arch.ARCH_ID:
            name = R.ARCH_NAMES.get(self.header["arch_id"], f"id {self.header['arch_id']}")
            raise UcrError(f"image is for {name}; this machine runs {arch.NAME}")
        if self.header["page_size"] != PAGE_SIZE:
            raise UcrError(f"image page size {self.header['page_size']} differs from this system's {PAGE_SIZE}")
        self.one = {}
        self.many = {"PIDS": [], "FILE": [], "VMA": [], "SPECIAL_DATA": [], "SIGPENDING": []}
        while True:
            rec = reader.next()
            if rec.type == R.PAGES_BEGIN.type:
                if (rec["csum_a"], rec["csum_b"]) != reader.csum_before:
                    raise UcrError("image corrupt: checksum mismatch in the metadata (a byte of the image changed)")
                break
            if rec.type in (R.TAIL.type, R.PAGES.type):
                raise UcrError(f"image corrupt at offset {rec.offset}: {rec.name} before the page data marker")
            if rec.name in self.many:
                self.many[rec.name].append(rec)
            else:
                self.one[rec.name] = rec
        for name in ("TREE", "TASK", "CREDS", "RLIMITS", "FS", "SIGHAND", "THREAD", "MM"):
            if name not in self.one:
                raise UcrError(f"image corrupt: no {name} record")
        if self.one["TREE"]["nr_tasks"] != 1 or len(self.many["PIDS"]) != 1:
            raise UcrError("image holds several tasks; restoring process trees is not supported yet")
        if len(self.many["VMA"]) != self.one["MM"]["nr_vmas"]:
            raise UcrError("image corrupt: VMA count does not match the MM record")

    def __getitem__(self, name):
        return self.one[name]


class Region:
    """The restorer's address range: code, plan and arrays, parking, stack."""

    def __init__(self, size):
        self.size = size
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
        self.start = cand
        r = lib.ucr_map_region(cand, self.size)
        if r < 0:
            raise UcrError(f"cannot map the restorer region at 0x{cand:x}: {os.strerror(-r)}")

    @property
    def end(self):
        return self.start + self.size

    def put(self, data, align=16):
        """Copies bytes into the data part; returns their address."""
        self.used = (self.used + align - 1) & ~(align - 1)
        addr = self.data_start + self.used
        ffi.memmove(ffi.cast("void *", addr), data, len(data))
        self.used += len(data)
        return addr


class Restorer:
    def __init__(self, image, arch, in_fd, log):
        self.img = image
        self.arch = arch
        self.in_fd = in_fd
        self.log = log
        self.opened = []      # fds rstr opened for the task
        self.region = None
        self.fd_pairs = []    # (src, dst)

    # Files
    def _open_file(self, rec):
        path, fd = rec["tail"], rec["fd"]
        kind = R.FILE_KINDS[rec["kind"]]
        if kind in ("tty", "pipe", "socket"):
            # Standard streams follow rstr's own, unless rstr's is the image.
            if fd != self.in_fd and _fd_open(fd):
                return os.dup(fd)
            return os.open("/dev/null", rec["flags"] & os.O_ACCMODE)
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

    def _keep(self, fd, fd_base):
        """Moves an fd rstr opened to fd_base or above, out of the task's way."""
        new = fcntl.fcntl(fd, fcntl.F_DUPFD, fd_base)
        os.close(fd)
        self.opened.append(new)
        return new

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
            return os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as e:
            raise UcrError(f"cannot open mapped file {path}: {e.strerror}") from None

    @staticmethod
    def _open_exe(path):
        """The executable for /proc/PID/exe, or -1 to keep rstr's. The kernel
        refuses a new one while the old is still mapped, which it is when both
        are the same file (a Python restoring a Python), and then keeping it is right."""
        try:
            st, mine = os.stat(path), os.stat("/proc/self/exe")
        except OSError:
            return -1
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return -1
        return os.open(path, os.O_RDONLY)

    # vDSO and friends
    def _specials(self, mine):
        """Pairs each special mapping of the image with this kernel's."""
        image_sp = {v["tail"]: v for v in self.img.many["VMA"] if v["kind"] == 2}
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
        for data in self.img.many["SPECIAL_DATA"]:
            vdso = here.get("[vdso]")
            if vdso and bytes(ffi.buffer(ffi.cast("char *", vdso.start), vdso.end - vdso.start)) != data["tail"]:
                raise UcrError("the vDSO of this kernel differs from the image's; restart on the kernel "
                               "that made the checkpoint")
        return {name: m.start for name, m in here.items()}

    def prepare(self):
        img, arch = self.img, self.arch
        arch.check_header(img[arch.HEADER_RECORD.name], self.log)
        if hasattr(arch, "check_task"):  # arm: per-task rules (ThumbEE, OABI/EABI)
            arch.check_task(img.one, _warn)
        mine = proc.maps("self")
        special_cur = self._specials(mine)
        vmas = img.many["VMA"]
        self.vma_fds = {}
        for v in vmas:
            if v["kind"] == 1:
                self.vma_fds[v.offset] = self._open_vma_file(v)
        file_fds = [(rec, self._open_file(rec)) for rec in img.many["FILE"]]
        exe_fd = self._open_exe(img["TASK"]["tail"])
        cwd, root = img["FS"]["tail"]
        try:
            cwd_fd = os.open(cwd, os.O_PATH | os.O_DIRECTORY)
            root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY) if root != "/" else -1
        except OSError as e:
            raise UcrError(f"working directory {e.filename} is gone: {e.strerror}") from None
        self.status_r, status_w = os.pipe()
        go_r, self.go_w = os.pipe()

        # Everything the task keeps or the restorer uses sits at fd_base or above.
        busy_fds = [int(f) for f in os.listdir("/proc/self/fd")]
        fd_base = max(busy_fds + [r["fd"] for r in img.many["FILE"]] + [2]) + 1
        self.fd_pairs = [(self._keep(new, fd_base), rec["fd"], rec["fd_flags"]) for rec, new in file_fds]
        for key in list(self.vma_fds):
            self.vma_fds[key] = self._keep(self.vma_fds[key], fd_base)
        exe_fd = self._keep(exe_fd, fd_base) if exe_fd >= 0 else -1
        cwd_fd = self._keep(cwd_fd, fd_base)
        root_fd = self._keep(root_fd, fd_base) if root_fd >= 0 else -1
        image_fd = self._keep(os.dup(self.in_fd), fd_base)
        status_w = self._keep(status_w, fd_base)
        go_r = self._keep(go_r, fd_base)

        # The region: free in this process and in the image.
        blob = bytes(ffi.buffer(lib.ucr_restorer_blob(), lib.ucr_restorer_size()))
        specials = [v for v in vmas if v["kind"] == 2]
        park = sum(v["end"] - v["start"] for v in specials)
        data_size = page_up(ffi.sizeof("struct ucr_plan") + 64 * 1024 + len(vmas) * ffi.sizeof("struct ucr_vma")
                            + len(img["MM"]["tail"]) + 4096 * (1 + len(img.many["SIGPENDING"])))
        region = Region(page_up(len(blob)) + data_size + park + STACK_SIZE)
        busy = [(m.start, m.end) for m in mine] + [(v["start"], v["end"]) for v in vmas]
        self.region = region
        region.place(busy)
        region.data_start = region.start + page_up(len(blob))
        ffi.memmove(ffi.cast("void *", region.start), blob, len(blob))

        plan_addr = region.put(bytes(ffi.sizeof("struct ucr_plan")), 64)
        plan = ffi.cast("struct ucr_plan *", plan_addr)
        plan.region_start, plan.region_end = region.start, region.end
        gate_start = min([m.start for m in mine if m.name in arch.GATE_MAPPINGS] + [2**64])
        plan.unmap_end = max([m.end for m in mine if m.start < gate_start] + [v["end"] for v in vmas])
        plan.page_size = PAGE_SIZE
        plan.image_fd, plan.status_fd, plan.go_fd, plan.fd_base = image_fd, status_w, go_r, fd_base

        # VMAs, with this kernel's special mappings parked before the region's stack.
        arr = ffi.new("struct ucr_vma[]", len(vmas))
        park_at = region.end - STACK_SIZE - park
        for i, v in enumerate(vmas):
            a = arr[i]
            a.start, a.end, a.offset, a.prot, a.mmap_flags = v["start"], v["end"], v["offset"], v["prot"], v["flags"]
            a.kind, a.fd = v["kind"], self.vma_fds.get(v.offset, -1)
            if v["kind"] == 2:
                a.cur, a.park = special_cur[v["tail"]], park_at
                park_at += v["end"] - v["start"]
        plan.vmas = region.put(ffi.buffer(arr))
        plan.nr_vmas = len(vmas)

        fds = ffi.new("struct ucr_fd[]", max(1, len(self.fd_pairs)))
        for i, (src, dst, cloexec) in enumerate(self.fd_pairs):
            fds[i].src, fds[i].dst, fds[i].cloexec = src, dst, cloexec
        plan.fds = region.put(ffi.buffer(fds))
        plan.nr_fds = len(self.fd_pairs)

        pend = img.many["SIGPENDING"]
        si = ffi.new("struct ucr_siginfo[]", max(1, len(pend)))
        for i, rec in enumerate(pend):
            si[i].shared, si[i].signo = rec["shared"], rec["signo"]
            ffi.memmove(si[i].info, rec["tail"], 128)
        plan.siginfo = region.put(ffi.buffer(si))
        plan.nr_siginfo = len(pend)

        acts = img["SIGHAND"]["actions"]
        for i in range(64):
            a = plan.sigactions[i]
            a.handler, a.flags, a.restorer, a.mask = acts[4 * i:4 * i + 4]
        plan.nr_rlimits = 16
        for i, v in enumerate(self._rlimits()):
            plan.rlimits[i] = v
        plan.cwd_fd, plan.root_fd, plan.umask = cwd_fd, root_fd, img["FS"]["umask"]
        comm = img["TASK"]["comm"].encode()[:15]
        ffi.memmove(plan.comm, comm + b"\0", len(comm) + 1)

        mm = img["MM"]
        for i, key in enumerate(("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
                                 "start_stack", "arg_start", "arg_end", "env_start", "env_end")):
            plan.mm[i] = mm[key]
        plan.auxv = region.put(mm["tail"]) if mm["tail"] else 0
        plan.auxv_size = len(mm["tail"])
        plan.exe_fd = exe_fd

        cur = ffi.new("uint64_t *"), ffi.new("uint32_t *"), ffi.new("uint32_t *")
        lib.ucr_rseq_self(*cur)
        plan.cur_rseq, plan.cur_rseq_len, plan.cur_rseq_sig = cur[0][0], cur[1][0], cur[2][0]
        th = img["THREAD"]
        plan.rseq, plan.rseq_len, plan.rseq_sig = th["rseq_ptr"], th["rseq_len"], th["rseq_sig"]

        self._creds(plan)
        regs, fpstate = arch.cpu_state(img.one)
        sp = arch.stack_pointer(regs)
        stack_vma = next((v for v in vmas if v["start"] <= sp - 1 < v["end"]), None)
        if stack_vma is None:
            raise UcrError("image corrupt: the stack pointer is outside every mapping")
        frame_addr, frame, sigreturn_sp = arch.build_sigframe(
            regs, fpstate, th["blocked"], (th["altstack_sp"], th["altstack_flags"], th["altstack_size"]),
            stack_vma["start"], img[arch.HEADER_RECORD.name])
        plan.sigframe = region.put(frame, 64)
        plan.sigframe_len, plan.sigframe_dest, plan.sigreturn_sp = len(frame), frame_addr, sigreturn_sp
        for i, v in enumerate(arch.tls(regs)):
            plan.tls[i] = v
        plan.csum[0], plan.csum[1] = self.reader_csum
        plan.image_offset = self.reader_offset
        if region.used > data_size:
            raise UcrError("internal error: restore plan larger than its region")
        lib.ucr_protect(region.start, page_up(len(blob)), 5)  # PROT_READ | PROT_EXEC
        self.plan_addr = plan_addr
        self.child_fds = [status_w, go_r]

    def _rlimits(self):
        import resource
        out = []
        lims = self.img["RLIMITS"]["limits"]
        for res in range(16):
            cur, hard = lims[2 * res], lims[2 * res + 1]
            _, my_hard = resource.getrlimit(res)
            my_hard &= RLIM_INFINITY
            if hard > my_hard and os.geteuid() != 0:
                self.log(f"warning: resource limit {res} lowered to {my_hard}")
                hard = my_hard
            out += [min(cur, hard), hard]
        return out

    def _creds(self, plan):
        c = self.img["CREDS"]
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
        pid = lib.ucr_spawn_restorer(flags, arr, len(set_tid), SIGCHLD, self.region.start, self.plan_addr,
                                     self.region.end)
        return pid

    def cleanup_parent(self):
        for fd in self.opened:
            os.close(fd)
        self.opened = []
        if self.region is not None and self.region.start is not None:
            lib.ucr_unmap(self.region.start, self.region.size)

    def wait_ready(self, pid):
        """Reads the restorer's report; raises UcrError if it failed."""
        data = b""
        while len(data) < STATUS.size:
            select.select([self.status_r], [], [])
            chunk = os.read(self.status_r, STATUS.size - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) < STATUS.size:
            _, status = os.waitpid(pid, 0)
            how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"status {os.waitstatus_to_exitcode(status)}"
            raise UcrError(f"the restored task died before it was ready ({how})")
        step, err, detail = STATUS.unpack(data)
        if step == lib.UCR_STEP_CLONE and err == 17:
            os.waitpid(pid, 0)
            raise UcrError(f"PID {detail} is in use in the new PID namespace")
        if step != lib.UCR_STEP_READY:
            os.waitpid(pid, 0)
            what = STEP_TEXT.get(step, f"step {step}").format(detail=detail)
            if step == lib.UCR_STEP_CHECKSUM or (step == lib.UCR_STEP_READ and err == 61):
                raise UcrError(what if step == lib.UCR_STEP_CHECKSUM else f"image truncated at offset {detail}")
            reason = ERRNO_TEXT.get(err) or (os.strerror(err) if err else "")
            raise UcrError(f"restart failed {what}" + (f": {reason}" if reason else ""))


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
    """PID 1 of a new namespace: creates the task with its original PID,
    reaps whatever is orphaned there, and exits as the task did."""
    code = 127
    try:
        os.close(rst.status_r)
        os.close(rst.go_w)
        pid = rst.spawn([orig_pid])
        if pid < 0:
            os.write(rst.child_fds[0], STATUS.pack(lib.UCR_STEP_CLONE, -pid, orig_pid))
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


def _child_of(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return int(f.read().split()[0])


def restart(in_fd, pids=False, pidns=False, wait=True, pidfile=None, log=log_nothing):
    """Restores the image read from in_fd. Returns (pid, wait status or None);
    with a reaper (--pids --pidns) the status is the reaper's, which mirrors the task's."""
    arch = current_arch()
    reader = ImageReader(in_fd)
    image = Image(reader, arch)
    rst = Restorer(image, arch, in_fd, log)
    rst.reader_csum = (reader.csum[0], reader.csum[1])
    rst.reader_offset = reader.offset
    orig_pid = image.many["PIDS"][0]["pid"]
    pid = None
    try:
        rst.prepare()
        if pids and pidns and orig_pid == 1:
            pid = rst.spawn([1], CLONE_NEWPID)
        elif pids and pidns:
            pid = lib.ucr_fork_pidns()
            if pid == 0:
                _reaper(rst, orig_pid)
        else:
            pid = rst.spawn([orig_pid] if pids else [])
        if pid == -17:  # EEXIST
            raise UcrError(f"PID {orig_pid} is in use; restart with --pidns or --no-pids")
        if pid < 0:
            raise UcrError(f"creating the task failed: {os.strerror(-pid)}")
        rst.cleanup_parent()
        rst.wait_ready(pid)
        task = _child_of(pid) if pids and pidns and orig_pid != 1 else pid
        if pidfile:
            with open(pidfile, "w") as f:
                f.write(f"{task}\n")
        os.write(rst.go_w, b"G")
        os.close(rst.go_w)
        rst.go_w = None
        log(f"restored as PID {task}")
        if not wait:
            return task, None
        _, status = os.waitpid(pid, 0)
        return task, status
    except BaseException:
        if pid and pid > 0:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        raise
    finally:
        if rst.opened:
            rst.cleanup_parent()
