"""TCP and UDP sockets, IPv4 and IPv6 (fd kinds tcp and udp). One INET_SOCK
record per socket the tree holds, read from a pidfd_getfd copy: its names,
state and options (the less common ones that differ from a fresh socket's
in INET_OPT records); for a TCP connection its repair state (TCP_REPAIR:
sequence numbers, MSS, window scales, SACK, timestamps, window) and one
INET_QUEUE record per non-empty queue, peeked in repair mode so nothing is
consumed. ckpt without --kill takes each socket out of repair mode again
(TCP_REPAIR_OFF_NO_WP: no window probe) and puts back SO_REUSEADDR, which
leaving repair mode clears; with --kill they stay in repair mode, so that
closing them sends neither FIN nor RST.

rstr makes every socket before any task exists: listeners and bound sockets
bound (and listening) again with their options; connections in repair mode
(bind, sequence numbers, a connect that sends nothing, options, timestamp,
queues, window), then all out of repair mode, the bytes never sent sent now,
and the FIN of a half-closed connection sent again.

A connection to a peer outside the tree is refused unless ckpt has
--tcp-established; then it is kept from being reset while the tree is gone
by an nftables table (one per connection) that drops its packets in both
directions from before it is read until rstr has it back.

Refused in one line, the tree left running: a listener with connections
waiting to be accepted (and their client ends), a connection whose other end
was closed (an orphan in the kernel) or is being set up (SYN_SENT), a
closed connection, a UDP socket with datagrams queued, a connection with
urgent data not read yet, a socket with a filter attached, a UDP socket
that joined a multicast group."""
import errno
import fcntl
import os
import socket
import stat
import struct
import sys
import time

from . import netlink, proc
from . import records as R
from .errors import UcrError
from .native import ffi, lib

K = R.FD_KINDS
KINDS = (K.TCP, K.UDP)
OUTSIDE, FIN_SENT = 1, 2                   # INET_SOCK flags
TCP, SOL_SOCKET = socket.IPPROTO_TCP, socket.SOL_SOCKET
# TCP option kinds (RFC 9293, 7323, 2018), as TCP_REPAIR_OPTIONS takes them
TCPOPT_MSS, TCPOPT_WINDOW, TCPOPT_SACK_PERMITTED, TCPOPT_TIMESTAMP = 2, 3, 4, 8
WINDOW = struct.Struct("=5I")               # struct tcp_repair_window
REPAIR_OPT = struct.Struct("=II")           # struct tcp_repair_opt
INFO = struct.Struct("=8B6I")               # struct tcp_info up to tcpi_sacked
INFO_LEN = 232                              # enough for struct tcp_info of any kernel
U32, I32 = struct.Struct("=I"), struct.Struct("=i")
FIN_SENT_STATES = (lib.TCP_FIN_WAIT1, lib.TCP_FIN_WAIT2, lib.TCP_CLOSING, lib.TCP_LAST_ACK)
FIN_RCVD_STATES = (lib.TCP_CLOSE_WAIT, lib.TCP_LAST_ACK, lib.TCP_CLOSING)
CONNECTED = (lib.TCP_ESTABLISHED,) + FIN_SENT_STATES + (lib.TCP_CLOSE_WAIT,)
STATE_NAMES = {lib.TCP_SYN_SENT: "SYN_SENT", lib.TCP_SYN_RECV: "SYN_RECV", lib.TCP_CLOSE: "CLOSE",
               lib.TCP_TIME_WAIT: "TIME_WAIT", lib.TCP_LISTEN: "LISTEN", lib.TCP_ESTABLISHED: "ESTABLISHED",
               lib.TCP_FIN_WAIT1: "FIN_WAIT1", lib.TCP_FIN_WAIT2: "FIN_WAIT2", lib.TCP_CLOSE_WAIT: "CLOSE_WAIT",
               lib.TCP_LAST_ACK: "LAST_ACK", lib.TCP_CLOSING: "CLOSING"}
V4_MAPPED = bytes(10) + b"\xff\xff"
V4, V6, STREAM, DGRAM = socket.AF_INET, socket.AF_INET6, socket.SOCK_STREAM, socket.SOCK_DGRAM
IP, IPV6 = socket.IPPROTO_IP, socket.IPPROTO_IPV6
LINGER = struct.Struct("=ii")               # struct linger
# More options, saved (INET_OPT) when they differ from a fresh socket's and set again in this
# order (IP_TOS sets SO_PRIORITY too): (level, name, families, types, getsockopt buffer size).
INT = 4
EXTRA_OPTIONS_SPEC = (
    (IP, ("IP_TOS",), (V4, V6), (STREAM, DGRAM), INT),
    (SOL_SOCKET, ("SO_PRIORITY", "SO_MARK", "SO_RCVLOWAT"), (V4, V6), (STREAM, DGRAM), INT),
    (SOL_SOCKET, ("SO_LINGER",), (V4, V6), (STREAM, DGRAM), LINGER.size),
    (SOL_SOCKET, ("SO_BINDTODEVICE",), (V4, V6), (STREAM, DGRAM), "IFNAMSIZ"),
    (SOL_SOCKET, ("SO_RCVTIMEO_NEW", "SO_SNDTIMEO_NEW"), (V4, V6), (STREAM, DGRAM), 16),  # 2 x s64
    (SOL_SOCKET, ("SO_OOBINLINE",), (V4, V6), (STREAM,), INT),
    # Set in this order, the one of each family that reads non-zero says which flavour the program chose.
    (SOL_SOCKET, ("SO_TIMESTAMPING_OLD", "SO_TIMESTAMPING_NEW"), (V4, V6), (STREAM, DGRAM), 8),  # flags, bind_phc
    (SOL_SOCKET, ("SO_TIMESTAMP_OLD", "SO_TIMESTAMPNS_OLD", "SO_TIMESTAMP_NEW", "SO_TIMESTAMPNS_NEW"), (V4, V6),
     (STREAM, DGRAM), INT),
    (IP, ("IP_TTL", "IP_FREEBIND", "IP_TRANSPARENT", "IP_RECVERR"), (V4, V6), (STREAM, DGRAM), INT),
    (IP, ("IP_MULTICAST_TTL", "IP_MULTICAST_LOOP", "IP_MULTICAST_ALL", "IP_PKTINFO", "IP_RECVTOS",
          "IP_RECVTTL", "IP_MULTICAST_IF"), (V4, V6), (DGRAM,), INT),  # IP_MULTICAST_IF: a struct in_addr
    (IPV6, ("IPV6_TCLASS", "IPV6_UNICAST_HOPS", "IPV6_TRANSPARENT", "IPV6_RECVERR"), (V6,),
     (STREAM, DGRAM), INT),
    (IPV6, ("IPV6_MULTICAST_HOPS", "IPV6_MULTICAST_LOOP", "IPV6_MULTICAST_IF", "IPV6_RECVPKTINFO"), (V6,),
     (DGRAM,), INT),
    (TCP, ("TCP_CORK", "TCP_USER_TIMEOUT", "TCP_NOTSENT_LOWAT", "TCP_DEFER_ACCEPT", "TCP_FASTOPEN",
           "TCP_FASTOPEN_CONNECT", "TCP_LINGER2", "TCP_SYNCNT", "TCP_THIN_LINEAR_TIMEOUTS"), (V4, V6),
     (STREAM,), INT),
    (TCP, ("TCP_CONGESTION",), (V4, V6), (STREAM,), 16),  # TCP_CA_NAME_MAX (not in the UAPI headers)
)
EXTRA_OPTIONS = [(level, getattr(lib, n), fams, types, getattr(lib, size) if isinstance(size, str) else size)
                 for level, names, fams, types, size in EXTRA_OPTIONS_SPEC for n in names]
OPTION_NAMES = {(level, getattr(lib, n)): n for level, names, *_ in EXTRA_OPTIONS_SPEC for n in names}
GROUP_FILTER = struct.Struct("@I0P128sII0P128s")  # struct group_filter with one source slot
SOCKADDR_IN, SOCKADDR_IN6 = struct.Struct("=HH4s8x"), struct.Struct("=HHI16sI")
SETTLE_ATTEMPTS, SETTLE_WAIT = 20, 0.01
NFT_PREFIX = "usercr_tcp_"
NFT_PRIORITY = -300                         # before conntrack: a dropped packet is not even tracked

# -- addresses -------------------------------------------------------------

def _pack_addr(family, addr):
    if family == socket.AF_INET:
        return V4_MAPPED + socket.inet_aton(addr)
    return socket.inet_pton(socket.AF_INET6, addr)


def _unpack_addr(family, raw):
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def _show(family, raw, port):
    a = socket.inet_ntop(socket.AF_INET, raw[12:]) if raw[:12] == V4_MAPPED else \
        "[" + socket.inet_ntop(socket.AF_INET6, raw) + "]"
    return f"{a}:{port}"


def _copy(pid, fd, what):
    copy = lib.ucr_pidfd_getfd(pid, fd)
    if copy < 0:
        raise UcrError(f"cannot reach {what}: {os.strerror(-copy)}")
    return socket.socket(fileno=copy)


# -- checkpoint ------------------------------------------------------------

def _probe(pid, fd):
    """Names, type and TCP state of the socket at fd of pid, or None when it is not TCP or UDP."""
    s = _copy(pid, fd, f"the socket at fd {fd} of process {pid}")
    with s:
        family, type_ = s.family, s.type
        proto = s.getsockopt(SOL_SOCKET, socket.SO_PROTOCOL)
        if family not in (socket.AF_INET, socket.AF_INET6) or \
                (type_, proto) not in ((socket.SOCK_STREAM, TCP), (socket.SOCK_DGRAM, socket.IPPROTO_UDP)):
            return None
        local = s.getsockname()
        try:
            remote = s.getpeername()
        except OSError:
            remote = None
        d = dict(family=family, type=type_, local=_pack_addr(family, local[0]), lport=local[1],
                 remote=_pack_addr(family, remote[0]) if remote else bytes(16), rport=remote[1] if remote else 0)
        if type_ == socket.SOCK_STREAM:
            info = INFO.unpack_from(s.getsockopt(TCP, lib.TCP_INFO, INFO_LEN))
            d.update(state=info[0], accept_queue=info[12], backlog=info[13])
        else:
            d.update(state=lib.TCP_ESTABLISHED if remote else lib.TCP_CLOSE)
        return d


def scan(ctx):
    """Once per checkpoint, after unix.scan listed the socket inodes the
    tree holds: the TCP and UDP ones among them, and who is whose peer."""
    if "inet" in ctx.tree:
        return
    unix = ctx.tree["unix"]
    socks = {}
    for ino, (pid, fd) in unix["held"].items():
        if ino not in unix["diag"]:
            d = _probe(pid, fd)
            if d is not None:
                socks[ino] = d
    by_name = {(d["type"], d["local"], d["lport"], d["remote"], d["rport"]): ino for ino, d in socks.items()}
    for ino, d in socks.items():
        d["peer"] = by_name.get((d["type"], d["remote"], d["rport"], d["local"], d["lport"]), 0) \
            if d["rport"] else 0
    ctx.tree["inet"] = dict(socks=socks, held={}, repaired=[], locks=[],
                            established=ctx.tree.get("tcp_established", False))


def classify(ctx, st, target, info):
    if stat.S_ISSOCK(st.st_mode):
        d = ctx.tree["inet"]["socks"].get(st.st_ino)
        if d is not None:
            return K.TCP if d["type"] == socket.SOCK_STREAM else K.UDP
    return None


def _where(fd, pid, d):
    kind = "tcp" if d["type"] == socket.SOCK_STREAM else "udp"
    v = "6" if d["family"] == socket.AF_INET6 else ""
    names = _show(d["family"], d["local"], d["lport"])
    if d["rport"]:
        names += " -> " + _show(d["family"], d["remote"], d["rport"])
    return f"fd {fd} of process {pid} is a {kind}{v} socket ({names})"


def _listener_of(socks, d):
    """The tree's listener that the remote name of d is, or None."""
    any_addr = _pack_addr(d["family"], "0.0.0.0" if d["family"] == socket.AF_INET else "::")
    for o in socks.values():
        if o["type"] == socket.SOCK_STREAM and o["state"] == lib.TCP_LISTEN and o["lport"] == d["rport"] and \
                o["local"] in (d["remote"], any_addr, bytes(16)):
            return o
    return None


def note(ctx, fd, st, info, fields):
    state = ctx.tree["inet"]
    socks, pid = state["socks"], ctx.pid
    d = socks[st.st_ino]
    where = _where(fd, pid, d)
    if d["type"] == socket.SOCK_DGRAM:
        state["held"].setdefault(st.st_ino, (pid, fd))
        return
    tcp_state = d["state"]
    if tcp_state == lib.TCP_LISTEN and d["accept_queue"]:
        raise UcrError(f"{where} listening with {d['accept_queue']} connection(s) waiting to be accepted; "
                       "that cannot be checkpointed yet")
    if tcp_state in CONNECTED and not d["peer"]:
        listener = _listener_of(socks, d)
        if listener is not None:
            why = "waits to be accepted by a listener of the tree" if listener["accept_queue"] else \
                "was closed at the other end by the tree"
            raise UcrError(f"{where} whose connection {why}; that cannot be checkpointed yet")
        if fd < 3 and not state["established"]:  # a standard stream from outside: follows rstr's own
            fields["kind"] = K.SOCKET
            return
        if not state["established"]:
            raise UcrError(f"{where} connected to a peer outside the tree; that cannot be checkpointed "
                           "without --tcp-established")
        if tcp_state != lib.TCP_ESTABLISHED:
            raise UcrError(f"{where} in state {STATE_NAMES[tcp_state]} with a peer outside the tree; "
                           "that cannot be checkpointed yet")
    elif tcp_state not in CONNECTED + (lib.TCP_LISTEN, lib.TCP_CLOSE):
        raise UcrError(f"{where} in state {STATE_NAMES.get(tcp_state, tcp_state)}; that cannot be "
                       "checkpointed yet")
    state["held"].setdefault(st.st_ino, (pid, fd))


def _joined_groups(pid):
    """[(level, ifindex, sockaddr)] of every multicast group joined on an
    interface of pid's network namespace (some socket's, or the kernel's own)."""
    groups = []
    try:
        text = proc.read_text(pid, "net/igmp")
    except FileNotFoundError:
        text = ""
    index = None
    for line in text.splitlines()[1:]:
        if line[:1].isdigit():  # "Idx Device : Count Querier", then one tab-indented line per group
            index = int(line.split()[0])
        elif line.strip() and index is not None:
            addr = int(line.split()[0], 16).to_bytes(4, sys.byteorder)  # the __be32 printed as a number
            groups.append((IP, index, SOCKADDR_IN.pack(socket.AF_INET, 0, addr)))
    try:
        text = proc.read_text(pid, "net/igmp6")
    except FileNotFoundError:
        text = ""
    for line in text.splitlines():
        index, _, group = line.split()[:3]
        groups.append((IPV6, int(index), SOCKADDR_IN6.pack(socket.AF_INET6, 0, 0, bytes.fromhex(group), 0)))
    return groups


def _memberships(s, d, groups, what):
    """The groups of `groups` that socket s joined: MCAST_MSFILTER asked
    group by group (no getsockopt lists them)."""
    buf, size = ffi.new("char[]", GROUP_FILTER.size), ffi.new("uint32_t *")
    joined = []
    for level, index, addr in groups:
        if level == IPV6 and d["family"] != socket.AF_INET6:
            continue
        ffi.memmove(buf, GROUP_FILTER.pack(index, addr, 0, 0, b""), GROUP_FILTER.size)
        size[0] = GROUP_FILTER.size
        r = lib.ucr_getsockopt(s.fileno(), level, lib.MCAST_MSFILTER, buf, size)
        if r == 0:
            joined.append(socket.inet_ntop(socket.AF_INET, addr[4:8]) if level == IP else
                          socket.inet_ntop(socket.AF_INET6, addr[8:24]))
        elif r != -errno.EADDRNOTAVAIL:
            raise UcrError(f"{what}: cannot tell whether it joined multicast groups: {os.strerror(-r)}")
    return joined


def _has_filter(s):
    """Whether a socket filter is attached: SO_GET_FILTER with length 0
    says how many classic blocks (EACCES: an eBPF program)."""
    size = ffi.new("uint32_t *", 0)
    r = lib.ucr_getsockopt(s.fileno(), SOL_SOCKET, lib.SO_GET_FILTER, ffi.NULL, size)
    return r == -errno.EACCES or (r == 0 and size[0] > 0)


def _refuse_unsaved(s, d, what, groups):
    """State of a socket that is not saved: refused, as losing it would be silent."""
    if _has_filter(s):
        raise UcrError(f"{what} has a socket filter attached (SO_ATTACH_FILTER/SO_ATTACH_BPF); that cannot be "
                       "checkpointed yet")
    if d["type"] == socket.SOCK_DGRAM:
        joined = _memberships(s, d, groups, what)
        if joined:
            raise UcrError(f"{what} is a member of multicast group(s) {', '.join(joined)}; that cannot be "
                           "checkpointed yet")


def _options(s, d, defaults):
    opt = lambda level, name: s.getsockopt(level, name)  # noqa: E731
    o = dict(reuseaddr=opt(SOL_SOCKET, socket.SO_REUSEADDR), reuseport=opt(SOL_SOCKET, lib.SO_REUSEPORT),
             keepalive=opt(SOL_SOCKET, socket.SO_KEEPALIVE),
             v6only=opt(socket.IPPROTO_IPV6, lib.IPV6_V6ONLY) if d["family"] == socket.AF_INET6 else 0)
    # The kernel gives no sign of a buffer size the program set; TCP autotuning only ever grows them.
    # So a size smaller than a fresh socket's default, or any other than the default for UDP, counts as set.
    if (d["family"], d["type"]) not in defaults:
        with socket.socket(d["family"], d["type"]) as fresh:
            defaults[d["family"], d["type"]] = {n: fresh.getsockopt(SOL_SOCKET, n)
                                                for n in (socket.SO_SNDBUF, socket.SO_RCVBUF)}
    for name, key in ((socket.SO_SNDBUF, "sndbuf"), (socket.SO_RCVBUF, "rcvbuf")):
        v, default = opt(SOL_SOCKET, name), defaults[d["family"], d["type"]][name]
        o[key] = v if v < default or (v != default and d["type"] == socket.SOCK_DGRAM) else 0
        o["cur_" + key] = v
    if d["type"] == socket.SOCK_STREAM:
        o.update(nodelay=opt(TCP, lib.TCP_NODELAY), keepidle=opt(TCP, lib.TCP_KEEPIDLE),
                 keepintvl=opt(TCP, lib.TCP_KEEPINTVL), keepcnt=opt(TCP, lib.TCP_KEEPCNT))
    return o


def _extra_options(s, d, defaults):
    """[(level, name, value)] of EXTRA_OPTIONS that differ from a fresh socket's."""
    key = ("extra", d["family"], d["type"])
    if key not in defaults:
        with socket.socket(d["family"], d["type"]) as fresh:
            defaults[key] = [(level, name, size, fresh.getsockopt(level, name, size))
                             for level, name, fams, types, size in EXTRA_OPTIONS
                             if d["family"] in fams and d["type"] in types]
    out = []
    for level, name, size, default in defaults[key]:
        v = s.getsockopt(level, name, size)
        if v != default:
            out.append((level, name, v))
    return out


def _urgent(s):
    """Whether urgent (out-of-band) data waits to be read, or was announced
    and has not come yet: a mark repair mode cannot set again. Peeked with
    SO_OOBINLINE off for the moment (with it on, the byte is also inline)."""
    inline = s.getsockopt(SOL_SOCKET, lib.SO_OOBINLINE)
    if inline:
        s.setsockopt(SOL_SOCKET, lib.SO_OOBINLINE, 0)
    try:
        return s.recv(1, socket.MSG_OOB | socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:  # EINVAL: no urgent data, or it was read
        return False
    finally:
        if inline:
            s.setsockopt(SOL_SOCKET, lib.SO_OOBINLINE, inline)


def _peek(s, size, what, fin=False):
    """A queue's bytes (repair mode selects which queue); the size the
    kernel counts for a send queue includes a FIN not yet acknowledged."""
    if not size:
        return b""
    try:
        data = s.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        data = b""
    if len(data) != size and not (fin and len(data) == size - 1):
        raise UcrError(f"{what}: peeked {len(data)} bytes of a queue of {size}")
    return data


def _repair_state(s, d, what):
    """The repair state of a connection, with the socket in repair mode.
    Its state is read again: a FIN may have come since the scan."""
    info = s.getsockopt(TCP, lib.TCP_INFO, INFO_LEN)
    state = info[0]
    if state not in CONNECTED or (state != lib.TCP_ESTABLISHED and not d["peer"]):
        raise UcrError(f"{what} went to state {STATE_NAMES.get(state, state)} while frozen; that cannot be "
                       "checkpointed yet")
    r, queues = dict(state=state), {}
    for q, ioctl in ((lib.TCP_RECV_QUEUE, lib.SIOCINQ), (lib.TCP_SEND_QUEUE, lib.SIOCOUTQ)):
        s.setsockopt(TCP, lib.TCP_REPAIR_QUEUE, q)
        seq = s.getsockopt(TCP, lib.TCP_QUEUE_SEQ) & 0xFFFFFFFF
        size = I32.unpack(fcntl.ioctl(s.fileno(), ioctl, bytes(4)))[0]
        queues[q] = _peek(s, size, what, q == lib.TCP_SEND_QUEUE and state in FIN_SENT_STATES)
        r["rcv_seq" if q == lib.TCP_RECV_QUEUE else "snd_seq"] = seq
    s.setsockopt(TCP, lib.TCP_REPAIR_QUEUE, lib.TCP_NO_QUEUE)
    unsent = I32.unpack(fcntl.ioctl(s.fileno(), lib.SIOCOUTQNSD, bytes(4)))[0]
    win = WINDOW.unpack(s.getsockopt(TCP, lib.TCP_REPAIR_WINDOW, WINDOW.size))
    fin_sent = state in FIN_SENT_STATES
    if fin_sent:  # the FIN takes one sequence number after the data; rstr sends it again
        r["snd_seq"] = (r["snd_seq"] - 1) & 0xFFFFFFFF
        unsent = max(unsent - 1, 0)
    if state in FIN_RCVD_STATES:  # and the peer sends it again after the restart
        r["rcv_seq"] = (r["rcv_seq"] - 1) & 0xFFFFFFFF
    r.update(mss=s.getsockopt(TCP, lib.TCP_MAXSEG), timestamp=s.getsockopt(TCP, lib.TCP_TIMESTAMP) & 0xFFFFFFFF,
             tcp_options=info[5], snd_wscale=info[6] & 0xF, rcv_wscale=info[6] >> 4,
             unsent=min(unsent, len(queues[lib.TCP_SEND_QUEUE])), snd_wl1=win[0], snd_wnd=win[1],
             max_window=win[2], rcv_wnd=win[3], rcv_wup=win[4])
    return r, queues, fin_sent


def tree_records(tree):
    state = tree.get("inet")
    if not state or not state["held"]:
        return []
    socks, defaults = state["socks"], {}  # (family, type) -> a fresh socket's buffer sizes
    if any(socks[i]["rport"] and not socks[i]["peer"] and socks[i]["type"] == socket.SOCK_STREAM
           for i in state["held"]):
        for ino in state["held"]:
            d = socks[ino]
            if d["type"] == socket.SOCK_STREAM and d["rport"] and not d["peer"]:
                _lock(state, d)
    got, extra = {}, {}  # ino -> (fields, queues); ino -> [(level, name, value)]
    groups = None
    for ino, (pid, fd) in state["held"].items():
        d = socks[ino]
        what = _where(fd, pid, d)
        s = _copy(pid, fd, what)
        with s:
            if groups is None:
                groups = _joined_groups(pid)
            _refuse_unsaved(s, d, what, groups)
            fields = dict(ino=ino, peer=d["peer"], family=d["family"], type=d["type"], state=d["state"],
                          src_port=d["lport"], dst_port=d["rport"], **_options(s, d, defaults))
            extra[ino] = _extra_options(s, d, defaults)
            queues = {}
            if d["type"] == socket.SOCK_DGRAM:
                try:
                    s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    raise UcrError(f"{what} has datagrams queued; that cannot be checkpointed yet")
                except BlockingIOError:
                    pass
            elif d["state"] == lib.TCP_LISTEN:
                fields["backlog"] = d["backlog"]
            elif d["state"] == lib.TCP_CLOSE:
                try:  # a socket never connected says ENOTCONN; one whose connection ended, EOF or its error
                    s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    closed = True
                except OSError as e:
                    closed = e.errno != errno.ENOTCONN
                if closed:
                    raise UcrError(f"{what} whose connection is closed; that cannot be checkpointed yet")
            else:
                if _urgent(s):
                    raise UcrError(f"{what} has urgent (out-of-band) data to be read; that cannot be "
                                   "checkpointed yet")
                state["repaired"].append((pid, fd, fields["reuseaddr"]))
                try:
                    s.setsockopt(TCP, lib.TCP_REPAIR, 1)
                except PermissionError:
                    raise UcrError(f"{what}: TCP repair mode needs CAP_NET_ADMIN") from None
                queues = _read_connection(s, d, what, fields)
        got[ino] = fields, queues
    for ino in got:
        peer = got[ino][0]["peer"]
        if peer and ino < peer and "snd_seq" in got[ino][0]:
            _settle(state, got, ino, peer)
    out = []
    for ino, (fields, queues) in got.items():
        d = socks[ino]
        out.append(R.INET_SOCK.pack(tail=d["local"] + d["remote"], **fields))
        out += [R.INET_OPT.pack(ino=ino, level=level, name=name, tail=v) for level, name, v in extra[ino]]
        for q, data in sorted(queues.items()):
            if data:
                out.append(R.INET_QUEUE.pack(ino=ino, queue=q, tail=data))
    return out


def _read_connection(s, d, what, fields):
    r, queues, fin_sent = _repair_state(s, d, what)
    fields.update(r)
    fields["flags"] = (FIN_SENT if fin_sent else 0) | (0 if d["peer"] else OUTSIDE)
    return queues


def _before_eq(a, b):
    return ((b - a) & 0xFFFFFFFF) < 1 << 31


def _consistent(got, sender, receiver):
    """What the receiver has got lies between what the sender counts as
    acknowledged and what it has sent: else a segment moved between reading
    the one and the other."""
    f, queues = got[sender]
    snd_una = f["snd_seq"] - len(queues.get(lib.TCP_SEND_QUEUE, b""))
    snd_nxt = f["snd_seq"] - f["unsent"]
    rcv_nxt = got[receiver][0]["rcv_seq"]
    return _before_eq(snd_una & 0xFFFFFFFF, rcv_nxt) and _before_eq(rcv_nxt, snd_nxt & 0xFFFFFFFF)


def _settle(state, got, a, b):
    """Both ends of a connection in the tree are read again until they agree:
    the frozen tree's kernel still moves segments between them (what was in
    flight, or what a window update that peeking caused lets through)."""
    for _ in range(SETTLE_ATTEMPTS):
        if _consistent(got, a, b) and _consistent(got, b, a):
            return
        time.sleep(SETTLE_WAIT)
        for ino in (a, b):
            pid, fd = state["held"][ino]
            d = state["socks"][ino]
            with _copy(pid, fd, _where(fd, pid, d)) as s:
                got[ino] = got[ino][0], _read_connection(s, d, _where(fd, pid, d), got[ino][0])
    pid, fd = state["held"][a]
    raise UcrError(f"{_where(fd, pid, state['socks'][a])}: the connection did not settle while frozen; "
                   "checkpoint again")


def release(shared, killed):
    """After the checkpoint: without a kill, the sockets leave repair mode
    as they were and the connections to outside peers are let through
    again; killed, repair mode makes their close silent and the nftables
    tables stay until rstr has the connections back."""
    state = shared.get("inet")
    if not state or killed:
        return
    repaired, state["repaired"] = state["repaired"], []  # once: pre-copy releases before the image is complete
    locks, state["locks"] = state["locks"], []
    errors = []
    for pid, fd, reuseaddr in repaired:
        try:
            s = _copy(pid, fd, f"the socket at fd {fd} of process {pid}")
            with s:
                s.setsockopt(TCP, lib.TCP_REPAIR, lib.TCP_REPAIR_OFF_NO_WP)
                s.setsockopt(SOL_SOCKET, socket.SO_REUSEADDR, reuseaddr)  # leaving repair mode cleared it
        except (OSError, UcrError) as e:
            errors.append(e)
    for table in locks:
        _unlock(table)
    if errors:
        raise UcrError(f"taking a socket out of TCP repair mode: {errors[0]}")


# -- the network lock: nftables ---------------------------------------------

def _nft(script, what):
    import shutil, subprocess  # here, as hashlib below: only --tcp-established needs them, not every ckpt
    nft = shutil.which("nft")
    if nft is None:
        raise UcrError(f"{what} needs nftables' nft command (Debian package nftables)")
    p = subprocess.run([nft, "-f", "-"], input=script.encode(), capture_output=True)
    if p.returncode:
        msg = p.stderr.decode(errors="replace").strip().splitlines()
        raise UcrError(f"{what}: nft: {msg[0] if msg else 'failed'}")


def table_name(family, local, lport, remote, rport):
    import hashlib
    digest = hashlib.sha1(struct.pack("=I", family) + local + remote).hexdigest()[:12]
    return f"{NFT_PREFIX}{lport}_{rport}_{digest}"


def _rules(family, local, lport, remote, rport):
    """nft rules dropping the connection's packets coming in and going out
    (an IPv6 socket talking to an IPv4-mapped address sends IPv4)."""
    if local[:12] == V4_MAPPED:
        ip, la, ra = "ip", socket.inet_ntop(socket.AF_INET, local[12:]), socket.inet_ntop(socket.AF_INET, remote[12:])
    else:
        ip, la, ra = "ip6", socket.inet_ntop(socket.AF_INET6, local), socket.inet_ntop(socket.AF_INET6, remote)
    return (f"{ip} saddr {ra} {ip} daddr {la} tcp sport {rport} tcp dport {lport} drop",
            f"{ip} saddr {la} {ip} daddr {ra} tcp sport {lport} tcp dport {rport} drop")


def _lock(state, d):
    name = table_name(d["family"], d["local"], d["lport"], d["remote"], d["rport"])
    rin, rout = _rules(d["family"], d["local"], d["lport"], d["remote"], d["rport"])
    state["locks"].append(name)
    _nft(f"table inet {name} {{\n"
         f" chain input {{ type filter hook input priority {NFT_PRIORITY}; {rin}; }}\n"
         f" chain output {{ type filter hook output priority {NFT_PRIORITY}; {rout}; }}\n}}\n",
         "keeping the connection " + _show(d["family"], d["local"], d["lport"]) + " -> " +
         _show(d["family"], d["remote"], d["rport"]) + " from being reset")


def _unlock(name):
    _nft(f"delete table inet {name}\n", f"removing nftables table {name}")


def check_repair():
    """usercr check: TCP connections need repair mode."""
    with socket.socket() as s:
        try:
            s.setsockopt(TCP, lib.TCP_REPAIR, 1)
        except OSError as e:
            return False, f"TCP_REPAIR: {e.strerror} (needs CAP_NET_ADMIN): TCP connections cannot be saved"
    return True, ""


def check_nft():
    """usercr check: ckpt --tcp-established drops a connection's packets with nftables."""
    import shutil
    if shutil.which("nft") is None:
        return False, "no nft command (Debian package nftables): ckpt --tcp-established is refused"
    return True, ""


# -- restart ---------------------------------------------------------------

def _describe(r):
    local, remote = r["tail"][:16], r["tail"][16:32]
    names = _show(r["family"], local, r["src_port"])
    if r["dst_port"]:
        names += " -> " + _show(r["family"], remote, r["dst_port"])
    return f"{'tcp' if r['type'] == socket.SOCK_STREAM else 'udp'} socket {names}"


class Restore(netlink.KeptSockets):
    RECORD = "INET_SOCK"

    def __init__(self, rst):
        self.rst = rst
        self.saved = {rec["ino"]: rec for rec in rst.img.tree_records("INET_SOCK")}
        self.queues = {(rec["ino"], rec["queue"]): rec["tail"] for rec in rst.img.tree_records("INET_QUEUE")}
        self.extra = {}
        for rec in rst.img.tree_records("INET_OPT"):
            self.extra.setdefault(rec["ino"], []).append((rec["level"], rec["name"], rec["tail"]))
        self.kept = None   # ino -> kept fd

    def _build(self):
        """Listeners and bound sockets first (a connection accepted from a
        listener has its port), then every connection in repair mode; then
        they all leave it together, so a window probe or FIN finds its peer."""
        socks = {}
        order = sorted(self.saved, key=lambda i: self.saved[i]["state"] not in (lib.TCP_LISTEN, lib.TCP_CLOSE))
        current = None
        try:
            for ino in order:
                current = self.saved[ino]
                socks[ino] = self._make(current)
            repaired = [i for i in order if self._connection(self.saved[i])]
            for ino in repaired:
                r = current = self.saved[ino]
                if r["flags"] & OUTSIDE:
                    _unlock(table_name(r["family"], *self._names(r)))
                socks[ino].setsockopt(TCP, lib.TCP_REPAIR, 0)  # TCP_REPAIR_OFF: with a window probe
                # Leaving repair mode clears SO_REUSEADDR; without it, this connection's TIME_WAIT
                # would keep its listener from being bound again at the next restart.
                socks[ino].setsockopt(SOL_SOCKET, socket.SO_REUSEADDR, r["reuseaddr"])
            for ino in repaired:
                r = current = self.saved[ino]
                data = self.queues.get((ino, lib.TCP_SEND_QUEUE), b"")
                if r["unsent"]:
                    socks[ino].sendall(data[len(data) - r["unsent"]:])
                if r["flags"] & FIN_SENT:
                    socks[ino].shutdown(socket.SHUT_WR)
                for force, key in ((lib.SO_SNDBUFFORCE, "sndbuf"), (lib.SO_RCVBUFFORCE, "rcvbuf")):
                    if r[key]:
                        socks[ino].setsockopt(SOL_SOCKET, force, r[key] // 2)
            for ino in list(socks):
                self.kept[ino] = self.rst.keep(socks.pop(ino).detach())
        except OSError as e:
            raise UcrError(f"recreating the {_describe(current)}: {e.strerror or e}") from None
        finally:
            for s in socks.values():
                s.close()

    @staticmethod
    def _names(r):
        return r["tail"][:16], r["src_port"], r["tail"][16:32], r["dst_port"]

    @staticmethod
    def _connection(r):
        return r["type"] == socket.SOCK_STREAM and r["state"] in CONNECTED

    def _make(self, r):
        family = r["family"]
        local, lport, remote, rport = self._names(r)
        s = socket.socket(family, r["type"])
        s.setblocking(False)  # rstr never waits on a socket; the FILE record sets the program's flags
        try:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, lib.IPV6_V6ONLY, r["v6only"])
            s.setsockopt(SOL_SOCKET, socket.SO_REUSEADDR, r["reuseaddr"])
            s.setsockopt(SOL_SOCKET, lib.SO_REUSEPORT, r["reuseport"])
            s.setsockopt(SOL_SOCKET, socket.SO_KEEPALIVE, r["keepalive"])
            if r["sndbuf"]:
                s.setsockopt(SOL_SOCKET, lib.SO_SNDBUFFORCE, r["sndbuf"] // 2)  # the kernel doubles it
            if r["rcvbuf"]:
                s.setsockopt(SOL_SOCKET, lib.SO_RCVBUFFORCE, r["rcvbuf"] // 2)
            if r["type"] == socket.SOCK_STREAM:
                s.setsockopt(TCP, lib.TCP_NODELAY, r["nodelay"])
                s.setsockopt(TCP, lib.TCP_KEEPIDLE, r["keepidle"])
                s.setsockopt(TCP, lib.TCP_KEEPINTVL, r["keepintvl"])
                s.setsockopt(TCP, lib.TCP_KEEPCNT, r["keepcnt"])
            for level, name, v in self.extra.get(r["ino"], ()):
                try:
                    if (level, name) == (SOL_SOCKET, lib.SO_LINGER) and v[:4] == bytes(4) and v[4:] != bytes(4):
                        s.setsockopt(level, name, LINGER.pack(1, LINGER.unpack(v)[1]))  # a time set, then off
                    s.setsockopt(level, name, v)
                except OSError as e:
                    raise OSError(e.errno, f"{OPTION_NAMES.get((level, name), (level, name))}: {e.strerror}") from None
            if self._connection(r):
                self._repair(s, r)
                return s
            if lport:
                s.bind((_unpack_addr(family, local), lport))
            if r["state"] == lib.TCP_LISTEN:
                s.listen(r["backlog"])
            elif r["type"] == socket.SOCK_DGRAM and rport:
                s.connect((_unpack_addr(family, remote), rport))
            return s
        except BaseException:
            s.close()
            raise

    def _repair(self, s, r):
        family, ino = r["family"], r["ino"]
        local, lport, remote, rport = self._names(r)
        recvq = self.queues.get((ino, lib.TCP_RECV_QUEUE), b"")
        sendq = self.queues.get((ino, lib.TCP_SEND_QUEUE), b"")
        sent = sendq[:len(sendq) - r["unsent"]]
        # Queues that grew with autotuned buffers need those buffers again (which fixes their size);
        # a queue may hold more than a size the program set counts (the kernel lets a last write
        # through): it goes in with room enough, and _build gives the program's size back after.
        buffers = ((socket.SO_SNDBUF, lib.SO_SNDBUFFORCE, "sndbuf", sendq),
                   (socket.SO_RCVBUF, lib.SO_RCVBUFFORCE, "rcvbuf", recvq))
        # Room counts the kernel's per-segment overhead too (truesize): twice the data, which the kernel doubles.
        for name, force, key, data in buffers:
            if 2 * len(data) > s.getsockopt(SOL_SOCKET, name) // 2:
                s.setsockopt(SOL_SOCKET, force, max(r["cur_" + key] // 2, 2 * len(data)))
        s.setsockopt(TCP, lib.TCP_REPAIR, 1)
        s.bind((_unpack_addr(family, local), lport))
        s.setsockopt(TCP, lib.TCP_REPAIR_QUEUE, lib.TCP_SEND_QUEUE)
        s.setsockopt(TCP, lib.TCP_QUEUE_SEQ, I32.unpack(U32.pack((r["snd_seq"] - len(sendq)) & 0xFFFFFFFF))[0])
        s.setsockopt(TCP, lib.TCP_REPAIR_QUEUE, lib.TCP_RECV_QUEUE)
        s.setsockopt(TCP, lib.TCP_QUEUE_SEQ, I32.unpack(U32.pack((r["rcv_seq"] - len(recvq)) & 0xFFFFFFFF))[0])
        s.connect((_unpack_addr(family, remote), rport))  # in repair mode: no packet, straight to ESTABLISHED
        opts = [(TCPOPT_MSS, r["mss"])]
        if r["tcp_options"] & lib.TCPI_OPT_WSCALE:
            opts.append((TCPOPT_WINDOW, r["snd_wscale"] | r["rcv_wscale"] << 16))
        if r["tcp_options"] & lib.TCPI_OPT_SACK:
            opts.append((TCPOPT_SACK_PERMITTED, 0))
        if r["tcp_options"] & lib.TCPI_OPT_TIMESTAMPS:
            opts.append((TCPOPT_TIMESTAMP, 0))
        s.setsockopt(TCP, lib.TCP_REPAIR_OPTIONS, b"".join(REPAIR_OPT.pack(*o) for o in opts))
        if r["tcp_options"] & lib.TCPI_OPT_TIMESTAMPS:
            s.setsockopt(TCP, lib.TCP_TIMESTAMP, I32.unpack(U32.pack(r["timestamp"]))[0])
        if recvq:
            s.setsockopt(TCP, lib.TCP_REPAIR_QUEUE, lib.TCP_RECV_QUEUE)
            s.sendall(recvq)
        if sent:
            s.setsockopt(TCP, lib.TCP_REPAIR_QUEUE, lib.TCP_SEND_QUEUE)
            s.sendall(sent)
        s.setsockopt(TCP, lib.TCP_REPAIR_QUEUE, lib.TCP_NO_QUEUE)
        rcv_nxt = r["rcv_seq"]
        rcv_wup = r["rcv_wup"] if ((rcv_nxt - r["rcv_wup"]) & 0xFFFFFFFF) < 1 << 31 else rcv_nxt
        s.setsockopt(TCP, lib.TCP_REPAIR_WINDOW,
                     WINDOW.pack(r["snd_wl1"], r["snd_wnd"], r["max_window"], r["rcv_wnd"], rcv_wup))
