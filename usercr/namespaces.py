"""The namespaces of a checkpointed tree. Every process (and thread) of the
tree must be in its root's namespaces. Of those that differ from ckpt's own,
IPC (its objects: ipc.py), UTS (host and domain name) and network (the
loopback interface and its addresses) are saved, and rstr creates them anew
before it creates the root, which inherits them; the PID namespace is
rstr's --pidns. Any other kind of its own (mount, user, cgroup, time), and
any part of a network namespace that cannot be recreated yet, is refused at
checkpoint, so a tree is never silently moved into rstr's namespaces."""
import contextlib
import os
import struct

from . import netlink, proc
from . import records as R
from .arch import current as current_arch
from .errors import UcrError
from .native import check, lib

KINDS = ("pid", "ipc", "uts", "net", "mnt", "user", "cgroup", "time")
NAMES = {"pid": "PID", "ipc": "IPC", "uts": "UTS", "net": "network", "mnt": "mount", "user": "user",
         "cgroup": "cgroup", "time": "time"}
WHY_NOT = {"mnt": "its mount table is not saved yet", "user": "its uid and gid maps are not saved yet",
           "cgroup": "its cgroup root is not saved yet", "time": "its clock offsets are not saved yet"}
RECORDS = ("NAMESPACES", "UTS_NS", "NET_LINK", "NET_ADDR")
FLAG = {"ipc": "CLONE_NEWIPC", "uts": "CLONE_NEWUTS", "net": "CLONE_NEWNET"}  # the kinds rstr recreates

IFINFO = struct.Struct("=BxHiII")    # struct ifinfomsg
IFADDR = struct.Struct("=BBBBi")     # struct ifaddrmsg
RTMSG = struct.Struct("=BBBBBBBBI")  # struct rtmsg
U32 = struct.Struct("=I")
FOREVER = 0xFFFFFFFF                 # INFINITY_LIFE_TIME: a lifetime that never ends
SETTABLE_FLAGS = ("IFA_F_NODAD", "IFA_F_HOMEADDRESS", "IFA_F_MANAGETEMPADDR", "IFA_F_NOPREFIXROUTE",
                  "IFA_F_MCAUTOJOIN")


def ns_id(pid, kind, tid=None):
    """The namespace of that kind pid (or its thread tid) is in; None where
    it has none (a zombie) or this kernel lacks the kind."""
    try:
        return os.stat(proc.path(pid, "task", str(tid), "ns", kind) if tid else proc.path(pid, "ns", kind)).st_ino
    except FileNotFoundError:
        return None


def own(pid, kind):
    """Whether pid is in a namespace of that kind other than ckpt's."""
    return ns_id(pid, kind) != ns_id("self", kind)


@contextlib.contextmanager
def entered(pid, kind):
    """This thread inside pid's namespace of that kind for the block."""
    flag = current_arch().C[FLAG[kind]]
    mine = os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY)
    try:
        theirs = os.open(proc.path(pid, "ns", kind), os.O_RDONLY)
        try:
            check(lib.ucr_setns(theirs, flag), f"entering the {NAMES[kind]} namespace of process {pid}")
        finally:
            os.close(theirs)
        try:
            yield
        finally:
            check(lib.ucr_setns(mine, flag), f"going back to ckpt's {NAMES[kind]} namespace")
    finally:
        os.close(mine)


def _check_tree(root, pids):
    """The kinds of namespace the tree has of its own; raises for a task in
    other namespaces than the root's, and for a kind that cannot be saved."""
    kinds = [k for k in KINDS if ns_id("self", k) is not None]
    want = {k: ns_id(root, k) for k in kinds}
    for pid in pids:
        for tid in proc.threads(pid):
            who = f"process {pid}" if tid == pid else f"thread {tid} of process {pid}"
            for k in kinds:
                if ns_id(pid, k, tid) != want[k]:
                    raise UcrError(f"{who} is in another {NAMES[k]} namespace than the tree's root {root}; "
                                   "that cannot be checkpointed")
            for k in ("pid", "time"):
                if k in want and ns_id(pid, f"{k}_for_children", tid) not in (None, want[k]):
                    raise UcrError(f"{who} made a new {NAMES[k]} namespace for its future children; "
                                   "that cannot be checkpointed yet")
    ours = {k for k in kinds if want[k] != ns_id("self", k)}
    for k in kinds:
        if k in ours and k in WHY_NOT:
            raise UcrError(f"process {root} is in a {NAMES[k]} namespace of its own; that cannot be "
                           f"checkpointed yet ({WHY_NOT[k]})")
    return ours


def dump_records(root, pids):
    """NAMESPACES and the state of each kind the tree has of its own. pids:
    the live processes of the tree."""
    ours = _check_tree(root, pids)
    kinds = [k for k in FLAG if k in ours]
    out = [R.NAMESPACES.pack(tail=kinds)]
    if "uts" in ours:
        with entered(root, "uts"):
            names = [_read_sysctl(k) for k in ("hostname", "domainname")]
        out.append(R.UTS_NS.pack(tail=names))
    if "net" in ours:
        with entered(root, "net"):
            sock = _netlink()  # a socket stays in the namespace it was made in
        with sock:
            out += _net_records(sock, root)
    return out


def _read_sysctl(name):
    with open(f"/proc/sys/kernel/{name}") as f:
        return f.read().rstrip("\n")


def _write_sysctl(name, value):
    try:
        with open(f"/proc/sys/kernel/{name}", "w") as f:
            f.write(value)
    except OSError as e:
        raise UcrError(f"cannot set the {name} of the new UTS namespace: {e.strerror}") from None


# rtnetlink


def _netlink():
    import socket  # only for a tree with a network namespace of its own
    return netlink.open_socket(socket.NETLINK_ROUTE)


def _cstr(b):
    return b.split(b"\0", 1)[0].decode(errors="replace")


def _links(sock):
    """[(index, flags, mtu, name, kind)] of a namespace's interfaces."""
    out = []
    for _, msg in netlink.talk(sock, lib.RTM_GETLINK, lib.NLM_F_DUMP, IFINFO.pack(0, 0, 0, 0, 0),
                        "listing the network interfaces"):
        _, _, index, flags, _ = IFINFO.unpack_from(msg)
        a = netlink.attrs(msg[IFINFO.size:])
        kind = _cstr(netlink.attrs(a.get(lib.IFLA_LINKINFO, b"")).get(lib.IFLA_INFO_KIND, b""))
        out.append((index, flags, U32.unpack(a[lib.IFLA_MTU])[0], _cstr(a[lib.IFLA_IFNAME]), kind))
    return out


def _addrs(sock):
    """[(index, family, prefixlen, scope, flags, address, attrs)] of a namespace."""
    out = []
    for _, msg in netlink.talk(sock, lib.RTM_GETADDR, lib.NLM_F_DUMP, IFADDR.pack(0, 0, 0, 0, 0),
                        "listing the network addresses"):
        family, prefixlen, flags, scope, index = IFADDR.unpack_from(msg)
        a = netlink.attrs(msg[IFADDR.size:])
        if lib.IFA_FLAGS in a:
            flags = U32.unpack(a[lib.IFA_FLAGS])[0]
        address = a.get(lib.IFA_LOCAL, a.get(lib.IFA_ADDRESS))
        out.append((index, family, prefixlen, scope, flags, address, a))
    return out


def _text(address, prefixlen=None):
    import ipaddress  # only for messages about addresses
    ip = ipaddress.ip_address(bytes(address))
    return str(ip) if prefixlen is None else f"{ip}/{prefixlen}"


def _net_records(sock, root):
    """NET_LINK and NET_ADDR records, or a refusal naming what cannot be
    recreated: an interface other than loopback, an address with a peer, a
    label or a lifetime, a route not made by the kernel."""
    where = f"the network namespace of process {root}"
    out, names = [], {}
    for index, flags, mtu, name, kind in _links(sock):
        if not flags & lib.IFF_LOOPBACK:
            raise UcrError(f"{where} has interface {name}" + (f" ({kind})" if kind else "") +
                           "; only the loopback interface can be checkpointed yet")
        names[index] = name
        out.append(R.NET_LINK.pack(index=index, flags=flags, mtu=mtu, tail=name))
    for index, family, prefixlen, scope, flags, address, a in _addrs(sock):
        addr = _text(address, prefixlen)
        peer = a.get(lib.IFA_ADDRESS)
        if peer is not None and peer != address:
            raise UcrError(f"{where} has address {addr} with peer {_text(peer)}; "
                           "that cannot be checkpointed yet")
        if lib.IFA_LABEL in a and _cstr(a[lib.IFA_LABEL]) != names.get(index):
            raise UcrError(f"{where} has address {addr} with label {_cstr(a[lib.IFA_LABEL])}; "
                           "that cannot be checkpointed yet")
        if lib.IFA_CACHEINFO in a and struct.unpack_from("=II", a[lib.IFA_CACHEINFO]) != (FOREVER, FOREVER):
            raise UcrError(f"{where} has address {addr} with a limited lifetime; that cannot be checkpointed yet")
        out.append(R.NET_ADDR.pack(index=index, family=family, prefixlen=prefixlen, scope=scope, flags=flags,
                                   tail=address))
    for _, msg in netlink.talk(sock, lib.RTM_GETROUTE, lib.NLM_F_DUMP, RTMSG.pack(0, 0, 0, 0, 0, 0, 0, 0, 0),
                        "listing the routes"):
        family, dst_len, _, _, _, protocol, _, _, _ = RTMSG.unpack_from(msg)
        if protocol != lib.RTPROT_KERNEL:
            dst = netlink.attrs(msg[RTMSG.size:]).get(lib.RTA_DST)
            route = _text(dst, dst_len) if dst else "default"
            raise UcrError(f"{where} has route {route}, which the kernel did not make from an address; "
                           "routes cannot be checkpointed yet")
    return out


def _restore_net(links, addrs):
    """Sets up the loopback interface of the new network namespace as it
    was: MTU, up or down, exactly the saved addresses."""
    with _netlink() as sock:
        index = {}
        for now, _, _, name, _ in _links(sock):
            index[name] = now
        for rec in links:
            if rec["tail"] not in index:
                raise UcrError(f"the new network namespace has no interface {rec['tail']}")
            up = rec["flags"] & lib.IFF_UP
            body = IFINFO.pack(0, 0, index[rec["tail"]], up, lib.IFF_UP) + \
                netlink.attr(lib.IFLA_MTU, U32.pack(rec["mtu"]))
            netlink.talk(sock, lib.RTM_NEWLINK, lib.NLM_F_ACK, body, f"setting up interface {rec['tail']}")
        saved = {rec["index"]: rec["tail"] for rec in links}
        for r in addrs:
            if r["index"] not in saved or len(r["tail"]) not in (4, 16):
                raise UcrError("image corrupt: a network address of no saved interface, or of no known size")
        want = {(index[saved[r["index"]]], r["family"], r["prefixlen"], bytes(r["tail"])): r for r in addrs}
        settable = 0
        for name in SETTABLE_FLAGS:
            settable |= getattr(lib, name)
        for now, family, prefixlen, scope, flags, address, _ in _addrs(sock):
            if (now, family, prefixlen, bytes(address)) not in want:  # one the kernel added by itself
                netlink.talk(sock, lib.RTM_DELADDR, lib.NLM_F_ACK, IFADDR.pack(family, prefixlen, 0, scope, now) +
                             netlink.attr(lib.IFA_LOCAL, address), f"removing address {_text(address, prefixlen)}")
            else:
                del want[(now, family, prefixlen, bytes(address))]
        for (now, family, prefixlen, address), r in want.items():
            body = IFADDR.pack(family, prefixlen, 0, r["scope"], now) + netlink.attr(lib.IFA_LOCAL, address) + \
                netlink.attr(lib.IFA_ADDRESS, address) + netlink.attr(lib.IFA_FLAGS, U32.pack(r["flags"] & settable))
            netlink.talk(sock, lib.RTM_NEWADDR, lib.NLM_F_ACK | lib.NLM_F_CREATE | lib.NLM_F_EXCL, body,
                         f"adding address {_text(address, prefixlen)}")


def restore(records, sysv):
    """Moves rstr into new namespaces of the kinds the image names, set up as
    saved; the root it creates next inherits them. sysv: the image holds
    SysV IPC objects, which ipc.restore recreates afterwards."""
    got = {r.name: r for r in records}
    kinds = got["NAMESPACES"]["tail"] if "NAMESPACES" in got else []
    if sysv and "ipc" not in kinds:
        raise UcrError("image corrupt: SysV IPC objects but no IPC namespace of the tree's own")
    if not kinds:
        return
    flags = 0
    for k in kinds:
        if k not in FLAG:
            raise UcrError(f"image corrupt: unknown namespace kind {k!r}")
        flags |= current_arch().C[FLAG[k]]
    check(lib.ucr_unshare(flags), "creating namespaces (" + ", ".join(NAMES[k] for k in kinds) + ")")
    if "uts" in kinds:
        uts = got.get("UTS_NS")
        if uts is None or len(uts["tail"]) != 2:
            raise UcrError("image corrupt: no host and domain name of the tree's UTS namespace")
        hostname, domainname = uts["tail"]
        _write_sysctl("hostname", hostname)
        _write_sysctl("domainname", domainname)
    if "net" in kinds:
        _restore_net([r for r in records if r.name == "NET_LINK"], [r for r in records if r.name == "NET_ADDR"])
