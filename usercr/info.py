"""ckptinfo: what an image holds, read with the same record definitions as rstr."""
import datetime
import ipaddress
import json

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


def _arch_regs(recs):
    from . import arch as arch_pkg
    hdr = recs[0]
    for rec in recs:
        if rec.name.endswith("_CPU"):
            try:
                names = arch_pkg.by_id(hdr["arch_id"]).REG_NAMES
            except UcrError:
                names = [f"r{i}" for i in range(len(rec["regs"]))]
            return dict(zip(names, rec["regs"]))
    return {}


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


def summary(recs):
    hdr = recs[0]
    tasks = [r for r in recs if r.type == R.TASK.type]
    pids = [dict(r.fields, comm=t["comm"], threads=t["nr_threads"], zombie=bool(t["zombie"]))
            for r, t in zip((r for r in recs if r.type == R.PIDS.type), tasks)]
    task = tasks[0] if tasks else None
    vmas = [r for r in recs if r.type == R.VMA.type]
    pages = sum(r["nr_pages"] for r in recs if r.type == R.PAGES.type)
    return {
        "arch": R.ARCH_NAMES.get(hdr["arch_id"], hdr["arch_id"]),
        "format_version": hdr["version"],
        "kernel": f"{hdr['release']} {hdr['kversion']}",
        "machine": hdr["machine"],
        "page_size": hdr["page_size"],
        "time": datetime.datetime.fromtimestamp(hdr["time"], datetime.timezone.utc).isoformat(),
        "tasks": pids,
        "command": task["comm"] if task else None,
        "executable": task["tail"] if task else None,
        "vmas": len(vmas),
        "pages": pages,
        "memory_bytes": pages * hdr["page_size"],
        "files": [{"fd": r["fd"], "kind": R.FD_KINDS.get(r["kind"]), "path": r["tail"], "pos": r["pos"]}
                  for r in recs if r.type == R.FILE.type],
        "errors": [r["tail"] for r in recs if r.type == R.ERROR.type],
        "namespaces": _namespaces(recs),
    }


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


def _jsonable(fields):
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()}


def render(recs, verbose=False, tree=False, regs=False, as_json=False, errors=False):
    s = summary(recs)
    if as_json:
        s["records"] = [{"offset": r.offset, "type": r.name, "length": r.length,
                         "fields": _jsonable(r.fields) if r.type != R.PAGES.type else
                         {"vaddr": r["vaddr"], "nr_pages": r["nr_pages"]}} for r in recs]
        s["registers"] = _arch_regs(recs)
        return json.dumps(s, indent=2)
    out = [f"usercr image v{s['format_version']}, {s['arch']}, page size {s['page_size']}",
           f"kernel: {s['kernel']} ({s['machine']})",
           f"taken: {s['time']}",
           f"task: {s['command']} ({s['executable']}), {len(s['tasks'])} process(es), "
           f"{sum(t['threads'] for t in s['tasks'])} thread(s)",
           f"memory: {s['vmas']} mappings, {s['pages']} pages saved ({s['memory_bytes'] / 2**20:.1f} MiB)",
           f"files: {len(s['files'])} open descriptors",
           _namespace_line(s["namespaces"])]
    if tree:
        out.append("task tree:")
        depth = {0: -1}
        for p in s["tasks"]:
            depth[p["pid"]] = depth.get(p["ppid"], -1) + 1
            what = "zombie" if p["zombie"] else f"{p['threads']} thread(s)"
            out.append(f"  {'  ' * depth[p['pid']]}pid {p['pid']} ppid {p['ppid']} pgid {p['pgid']} "
                       f"sid {p['sid']} {p['comm']} ({what})")
    if regs:
        out.append("registers:")
        out += [f"  {k:9} 0x{v:016x}" for k, v in _arch_regs(recs).items()]
    if verbose:
        out.append(f"{'offset':>12}  {'type':16} {'length':>10}")
        for r in recs:
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
