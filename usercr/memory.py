"""Memory: the mm fields and auxv (MM), the mappings (VMA), the contents of
the vDSO for comparison (SPECIAL_DATA); the page contents themselves are
copied by the C core once every process's metadata is written (PAGES)."""
import os
import stat

from . import proc
from . import records as R
from . import trust
from .rootless import GRANT
from .errors import UcrError
from .native import ffi, lib

K = R.VMA_KINDS


def inject(ctx):
    return {"brk": ctx.session.syscall(ctx.main, "brk", 0)}


def _mapped_size(pid, m, sizes):
    """The size of a mapped file, stat'ed once per file for the whole tree
    (every process maps the same libraries)."""
    key = (m.dev, m.inode)
    if key not in sizes:
        try:
            sizes[key] = os.stat(proc.path(pid, "map_files", f"{m.start:x}-{m.end:x}")).st_size
        except PermissionError:
            sizes[key] = _size_by_path(pid, m)
        except OSError as e:
            raise UcrError(f"cannot stat {m.name} mapped by process {pid}: {e.strerror}") from None
    return sizes[key]


def _size_by_path(pid, m):
    """Without CAP_CHECKPOINT_RESTORE /proc/PID/map_files is closed: the
    mapped file's path (as this process resolves it, like maps) serves
    if it still names the very inode mapped."""
    try:
        st = os.stat(m.name, follow_symlinks=False)
    except OSError as e:
        st, why = None, e.strerror
    if st is not None and (st.st_dev, st.st_ino) == (m.dev, m.inode):
        return st.st_size
    if st is not None:
        why = "that path now names another file"
    raise UcrError(f"cannot stat {m.name} mapped by process {pid}: {why}, and /proc/{pid}/map_files needs "
                   f"CAP_CHECKPOINT_RESTORE ({GRANT})")


def _vmas(ctx, sysv):
    """VMA and SPECIAL_DATA records, and the page ranges to copy. With sysv,
    SysV shared memory is saved with its segment and attached again."""
    pid, C = ctx.pid, ctx.arch.C
    sizes = ctx.tree.setdefault("mapped_sizes", {})
    vmas, specials, ranges = [], [], []
    for m in ctx.maps:
        if m.name in ctx.arch.GATE_MAPPINGS:
            continue
        flags = C["MAP_SHARED"] if m.shared else C["MAP_PRIVATE"]
        fields = dict(start=m.start, end=m.end, prot=m.prot, offset=m.offset)
        if m.special:
            kind = K.SPECIAL
            if m.name == "[vdso]":
                specials.append(R.SPECIAL_DATA.pack(vaddr=m.start, tail=ctx.main.read(m.start, m.end - m.start)))
        elif sysv and m.name.startswith("/SYSV"):
            kind = K.SYSV
            fields.update(dev=m.dev, ino=m.inode)  # the inode number is the shmid
            if m.offset:
                raise UcrError(f"process {pid} maps part of SysV shared memory {m.inode}; that cannot be "
                               "checkpointed yet")
        elif m.name in ("", "[heap]", "[stack]") or m.name.startswith("[anon:") or not m.name.startswith("/"):
            kind = K.ANON
            flags |= C["MAP_ANONYMOUS"] | (C["MAP_GROWSDOWN"] if m.name == "[stack]" else 0)
            ranges.append((m.start, m.end, lib.UCR_DUMP_ANON))
        elif m.deleted or m.name.startswith(("/memfd:", "/SYSV", "/dev/zero")):
            # Backing object cannot be reopened by path: keep the contents. A
            # shared one is one object for every process that maps it (dev, ino).
            kind = K.SHARED_ANON if m.shared else K.ANON
            flags |= C["MAP_ANONYMOUS"]
            fields.update(dev=m.dev, ino=m.inode)
            ranges.append((m.start, m.end, lib.UCR_DUMP_ANON))
        else:
            kind = K.FILE
            fields.update(dev=m.dev, ino=m.inode, size=_mapped_size(pid, m, sizes))
            if not m.shared:
                ranges.append((m.start, m.end, lib.UCR_DUMP_FILE_PRIVATE))
        vmas.append(R.VMA.pack(kind=kind, flags=flags, tail=m.name, **fields))
    return vmas, specials, ranges


def dump(ctx):
    """MM, VMA and SPECIAL_DATA records; the page ranges go to ctx.ranges."""
    sf = ctx.stat
    vmas, specials, ctx.ranges = _vmas(ctx, sysv=ctx.tree["sysv"])
    mm = dict(start_code=int(sf[26]), end_code=int(sf[27]), start_stack=int(sf[28]),
              start_data=int(sf[45]), end_data=int(sf[46]), start_brk=int(sf[47]),
              brk=ctx.injected["memory"]["brk"], arg_start=int(sf[48]), arg_end=int(sf[49]),
              env_start=int(sf[50]), env_end=int(sf[51]))
    yield R.MM.pack(nr_vmas=len(vmas), tail=proc.read_bytes(ctx.pid, "auxv"), **mm)
    yield from vmas
    yield from specials


MM_FIELDS = ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
             "start_stack", "arg_start", "arg_end", "env_start", "env_end")


class Restore:
    def __init__(self, rst):
        self.rst = rst
        self.shm = {}   # (dev, ino) -> memfd of a shared anonymous object
        self.special_cur = {}
        self.files = {}  # path -> (the fd of its first mapping, its size)

    def prepare_tree(self):
        """One memfd per shared anonymous object, as large as its largest
        use; and this kernel's special mappings paired with the image's."""
        sizes = {}
        for p in self.rst.live:
            for v in p.records("VMA"):
                if v["kind"] == K.SHARED_ANON:
                    key = (v["dev"], v["ino"])
                    sizes[key] = max(sizes.get(key, 0), v["offset"] + v["end"] - v["start"])
        for key, size in sizes.items():
            fd = os.memfd_create("usercr-shared", 0)
            os.ftruncate(fd, size)
            self.shm[key] = self.rst.keep(fd)
        for p in self.rst.live:
            self.special_cur = self._specials(p)

    def park_size(self):
        """Room in the region for this kernel's special mappings while the old address space goes."""
        return max(sum(v["end"] - v["start"] for v in p.records("VMA") if v["kind"] == K.SPECIAL)
                   for p in self.rst.live)

    def busy(self):
        return [(v["start"], v["end"]) for p in self.rst.live for v in p.records("VMA")]

    def _specials(self, p):
        """Pairs each special mapping of the image with this kernel's."""
        arch, mine = self.rst.arch, self.rst.mine
        image_sp = {v["tail"]: v for v in p.records("VMA") if v["kind"] == K.SPECIAL}
        here = {m.name: m for m in mine if m.special and m.name not in arch.GATE_MAPPINGS}
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
        for data in p.records("SPECIAL_DATA"):
            vdso = here.get("[vdso]")
            if vdso and bytes(ffi.buffer(ffi.cast("char *", vdso.start), vdso.end - vdso.start)) != data["tail"]:
                raise UcrError("the vDSO of this kernel differs from the image's; restart on the kernel "
                               "that made the checkpoint")
        return {name: m.start for name, m in here.items()}

    def _open_file(self, rec):
        """An fd of its own for each mapping: two mappings of one open file
        that meet would be merged into one by the kernel. A file is checked
        once (its type, its size, no link followed); its other mappings
        reopen that first fd (a libc is mapped 4-5 times by every process)."""
        path = rec["tail"]
        writable = rec["flags"] & self.rst.arch.C["MAP_SHARED"] and rec["prot"] & self.rst.arch.C["PROT_WRITE"]
        flags = os.O_RDWR if writable else os.O_RDONLY
        first = self.files.get(path)
        try:
            if first is None:
                try:
                    size = os.stat(path).st_size
                except OSError as e:
                    raise UcrError(f"mapped file {path} is gone since the checkpoint: {e.strerror}") from None
                fd = self.rst.keep(trust.open_checked(path, stat.S_IFREG, flags, "mapped file"))
                self.files[path] = first = (fd, size)
            else:
                fd = self.rst.keep(os.open(f"/proc/self/fd/{first[0]}", flags))
        except OSError as e:
            raise UcrError(f"cannot open mapped file {path}: {e.strerror}") from None
        size = first[1]
        if size != rec["size"]:
            change = f"mapped file {path} changed size since the checkpoint ({rec['size']} -> {size} bytes)"
            covered = min(rec["size"], rec["offset"] + rec["end"] - rec["start"])
            if size < covered:
                raise UcrError(f"{change}: it no longer covers its mapping at 0x{rec['start']:x}")
            if self.rst.strict_files:
                raise UcrError(f"{change}; restart without --strict-files to accept that")
            self.rst.warn(f"warning: {change}")
        return fd

    def prepare(self, plan, p):
        rst, region = self.rst, self.rst.region
        vmas = p.records("VMA")
        park_at = [region.park_start]

        def vma(a, v):
            a.start, a.end, a.offset, a.prot, a.mmap_flags = v["start"], v["end"], v["offset"], v["prot"], v["flags"]
            a.kind, a.fd = v["kind"], -1
            if v["kind"] == K.FILE:
                a.fd = self._open_file(v)
            elif v["kind"] == K.SHARED_ANON:
                a.fd, a.mmap_flags = self.shm[(v["dev"], v["ino"])], rst.arch.C["MAP_SHARED"]
            elif v["kind"] == K.SYSV:
                a.fd = v["ino"]
            elif v["kind"] == K.SPECIAL:
                a.cur, a.park = self.special_cur[v["tail"]], park_at[0]
                park_at[0] += v["end"] - v["start"]
        plan.vmas, plan.nr_vmas = region.array("ucr_vma", vmas, vma)
        gates = rst.arch.GATE_MAPPINGS
        gate_start = min([m.start for m in rst.mine if m.name in gates] + [2**64])
        plan.unmap_end = max([m.end for m in rst.mine if m.start < gate_start] + [v["end"] for v in vmas])
        mm = p["MM"]
        for k, key in enumerate(MM_FIELDS):
            plan.mm[k] = mm[key]
        plan.auxv = region.put(mm["tail"]) if mm["tail"] else 0
        plan.auxv_size = len(mm["tail"])
