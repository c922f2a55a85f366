"""Incremental images (ckpt --parent) and pre-copy (ckpt --pre-copy).

An incremental image holds the pages that differ from its parent's; a run of
pages that did not change is a PAGES_PARENT record naming the ancestor image
that holds it (depth 1: the parent) and its offset there, with the run's own
checksum. Which pages changed is found by comparing each page with the copy
the chain holds (exact: no hash can collide), so the parent can be any image.

Pre-copy copies the tree's memory while it runs, with the kernel's write
tracking (a userfaultfd in asynchronous write-protect mode, read back with
PAGEMAP_SCAN) telling which pages were written meanwhile; the tree is then
frozen only for its metadata and the pages written since, and the image is
completed from the copy after the tree runs on. See docs/architecture.md."""
import mmap
import os
import struct
import time

from . import proc
from . import records as R
from .errors import UcrError
from .image import ImageReader
from .native import ffi, lib

MAX_CHAIN = 32          # plan.h chain_fds
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PRECOPY_ROUNDS = 4      # copies while the tree runs, the first of everything
PRECOPY_ENOUGH = 4 << 20  # a round that copied less ends the pre-copy
SCAN_CAP = 4096
RUN = struct.Struct("=QQQII")  # struct ucr_base_run


def _tail_of(fd, size):
    """The TAIL record's checksum of an image file of size bytes."""
    n = R.align(R.TAIL.fixed_len)
    if size < n:
        return None
    data = os.pread(fd, n, size - n)
    type_, length = R.RECORD_HDR.unpack_from(data)
    if type_ != R.TAIL.type:
        return None
    t = R.TAIL.unpack(data[R.RECORD_HDR.size:length])
    return (t["csum_a"], t["csum_b"]) if t["magic"] == R.TAIL_MAGIC else None


def _open(path, want, child):
    """An ancestor image, opened and checked against what its child recorded
    (size and TAIL checksum); its PARENT record or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise UcrError(f"parent image {path} of {child} cannot be opened: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if want is not None and (size, _tail_of(fd, size)) != (want["size"], (want["csum_a"], want["csum_b"])):
            raise UcrError(f"parent image {path} of {child} changed since {child} was taken "
                           "(size or checksum differ); the chain is broken")
        reader = ImageReader(fd)
        reader.header()
        rec = reader.next()
        if rec.name != "PARENT":
            rec = reader.next()
        return fd, size, (rec.fields if rec.name == "PARENT" else None)
    except BaseException:
        os.close(fd)
        raise


def chain(first, child):
    """[(path, fd, PARENT fields or None)] from first up to the first full
    image; first is the child's PARENT record (or None for a plain path)."""
    out, want, path = [], first, first["tail"]
    while True:
        if len(out) >= MAX_CHAIN:
            raise UcrError(f"the chain of parent images of {child} is longer than {MAX_CHAIN}")
        try:
            fd, size, parent = _open(path, want, child)
        except BaseException:
            for _, f, _ in out:
                os.close(f)
            raise
        out.append((path, fd, parent))
        if parent is None:
            return out
        child, want, path = path, parent, parent["tail"]


class Parent:
    """ckpt --parent PATH: the chain above the new image, verified in full
    (every byte checksummed) before the tree is frozen, mapped for comparison,
    with the runs of pages each process of the parent has."""

    def __init__(self, path, log):
        path = os.path.abspath(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            size = os.fstat(fd).st_size
        except OSError as e:
            raise UcrError(f"parent image {path}: {e.strerror}") from None
        try:
            csum = _tail_of(fd, size)
        finally:
            os.close(fd)
        if csum is None:
            raise UcrError(f"parent image {path} is not a complete usercr image")
        first = dict(tail=path, size=size, csum_a=csum[0], csum_b=csum[1])
        self.links = chain(first, "the new image")
        if len(self.links) >= MAX_CHAIN:
            raise UcrError(f"parent image {path} ends a chain of {len(self.links)} images; take a full image")
        self.record = R.PARENT.pack(size=size, csum_a=csum[0], csum_b=csum[1], depth=len(self.links), tail=path)
        self.maps = []
        for p, fd, _ in self.links:
            self._verify(p, fd)
            self.maps.append(mmap.mmap(fd, 0, prot=mmap.PROT_READ) if os.fstat(fd).st_size else None)
        self.addrs = ffi.new("uint64_t[]", [int(ffi.cast("uintptr_t", ffi.from_buffer(m))) for m in self.maps])
        self.sections = self._sections(self.links[0][1])
        log(f"parent chain of {len(self.links)} image(s), {len(self.sections)} process(es) in the parent")

    def _verify(self, path, fd):
        reader = ImageReader(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            reader.header()
            while reader.next(skip_data=True).type != R.TAIL.type:
                pass
        except UcrError as e:
            raise UcrError(f"parent image {path}: {e}") from None

    @staticmethod
    def _sections(fd):
        """pid -> [(vaddr, npages, depth, offset)] of the parent's page sections."""
        os.lseek(fd, 0, os.SEEK_SET)
        reader = ImageReader(fd)
        reader.header()
        while reader.next().type != R.PAGES_BEGIN.type:
            pass
        out, runs = {}, []
        while True:
            rec = reader.next(skip_data=True)
            if rec.type == R.PAGES.type:
                runs.append((rec["vaddr"], rec["nr_pages"], 1, rec.offset + R.PAGES.fixed_len))
            elif rec.type == R.PAGES_PARENT.type:
                runs.append((rec["vaddr"], rec["nr_pages"], rec["depth"] + 1, rec["offset"]))
            elif rec.type == R.PAGES_END.type:
                out[rec["pid"]], runs = sorted(runs), []
            else:
                return out

    def base(self, pid, nspid):
        runs = self.sections.get(nspid, [])
        return _base(runs, self.addrs)

    def close(self):
        for m in self.maps:
            if m is not None:
                m.close()
        for _, fd, _ in self.links:
            os.close(fd)


def _base(runs, addrs, trusted=()):
    """The struct ucr_base for runs [(vaddr, npages, depth, offset)], kept
    alive with its arrays; runs in trusted (indexes) are not compared."""
    trusted = set(trusted) if not isinstance(trusted, range) else trusted
    packed = b"".join(RUN.pack(vaddr, npages, offset, depth, i in trusted)
                      for i, (vaddr, npages, depth, offset) in enumerate(runs)) or bytes(RUN.size)
    arr = ffi.from_buffer("struct ucr_base_run[]", bytearray(packed))
    base = ffi.new("struct ucr_base *")
    base.runs, base.nruns, base.maps = arr, len(runs), addrs
    return base, arr


def _carve(runs, cuts):
    """runs [(start, end, offset)] minus the ranges cuts [(start, end)], both sorted."""
    out, k = [], 0
    for start, end, off in runs:
        while k < len(cuts) and cuts[k][1] <= start:
            k += 1
        j, s = k, start
        while s < end:
            if j < len(cuts) and cuts[j][0] < end:
                cs, ce = cuts[j]
                if cs > s:
                    out.append((s, cs, off + s - start))
                s = max(s, ce)
                j += 1
            else:
                out.append((s, end, off + s - start))
                break
    return out


def _holds_uffd(pid):
    return any(target == "anon_inode:[userfaultfd]" for _, target, _ in proc.fds(pid))


def _uses_uffd(pid):
    """True if the process holds a userfaultfd or has memory registered with one."""
    if _holds_uffd(pid):
        return True
    try:
        with open(proc.path(pid, "smaps"), "rb") as f:
            return any(line.startswith(b"VmFlags:") and {b"um", b"uw", b"ui"} & set(line.split()[1:]) for line in f)
    except OSError:
        return True


def _scan(pagemap_fd, start, end, rearm):
    """The written (or zero-page) ranges of [start, end), [(start, end)]."""
    out, walk = ffi.new("uint64_t[]", 2 * SCAN_CAP), ffi.new("uint64_t *")
    found = []
    while start < end:
        n = lib.ucr_pagemap_written(pagemap_fd, start, end, rearm, out, SCAN_CAP, walk)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        found += [(out[2 * i], out[2 * i + 1]) for i in range(n)]
        if n < SCAN_CAP or walk[0] <= start:
            break
        start = walk[0]
    return found


class _Tracked:
    """One process during pre-copy: its uffd (ckpt's copy), the ranges it
    registered, and where the copy of each page is in the staging file."""

    def __init__(self, pid, starttime):
        self.pid, self.starttime = pid, starttime
        self.uffd = -1
        self.ranges = []    # registered with write tracking
        self.runs = []      # sorted (start, end, offset in the copy file)


def _precopy_ranges(pid, arch):
    """Private mappings whose pages pre-copy copies (shared ones change
    without this process's page tables noticing: copied while frozen)."""
    return [(m.start, m.end) for m in proc.maps(pid)
            if not m.shared and not m.special and m.name not in arch.GATE_MAPPINGS]


class PreCopy:
    """ckpt --pre-copy: the copy rounds before the final freeze."""

    def __init__(self, tree_cls, root, arch, log, out_fd):
        self.arch, self.log = arch, log
        self.tracked = {}
        self.fd = _staging_file(out_fd)
        self.stage = _staging_file(out_fd)
        self.offset = 0
        self.map = None
        self.method = "compare"
        self._start(tree_cls(root, arch, log))

    def _start(self, tree):
        """Freezes the tree a moment to give every process write tracking."""
        from .inject import Session
        tree.freeze()
        try:
            for pid in tree.order:
                if pid in tree.zombies:
                    continue
                t = _Tracked(pid, proc.stat_fields(pid)[22])
                self.tracked[pid] = t
                t.ranges = _precopy_ranges(pid, self.arch)
                if proc.status(pid).get("Seccomp", "0") != "0" or _uses_uffd(pid):
                    continue  # a filter might kill it for userfaultfd; its own uffd must not be disturbed
                with Session(tree.threads(pid), self.arch, proc.maps(pid)) as s:
                    fd = s.syscall(s.main, "userfaultfd", lib.ucr_uffd_flags())
                    if fd < 0:
                        fd = s.syscall(s.main, "userfaultfd", lib.ucr_uffd_flags() | lib.ucr_uffd_user_mode_only())
                    if fd >= 0:
                        t.uffd = lib.ucr_pidfd_getfd(pid, fd)
                        s.syscall(s.main, "close", fd)
                if t.uffd < 0:
                    continue
                arr, ok = _ranges(t.ranges), ffi.new("uint32_t[]", max(len(t.ranges), 1))
                if lib.ucr_uffd_wp_start(t.uffd, arr, len(t.ranges), ok) < 0:
                    os.close(t.uffd)
                    t.uffd = -1
                    continue
                t.ranges = [r for i, r in enumerate(t.ranges) if ok[i]]
                self.method = "write tracking (userfaultfd, PAGEMAP_SCAN)"
        finally:
            tree.release()

    def rounds(self):
        """Copies everything, then what was written meanwhile, while the tree runs."""
        t0 = time.monotonic()
        for k in range(PRECOPY_ROUNDS):
            copied = 0
            for t in self.tracked.values():
                try:
                    copied += self._copy(t, first=k == 0)
                except (OSError, UcrError):
                    t.runs, t.ranges = [], []  # gone or changed: copied while frozen
            self.log(f"pre-copy round {k}: {copied >> 10} KiB")
            if k and copied < PRECOPY_ENOUGH:
                break
        self.log(f"pre-copy: {time.monotonic() - t0:.3f} s, {self.method}")

    def _copy(self, t, first):
        if first:
            spans = _precopy_ranges(t.pid, self.arch)
        elif t.uffd >= 0:
            with open(proc.path(t.pid, "pagemap"), "rb", buffering=0) as pm:
                spans = [w for start, end in t.ranges for w in _scan(pm.fileno(), start, end, rearm=True)]
        else:
            return 0
        before = self.offset
        got = _copy_pages(t.pid, self.fd, spans, self)
        t.runs = sorted(_carve(t.runs, [(s, e) for s, e, _ in got]) + got)
        return self.offset - before

    def base(self, pid, nspid):
        """The base of the final dump of pid: the copies of pages not written
        since (trusted) or, without tracking, to compare."""
        if self.map is None:
            self.map = mmap.mmap(self.fd, 0, prot=mmap.PROT_READ) if self.offset else None
            self.addrs = ffi.new("uint64_t[]", [int(ffi.cast("uintptr_t", ffi.from_buffer(self.map)))
                                                 if self.map else 0])
        t = self.tracked.get(pid)
        if t is None or not t.runs or proc.stat_fields(pid)[22] != t.starttime:
            return None
        runs, trusted = t.runs, False
        if t.uffd >= 0 and not _holds_uffd(pid):  # its memory is registered with ckpt's uffd
            with open(proc.path(pid, "pagemap"), "rb", buffering=0) as pm:
                # Any mapping not registered (new, moved) reports every page as written.
                written = sorted(w for m in proc.maps(pid) if not m.special and m.name not in self.arch.GATE_MAPPINGS
                                 for w in _scan(pm.fileno(), m.start, m.end, rearm=False))
            runs, trusted = _carve(runs, written), True
        out = [(s, (e - s) // PAGE_SIZE, 1, off) for s, e, off in runs]
        return _base(out, self.addrs, range(len(out)) if trusted else ())

    def materialize(self, writer):
        """The staged page sections, with each PAGES_PARENT run replaced by
        its pages from the copy: the image is complete and standalone."""
        fd, pos, end = self.stage, 0, os.lseek(self.stage, 0, os.SEEK_END)
        hdr = R.RECORD_HDR.size
        while pos < end:
            type_, length = R.RECORD_HDR.unpack(os.pread(fd, hdr, pos))
            rec = os.pread(fd, R.align(length) if type_ != R.PAGES.type else R.PAGES.fixed_len, pos)
            if type_ == R.PAGES_PARENT.type:
                f = R.PAGES_PARENT.unpack(rec[hdr:])
                n = f["nr_pages"] * PAGE_SIZE
                writer.add(R.RECORD_HDR.pack(R.PAGES.type, R.PAGES.fixed_len + n) +
                           struct.pack("<QQ", f["vaddr"], f["nr_pages"]))
                _copy_data(writer, self.fd, f["offset"], n)
            elif type_ == R.PAGES.type:
                writer.add(rec)
                _copy_data(writer, fd, pos + R.PAGES.fixed_len, R.align(length) - R.PAGES.fixed_len)
            else:
                writer.add(rec)
            pos += R.align(length)

    def close(self):
        if self.map is not None:
            self.map.close()
        for t in self.tracked.values():
            if t.uffd >= 0:
                os.close(t.uffd)  # the kernel drops the registration and protection with it
        os.close(self.fd)
        os.close(self.stage)


def _copy_data(writer, fd, offset, n):
    while n:
        chunk = os.pread(fd, min(n, 1 << 20), offset)
        if not chunk:
            raise UcrError("pre-copy: the staging file is truncated")
        writer.add(chunk)
        offset += len(chunk)
        n -= len(chunk)


def _ranges(spans, mode=None):
    arr = ffi.new("struct ucr_dump_range[]", max(len(spans), 1))
    for i, (start, end) in enumerate(spans):
        arr[i].start, arr[i].end, arr[i].mode = start, end, mode or lib.UCR_DUMP_ANON
    return arr


def _copy_pages(pid, fd, spans, pc):
    """Copies the present pages of spans of the running process to the copy
    file; [(start, end, offset)] of what it wrote."""
    if not spans:
        return []
    csum, counts = ffi.new("uint64_t[2]"), ffi.new("uint64_t[2]")
    start = pc.offset
    with open(proc.path(pid, "pagemap"), "rb", buffering=0) as pm, open(proc.path(pid, "mem"), "rb",
                                                                         buffering=0) as mem:
        os.lseek(fd, start, os.SEEK_SET)
        r = lib.ucr_dump_pages(pid, pm.fileno(), mem.fileno(), fd, ffi.NULL, _ranges(spans), len(spans), csum, PAGE_SIZE,
                               counts)
    pc.offset += counts[0]
    if r < 0:
        raise OSError(-r, os.strerror(-r))
    out, pos = [], start
    while pos < pc.offset:
        _, length, vaddr, npages = struct.unpack("<IIQQ", os.pread(fd, R.PAGES.fixed_len, pos))
        out.append((vaddr, vaddr + npages * PAGE_SIZE, pos + R.PAGES.fixed_len))
        pos += R.align(length)
    return out


def _staging_file(out_fd):
    """An unnamed file next to the image (or in TMPDIR when the image goes to a pipe)."""
    import tempfile  # here: ~10 ms to import, which every rstr would pay
    where = os.readlink(f"/proc/self/fd/{out_fd}")
    d = os.path.dirname(where) if where.startswith("/") else None
    try:
        return os.open(d or tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        f = tempfile.TemporaryFile()
        return os.dup(f.fileno())


class Restore:
    """rstr: the chain of images above this one, opened and checked
    (identity: size and TAIL checksum, as the child recorded them)."""

    def __init__(self, rst):
        from .trust import check_image
        self.fds = []
        first = rst.img.tree_records("PARENT")
        if not first:
            return
        links = chain(first[0].fields, "this image")
        try:
            if len(links) != first[0]["depth"]:
                raise UcrError(f"the chain of parent images has {len(links)} images, the image recorded "
                               f"{first[0]['depth']}; the chain is broken")
            for path, fd, _ in links:
                check_image(fd, path, False)
        except BaseException:
            for _, fd, _ in links:
                os.close(fd)
            raise
        self.fds = [rst.keep(fd) for _, fd, _ in links]

    def prepare(self, plan, p):
        plan.nr_chain = len(self.fds)
        for i, fd in enumerate(self.fds):
            plan.chain_fds[i] = fd
