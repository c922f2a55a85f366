"""ckptinfo: what an image holds, read with the same record definitions as rstr."""
import datetime
import ipaddress
import json
import os

from . import records as R
from .compress import Input
from .errors import UcrError
from .image import ImageReader
from .native import lib


def read_all(fd):
    """Every record of the image (page data summed, not kept), tail checked."""
    with Input(fd) as stream:
        reader = ImageReader(stream.fd, stream.prefix)
        recs = [reader.header()]
        while recs[-1].type != R.TAIL.type:
            recs.append(reader.next(skip_data=True))
        stream.finish()
    return recs


def _namespaces(recs):
    """The namespaces the tree had of its own, as rstr recreates them."""
    kinds = next((r["tail"] for r in recs if r.type == R.NAMESPACES.type), [])
    out = {"own": kinds}
    uts = next((r for r in recs if r.type == R.UTS_NS.type), None)
    if uts is not None:
        out["hostname"], out["domainname"] = uts["tail"]
    links = {r["index"]: dict(name=r["tail"], up=bool(r["flags"] & lib.IFF_UP), mtu=r["mtu"], addresses=[])
             for r in recs if r.type == R.NET_LINK.type}
    for r in recs:
        if r.type == R.NET_ADDR.type and r["index"] in links:
            links[r["index"]]["addresses"].append(f"{ipaddress.ip_address(r['tail'])}/{r['prefixlen']}")
    if links:
        out["interfaces"] = list(links.values())
    return out


SCHEMA = 1  # of ckptinfo --json / Image.to_json(): docs/api.md


def _public(fields):
    """A record's fields without its padding, bytes as hex."""
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items() if not k.startswith("pad")}


class _Item:
    """An object of an image (a process, thread, mapping, fd): its fields as attributes."""
    def __init__(self, **fields):
        self.__dict__.update(fields)

    def to_dict(self):
        return {k: [x.to_dict() for x in v] if isinstance(v, list) and v and isinstance(v[0], _Item) else v
                for k, v in self.__dict__.items()}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items() if k != 'registers')})"


class Process(_Item):
    """pid, ppid, pgid, sid, comm, executable, zombie, exit_status, stopped, pages; threads, mappings, files."""


class Thread(_Item):
    """pid (its process), tid, registers ({name: value})."""


class Mapping(_Item):
    """pid (its process), start, end, prot, flags, offset, kind, path."""


class File(_Item):
    """pid (its process), fd, kind, path, pos, flags, fd_flags, file_id (one per open file description)."""


class Image:
    """What an image holds, read whole and checked (usercr.open_image):
    header, processes (each with its threads, mappings and files), threads,
    mappings and files of them all, namespaces, errors, records."""

    def __init__(self, recs):
        self.records = recs
        hdr = recs[0]
        self.header = {
            "format_version": hdr["version"],
            "arch": R.ARCH_NAMES.get(hdr["arch_id"], hdr["arch_id"]),
            "kernel": f"{hdr['release']} {hdr['kversion']}",
            "machine": hdr["machine"],
            "page_size": hdr["page_size"],
            "time": datetime.datetime.fromtimestamp(hdr["time"], datetime.timezone.utc).isoformat(),
        }
        self.processes = self._processes(recs, _reg_names(hdr["arch_id"]))
        self.threads = [t for p in self.processes for t in p.threads]
        self.mappings = [m for p in self.processes for m in p.mappings]
        self.files = [f for p in self.processes for f in p.files]
        self.pages = sum(p.pages for p in self.processes)
        self.namespaces = _namespaces(recs)
        self.errors = [r["tail"] for r in recs if r.type == R.ERROR.type]
        self.parent = next((r["tail"] for r in recs if r.type == R.PARENT.type), None)
        self.inherited_pages = sum(r["nr_pages"] for r in recs if r.type == R.PAGES_PARENT.type)

    @classmethod
    def read(cls, fd):
        return cls(read_all(fd))

    @staticmethod
    def _processes(recs, reg_names):
        ids = iter(r for r in recs if r.type == R.PIDS.type)
        procs, by_pid, pages = [], {}, 0
        for r in recs:
            if r.type == R.TASK.type:
                i = next(ids)
                p = Process(pid=r["pid"], ppid=i["ppid"], pgid=i["pgid"], sid=i["sid"], comm=r["comm"],
                            executable=r["tail"], zombie=bool(r["zombie"]),
                            exit_status=r["exit_status"] if r["zombie"] else None, stopped=r["stopped"],
                            pages=0, threads=[], mappings=[], files=[])
                procs.append(p)
                by_pid[p.pid] = p
            elif r.type == R.THREAD.type:
                procs[-1].threads.append(Thread(pid=procs[-1].pid, tid=r["tid"], registers={}))
            elif r.name.endswith("_CPU") and procs and procs[-1].threads:
                procs[-1].threads[-1].registers = dict(zip(reg_names or [f"r{i}" for i in range(len(r["regs"]))],
                                                           r["regs"]))
            elif r.type == R.VMA.type:
                procs[-1].mappings.append(Mapping(pid=procs[-1].pid, start=r["start"], end=r["end"], prot=r["prot"],
                                                  flags=r["flags"], offset=r["offset"],
                                                  kind=R.VMA_KINDS.get(r["kind"]), path=r["tail"]))
            elif r.type == R.FILE.type:
                procs[-1].files.append(File(pid=procs[-1].pid, fd=r["fd"], kind=R.FD_KINDS.get(r["kind"]),
                                            path=r["tail"], pos=r["pos"], flags=r["flags"], fd_flags=r["fd_flags"],
                                            file_id=r["file_id"]))
            elif r.type == R.PAGES.type:
                pages += r["nr_pages"]
            elif r.type == R.PAGES_END.type:
                if r["pid"] in by_pid:
                    by_pid[r["pid"]].pages = pages
                pages = 0
        return procs

    def summary(self, records=False):
        """Everything as plain data: what ckptinfo --json prints (docs/api.md)."""
        page_size = self.header["page_size"]
        root = self.processes[0] if self.processes else None
        out = {"schema": SCHEMA, **self.header,
               "command": root.comm if root else None, "executable": root.executable if root else None,
               "mappings": len(self.mappings), "pages": self.pages, "memory_bytes": self.pages * page_size,
               "processes": [p.to_dict() for p in self.processes],
               "namespaces": self.namespaces, "errors": self.errors,
               "parent": self.parent, "inherited_pages": self.inherited_pages}
        if records:
            out["records"] = [{"offset": r.offset, "type": r.name, "length": r.length,
                               "fields": _public(r.fields) if r.type != R.PAGES.type else
                               {"vaddr": r["vaddr"], "nr_pages": r["nr_pages"]}} for r in self.records]
        return out

    def to_json(self):
        """What ckptinfo --json prints."""
        return json.dumps(self.summary(records=True), indent=2)


def chain_state(recs):
    """Whether the chain of parent images is there and unchanged, as rstr checks it."""
    from .incremental import chain
    first = next(r for r in recs if r.type == R.PARENT.type)
    try:
        links = chain(first.fields, "this image")
    except UcrError as e:
        return f"broken: {e}"
    for _, fd, _ in links:
        os.close(fd)
    return f"{len(links)} image(s), present and unchanged (size and checksum)"


def _reg_names(arch_id):
    from . import arch as arch_pkg
    try:
        return list(arch_pkg.by_id(arch_id).REG_NAMES)
    except UcrError:
        return None


def _namespace_line(ns):
    if not ns["own"]:
        return "namespaces: none of its own (restarts in rstr's)"
    parts = [", ".join(ns["own"])]
    if "hostname" in ns:
        parts.append(f"hostname {ns['hostname']!r}, domainname {ns['domainname']!r}")
    for link in ns.get("interfaces", []):
        parts.append(f"{link['name']} {'up' if link['up'] else 'down'} mtu {link['mtu']}" +
                     "".join(f" {a}" for a in link["addresses"]))
    return "namespaces of its own: " + "; ".join(parts)


def render(image, verbose=False, tree=False, regs=False, as_json=False, errors=False):
    if as_json:
        return image.to_json()
    s = image.summary()
    procs = image.processes
    out = [f"usercr image v{s['format_version']}, {s['arch']}, page size {s['page_size']}",
           f"kernel: {s['kernel']} ({s['machine']})",
           f"taken: {s['time']}",
           f"task: {s['command']} ({s['executable']}), {len(procs)} process(es), "
           f"{sum(len(p.threads) for p in procs)} thread(s)",
           f"memory: {s['mappings']} mappings, {s['pages']} pages saved ({s['memory_bytes'] / 2**20:.1f} MiB)",
           f"files: {len(image.files)} open descriptors",
           _namespace_line(s["namespaces"])]
    if s["parent"]:
        out.append(f"parent: {s['parent']} ({s['inherited_pages']} pages unchanged, read from the chain: "
                   f"{chain_state(image.records)})")
    if tree:
        out.append("task tree:")
        depth = {0: -1}
        for p in procs:
            depth[p.pid] = depth.get(p.ppid, -1) + 1
            what = "zombie" if p.zombie else f"{len(p.threads)} thread(s)"
            out.append(f"  {'  ' * depth[p.pid]}pid {p.pid} ppid {p.ppid} pgid {p.pgid} "
                       f"sid {p.sid} {p.comm} ({what})")
    if regs:
        for t in image.threads:
            out.append(f"registers of thread {t.tid} (process {t.pid}):")
            out += [f"  {k:9} 0x{v:016x}" for k, v in t.registers.items()]
    if verbose:
        out.append(f"{'offset':>12}  {'type':16} {'length':>10}")
        for r in image.records:
            extra = ""
            if r.type == R.VMA.type:
                extra = f"  {r['start']:x}-{r['end']:x} {r['tail']}"
            elif r.type == R.PAGES.type:
                extra = f"  {r['vaddr']:x} x{r['nr_pages']}"
            elif r.type == R.FILE.type:
                extra = f"  fd {r['fd']} {r['tail']}"
            out.append(f"{r.offset:>12}  {r.name:16} {r.length:>10}{extra}")
    if errors:
        out.append("error records:" if s["errors"] else "error records: none")
        out += [f"  {e}" for e in s["errors"]]
    return "\n".join(out)
