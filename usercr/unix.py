"""Unix sockets (fd kind unix): stream, datagram and seqpacket; named by a
path, abstract or unnamed; bound, listening, or connected to another
socket of the tree. One UNIX_SOCK record per socket, found with sock_diag
(NETLINK_SOCK_DIAG: name, peer, queue length, pending connections), and one
UNIX_MSG record per message queued for it, read with MSG_PEEK (and
SO_PEEK_OFF to go past the first) from a pidfd_getfd copy, so nothing is
consumed. rstr rebuilds them before any task exists: listeners are bound
again to their name and listen; a connection accepted from a listener is
made again by connecting to it and accepting, any other pair with
socketpair(); the queued data is sent again from the peer (or, for a
datagram, from the socket of the tree that had sent it).

Connections waiting in a listener's backlog (UNIX_WAITING) are connected
again in order; a socket connected outside the tree is kept as external
(UNIX_EXTERNAL) with ckpt --ext-unix-sk and connected again to its peer's
address. socketpair/listen/connect are made by helper tasks with the PID
and ids the program saw in SO_PEERCRED (ucr_sock_as).

Refused in one line, the tree left running: a socket connected to a peer
outside the tree without --ext-unix-sk (except on fds 0-2: a standard
stream follows rstr's own, as files.py does for any socket there), data a
client sent on a connection not accepted yet, descriptors in flight
(SCM_RIGHTS in a queue), datagrams from a sender outside the tree, and a
bound path whose file now is something else than a socket."""
import errno
import os
import socket
import stat
import struct

from . import netlink, proc
from . import records as R
from .errors import UcrError
from .native import ffi, lib

K = R.FD_KINDS
KINDS = (K.UNIX,)
TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "datagram", socket.SOCK_SEQPACKET: "seqpacket"}
FILE_GONE, PEER_GONE, EXTERNAL = 1, 2, 4  # UNIX_SOCK flags
SHUT = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}  # sk_shutdown bits = how + 1

REQ = struct.Struct("=BBHIII8x")     # struct unix_diag_req (cookie left 0)
MSG = struct.Struct("=BBBBI8x")      # struct unix_diag_msg
ALL_STATES = 0xFFFFFFFF              # udiag_states: every state
PEEK_BUF = 1 << 20
ANC_BUF = 4096
UCRED = struct.Struct("=iII")        # struct ucred

# -- checkpoint ------------------------------------------------------------

def _diag_dump(pid):
    """{ino: dict} of every Unix socket in pid's network namespace."""
    from .namespaces import entered
    with entered(pid, "net"):
        sock = netlink.open_socket(lib.NETLINK_SOCK_DIAG)
    show = (lib.UDIAG_SHOW_NAME | lib.UDIAG_SHOW_VFS | lib.UDIAG_SHOW_PEER | lib.UDIAG_SHOW_ICONS
            | lib.UDIAG_SHOW_RQLEN | lib.UDIAG_SHOW_UID)
    with sock:
        msgs = netlink.talk(sock, lib.SOCK_DIAG_BY_FAMILY, lib.NLM_F_DUMP,
                            REQ.pack(socket.AF_UNIX, 0, 0, ALL_STATES, 0, show),
                            f"listing the Unix sockets of process {pid} through sock_diag (kernel module unix_diag)")
    out = {}
    for _, payload in msgs:
        _, type_, state, _, ino = MSG.unpack_from(payload)
        out[ino] = _diag_attrs(type_, state, netlink.attrs(payload[MSG.size:]))
    return out


def _diag_attrs(type_, state, a):
    d = dict(type=type_, state=state, name=b"", vfs=None, peer=0, icons=[], rqlen=(0, 0), shutdown=0, uid=0)
    if lib.UNIX_DIAG_NAME in a:
        v = a[lib.UNIX_DIAG_NAME]
        d["name"] = v if v[:1] == b"\0" else v.split(b"\0", 1)[0]
    if lib.UNIX_DIAG_VFS in a:
        ino, kdev = struct.unpack_from("=II", a[lib.UNIX_DIAG_VFS])
        d["vfs"] = (os.makedev(kdev >> 20, kdev & 0xFFFFF), ino)  # the kernel's own dev_t encoding
    if lib.UNIX_DIAG_PEER in a:
        d["peer"] = struct.unpack_from("=I", a[lib.UNIX_DIAG_PEER])[0]
    if lib.UNIX_DIAG_ICONS in a:
        v = a[lib.UNIX_DIAG_ICONS]
        d["icons"] = list(struct.unpack(f"={len(v) // 4}I", v[:len(v) // 4 * 4]))
    if lib.UNIX_DIAG_RQLEN in a:
        d["rqlen"] = struct.unpack_from("=II", a[lib.UNIX_DIAG_RQLEN])
    if lib.UNIX_DIAG_SHUTDOWN in a:
        d["shutdown"] = a[lib.UNIX_DIAG_SHUTDOWN][0]
    if lib.UNIX_DIAG_UID in a:
        d["uid"] = struct.unpack_from("=I", a[lib.UNIX_DIAG_UID])[0]
    return d


def scan(ctx):
    """Once per checkpoint: the sock_diag table of the tree's network
    namespace and the socket inodes the tree's processes hold."""
    if "unix" not in ctx.tree:
        held = {}
        for pid in ctx.ns.map:
            for fd, target, _ in proc.fds(pid) if proc.state(pid) not in ("Z", None) else ():
                if target.startswith("socket:["):
                    held.setdefault(int(target[8:-1]), (pid, fd))
        ctx.tree["unix"] = dict(diag=_diag_dump(ctx.pid) if held else {}, held=held, socks={}, ns=ctx.ns,
                                external={}, waiting={})


def classify(ctx, st, target, info):
    if stat.S_ISSOCK(st.st_mode) and st.st_ino in ctx.tree["unix"]["diag"]:
        return K.UNIX
    return None


def _what(d):
    return f"unix {TYPES.get(d['type'], d['type'])} socket"


def note(ctx, fd, st, info, fields):
    state = ctx.tree["unix"]
    diag, held = state["diag"], state["held"]
    ino, pid = st.st_ino, ctx.pid
    d = diag[ino]
    where = f"fd {fd} of process {pid} is a {_what(d)} (socket:[{ino}])"
    peer = d["peer"]
    # A connection not accepted yet: its peer (the kernel's socket in the
    # backlog) has no inode, so sock_diag gives 0; the listener lists it.
    listener = next((i for i, o in diag.items() if ino in o["icons"]), None) \
        if d["state"] == lib.TCP_ESTABLISHED and not peer else None
    outside = None
    if listener is not None and listener not in held:
        outside = diag[listener]
    elif peer and peer not in held:
        outside = diag.get(peer)  # None: closed since
    if listener in held:
        _nothing_sent(where, d, listener)
    elif outside is not None:
        if fd < 3:  # a standard stream on a socket from outside: follows rstr's own, as any socket there
            fields["kind"] = K.SOCKET
            return
        if not ctx.tree.get("ext_unix_sk"):
            raise UcrError(f"{where} connected to {_peer_name(outside)} outside the tree "
                           f"(socket:[{listener or peer}]); that cannot be checkpointed without --ext-unix-sk")
        state["external"][ino] = _external(where, d, outside, pid, ctx.ns)
    for client in d["icons"] if ino not in state["socks"] else ():
        if not client:
            raise UcrError(f"{where} has a connection waiting to be accepted whose client is closed; what it "
                           "sent cannot be known without accepting it, so that cannot be checkpointed")
        _nothing_sent(where, diag[client], ino)
        state["waiting"].setdefault(ino, []).append((client if client in held else 0, _connector(client, held, ctx.ns)))
    state["socks"].setdefault(ino, (pid, fd))


def _peer_name(p):
    name = p["name"]
    if not name:
        return "an unnamed socket"
    return "abstract @" + os.fsdecode(name[1:]) if name[:1] == b"\0" else os.fsdecode(name)


def _nothing_sent(where, client, listener):
    """Data a client sent on a connection not accepted yet sits in a socket
    that has no descriptor: reading it needs accept(), which cannot be
    undone. The client's send queue length (sock_diag) shows it."""
    if client["rqlen"][1]:
        raise UcrError(f"{where}: a client sent data on a connection that listener socket:[{listener}] has "
                       "not accepted yet; it cannot be read without accepting it, so that cannot be "
                       "checkpointed")


def _proc_creds(pid, ns):
    """(PID as the tree sees it, euid, egid) of a process."""
    st = proc.status(pid)
    return ns(pid) or (0 if ns.own else pid), int(st["Uid"].split()[1]), int(st["Gid"].split()[1])


def _connector(client, held, ns):
    """The credentials a waiting connection carries: its client end's holder's
    (the kernel took them from whoever called connect(), most likely it)."""
    if client in held:
        return _proc_creds(held[client][0], ns)
    target = f"socket:[{client}]"
    for pid in (int(p) for p in os.listdir(proc.PROC) if p.isdigit()) if client else ():
        try:
            if any(os.readlink(proc.path(pid, "fd", f)) == target for f in os.listdir(proc.path(pid, "fd"))):
                return _proc_creds(pid, ns)
        except (OSError, UcrError):
            continue
    return 0, 0, 0


def _external(where, d, p, pid, ns):
    """(peer address, credentials to connect with) of a socket kept as an
    external connection: reattached at restart to the same address."""
    name = p["name"]
    if not name or name[:1] not in (b"\0", b"/"):
        raise UcrError(f"{where} connected to {_peer_name(p)} outside the tree; only a peer with an absolute "
                       "or abstract name can be reattached")
    return name, _proc_creds(pid, ns)


def _file_info(d, name, pid):
    """(flags, mode, uid, gid, directory of a relative name) of a path-bound socket."""
    if not name or name[:1] == b"\0":
        return 0, 0, 0, 0, b""
    directory = b""
    if name[:1] == b"/":
        path = name
    else:  # bound relative to the cwd it had then: its present cwd, if the file there is that socket
        directory = os.fsencode(proc.readlink(pid, "cwd"))
        path = os.path.join(directory, name)
    try:
        st = os.stat(path)
        if d["vfs"] is not None and (st.st_dev, st.st_ino) == d["vfs"]:
            return 0, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, directory
    except OSError:
        pass
    if directory:
        raise UcrError(f"the unix socket at relative path {os.fsdecode(name)} (process {pid}) is not in its "
                       "working directory any more; that cannot be checkpointed")
    return FILE_GONE, 0, 0, 0, b""


def _peek(pid, fd, d, ino):
    """[(sender address, data)] queued for the socket at fd of pid, read
    without consuming it; SO_PEEK_OFF is put back as it was."""
    where = f"fd {fd} of process {pid} ({_what(d)}, socket:[{ino}])"
    copy = lib.ucr_pidfd_getfd(pid, fd)
    if copy < 0:
        raise UcrError(f"cannot reach {where}: {os.strerror(-copy)}")
    sock = socket.socket(fileno=copy)
    with sock:
        opts = dict(sndbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                    rcvbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                    passcred=sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED))
        cred = UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))
        opts["peek_off"] = sock.getsockopt(socket.SOL_SOCKET, lib.SO_PEEK_OFF)
        if d["state"] == lib.TCP_LISTEN:
            return opts, cred, []
        msgs = []
        sock.setsockopt(socket.SOL_SOCKET, lib.SO_PEEK_OFF, 0)
        try:
            msgs = _peek_all(sock, d, where)
        finally:
            sock.setsockopt(socket.SOL_SOCKET, lib.SO_PEEK_OFF, opts["peek_off"])
    if d["type"] != socket.SOCK_DGRAM and sum(len(m) for _, m in msgs) != d["rqlen"][0]:
        raise UcrError(f"{where}: read {sum(len(m) for _, m in msgs)} queued bytes, sock_diag says "
                       f"{d['rqlen'][0]}")
    return opts, cred, msgs


def _peek_all(sock, d, where):
    msgs, total, empty_at_start = [], 0, False
    stream = d["type"] == socket.SOCK_STREAM
    flags = socket.MSG_PEEK | socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
    while True:
        if d["type"] != socket.SOCK_DGRAM and total >= d["rqlen"][0]:
            return msgs
        try:
            data, anc, mflags, addr = sock.recvmsg(PEEK_BUF, ANC_BUF, flags)
        except BlockingIOError:
            return msgs
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for f in struct.unpack(f"={len(payload) // 4}i", payload[:len(payload) // 4 * 4]):
                    os.close(f)
                raise UcrError(f"{where} has file descriptors in flight in its queue (SCM_RIGHTS); "
                               "that cannot be checkpointed")
        if mflags & socket.MSG_CTRUNC:
            raise UcrError(f"{where} has ancillary data in its queue that does not fit {ANC_BUF} bytes "
                           "(descriptors in flight?); that cannot be checkpointed")
        if mflags & socket.MSG_TRUNC:
            raise UcrError(f"{where} has a message queued larger than {PEEK_BUF} bytes; that cannot be "
                           "checkpointed yet")
        if not data:
            if stream or total or empty_at_start:
                return msgs
            empty_at_start = True  # a zero-length datagram first in the queue
        name = b"" if stream or not addr else addr if isinstance(addr, bytes) else os.fsencode(addr)
        if stream and msgs:
            msgs[0] = (b"", msgs[0][1] + data)
        else:
            msgs.append((name, data))
        total += len(data)


def tree_records(tree):
    state = tree.get("unix")
    if not state:
        return []
    diag, held, ns = state["diag"], state["held"], state["ns"]
    clients = {c for waits in state["waiting"].values() for c, _ in waits}
    out = []
    for ino, (pid, fd) in state["socks"].items():
        d = diag[ino]
        name = d["name"]
        what = f"fd {fd} of process {pid} ({_what(d)}, socket:[{ino}])"
        flags, mode, uid, gid, directory = _file_info(d, name, pid)
        opts, cred, msgs = _peek(pid, fd, d, ino)
        peer = d["peer"]
        if ino in state["external"]:
            flags |= EXTERNAL
            peer = 0
            if msgs:
                raise UcrError(f"{what} has data queued from its peer outside the tree; a reattached "
                               "connection cannot be given it again, so that cannot be checkpointed")
        elif d["state"] == lib.TCP_ESTABLISHED and peer not in held and ino not in clients:
            flags |= PEER_GONE  # closed since (note refused a live one)
            peer = 0
        backlog = d["rqlen"][1] if d["state"] == lib.TCP_LISTEN else 0
        out.append(R.UNIX_SOCK.pack(
            ino=ino, peer=peer, type=d["type"], state=d["state"], backlog=backlog, shutdown=d["shutdown"],
            flags=flags, name_len=len(name), sndbuf=opts["sndbuf"], rcvbuf=opts["rcvbuf"],
            peek_off=opts["peek_off"], passcred=opts["passcred"], peer_pid=_seen_pid(cred[0], ns),
            peer_uid=cred[1], peer_gid=cred[2], file_mode=mode, file_uid=uid, file_gid=gid,
            tail=name + directory))
        if msgs and opts["passcred"]:
            raise UcrError(f"{what} has SO_PASSCRED and data queued, whose sender credentials cannot be "
                           "restored; that cannot be checkpointed")
        for sender, data in msgs:
            out.append(R.UNIX_MSG.pack(ino=ino, name_len=len(sender), tail=sender + data))
    for ino, (address, (cpid, cuid, cgid)) in state["external"].items():
        out.append(R.UNIX_EXTERNAL.pack(ino=ino, pid=cpid, uid=cuid, gid=cgid, tail=address))
    for listener, waits in state["waiting"].items():
        for client, (cpid, cuid, cgid) in waits:
            out.append(R.UNIX_WAITING.pack(listener=listener, client=client, pid=cpid, uid=cuid, gid=cgid))
    return out


def _seen_pid(pid, ns):
    """A peer's PID as the program saw it: the tree's number for a process
    of the tree, the same number for one outside in the same namespace."""
    if pid <= 0:
        return 0
    return ns(pid) or (0 if ns.own else pid)


# -- restart ---------------------------------------------------------------

def _name(rec):
    """(address, directory it was bound in for a relative path, else b"") of a saved socket."""
    tail, n = rec["tail"], rec["name_len"]
    return tail[:n], tail[n:]


def _key(rec):
    return (rec["type"],) + _name(rec)


def _new(type_):
    s = socket.socket(socket.AF_UNIX, type_)
    s.setblocking(False)  # rstr never waits on a socket; the FILE record sets the program's flags
    return s


def _pair(type_):
    pair = socket.socketpair(socket.AF_UNIX, type_)
    for s in pair:
        s.setblocking(False)
    return pair


LISTEN, CONNECT, SOCKETPAIR = 0, 1, 2  # ucr_sock_as operations


def _sockaddr(address):
    """struct sockaddr_un for a path (with its NUL) or an abstract name."""
    return struct.pack("=H", socket.AF_UNIX) + address + (b"" if address[:1] == b"\0" else b"\0")


def _creds(r, prefix="peer_"):
    return r[prefix + "pid"], r[prefix + "uid"], r[prefix + "gid"]


class Restore(netlink.KeptSockets):
    RECORD = "UNIX_SOCK"

    def __init__(self, rst):
        self.rst = rst
        self.saved = {rec["ino"]: rec for rec in rst.img.tree_records("UNIX_SOCK")}
        self.msgs = {}
        for rec in rst.img.tree_records("UNIX_MSG"):
            self.msgs.setdefault(rec["ino"], []).append(rec)
        self.waiting = rst.img.tree_records("UNIX_WAITING")
        self.external = {rec["ino"]: rec for rec in rst.img.tree_records("UNIX_EXTERNAL")}
        self.kept = None   # ino -> kept fd
        self.socks = {}    # ino -> socket object while they are made
        self.gone = set()  # paths bound whose file was removed before the checkpoint

    def _as(self, creds, op, sock, other=None, arg=0, address=b""):
        """A listen/connect/socketpair made by a helper task with the PID,
        euid and egid given: SO_PEERCRED then shows what the program saw.
        The PID only where the tree keeps its PIDs in rstr's namespace and
        that PID is free; otherwise a warning says so."""
        pid, uid, gid = creds
        want = pid if pid > 0 and self.rst.same_pidns else 0
        addr = _sockaddr(address) if address else b""
        args = (uid, gid, op, sock.fileno(), other.fileno() if other else -1, arg,
                ffi.from_buffer(addr) if addr else ffi.NULL, len(addr))
        r = lib.ucr_sock_as(want, *args)
        if r in (-errno.EEXIST, -errno.EINVAL) and want:
            self.rst.warn(f"warning: PID {pid} is taken: a unix socket's SO_PEERCRED shows another PID than "
                          "the one the program saw")
            want, r = 0, lib.ucr_sock_as(0, *args)
        elif pid > 0 and not want:
            self.rst.warn("warning: restored in a new PID namespace, unix sockets' SO_PEERCRED show other "
                          "PIDs than the program saw")
        if r < 0:
            raise OSError(-r, os.strerror(-r))

    def _build(self):
        """Every socket at once, in steps: sockets on their own (bound,
        listening), then connected pairs (through their listener, or
        socketpair), the connections waiting in a backlog, external ones,
        the queued data, datagram connects, options."""
        saved, socks = self.saved, self.socks
        self.listeners = {_key(r): ino for ino, r in saved.items() if r["state"] == lib.TCP_LISTEN}
        waiting_clients = []
        try:
            pairs, orphans = [], []
            for ino, r in saved.items():
                connected = r["state"] == lib.TCP_ESTABLISHED
                if r["flags"] & PEER_GONE:
                    orphans.append(ino)
                elif connected and r["peer"] and (r["type"] != socket.SOCK_DGRAM or self._dgram_pair(ino)):
                    if r["peer"] not in saved:
                        raise UcrError(f"image corrupt: the peer of socket:[{ino}] has no UNIX_SOCK record")
                    if ino < r["peer"]:
                        pairs.append((ino, r["peer"]))
                else:
                    socks[ino] = _new(r["type"])
                    if r["name_len"]:
                        self._bind(socks[ino], r)
                    if r["state"] == lib.TCP_LISTEN:
                        self._as(_creds(r), LISTEN, socks[ino], arg=r["backlog"])
            for a, b in pairs:
                self._connect(a, b)
            for ino in orphans:
                other = self._connect(ino, None)
                self._fill(ino, other)
                other.close()
            for w in self.waiting:
                waiting_clients.append(self._wait(w))
            for ino, e in self.external.items():
                self._as(_creds(e, ""), CONNECT, socks[ino], address=e["tail"])
            for ino in self.listeners.values():  # back to the credentials of the program's own listen()
                self._as(_creds(saved[ino]), LISTEN, socks[ino], arg=saved[ino]["backlog"])
            for ino, r in saved.items():
                if not r["flags"] & PEER_GONE:
                    self._queue(ino)
            for ino, r in saved.items():
                if r["type"] == socket.SOCK_DGRAM and r["state"] == lib.TCP_ESTABLISHED and ino in socks and \
                        r["peer"] and not self._dgram_pair(ino) and not r["flags"] & EXTERNAL:
                    socks[ino].connect(self._addr(saved[r["peer"]]))
            for ino, r in saved.items():
                self._options(socks[ino], r)
            for path in self.gone:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            for ino in list(socks):
                self.kept[ino] = self.rst.keep(socks.pop(ino).detach())
        except OSError as e:
            raise UcrError(f"recreating the unix sockets: {e.strerror or e}") from None
        finally:
            for s in list(socks.values()) + waiting_clients:
                if s is not None:
                    s.close()

    def _wait(self, w):
        """A connection waiting in a listener's backlog, made again in order:
        the client end of the tree (or, for a client outside the tree, one
        closed at once: the program accepts it and reads end of file)
        connects with the credentials accept() showed."""
        listener = self.saved.get(w["listener"])
        if listener is None or w["listener"] not in self.socks:
            raise UcrError("image corrupt: a waiting connection's listener has no UNIX_SOCK record")
        client = self.saved.get(w["client"]) if w["client"] else None
        c = self.socks[w["client"]] if client else _new(listener["type"])
        if client:
            self._as(_creds(client), LISTEN, self.socks[w["listener"]], arg=listener["backlog"])
        self._as(_creds(w, ""), CONNECT, c, address=self._addr(listener))
        return None if client else c

    def _dgram_pair(self, ino):
        """A datagram socket and its peer connected to each other, both unnamed: a socketpair."""
        r = self.saved[ino]
        p = self.saved.get(r["peer"])
        return p is not None and p["peer"] == ino and not r["name_len"] and not p["name_len"]

    def _connect(self, a, b):
        """Makes the connection between a and b (None: b was closed; returned,
        to fill a's queue from it). An end with the name of a listener of the
        tree was accepted from it: connect to the listener and accept (the
        listener listens again as the client saw it, the connect is made as
        the accepted end saw it). Any other pair is a socketpair, made as the
        first end saw it."""
        saved, socks = self.saved, self.socks
        ra = saved[a]
        server = next((i for i in (a, b) if i is not None and saved[i]["name_len"] and
                       saved[i]["type"] != socket.SOCK_DGRAM and _key(saved[i]) in self.listeners), None)
        if server is not None:
            client = b if server == a else a
            c = _new(ra["type"])
            if client is not None and saved[client]["name_len"]:
                self._bind(c, saved[client])
            lino = self.listeners[_key(saved[server])]
            listener = saved[lino]
            if client is not None:
                self._as(_creds(saved[client]), LISTEN, socks[lino], arg=listener["backlog"])
            self._as(_creds(saved[server]), CONNECT, c, address=self._addr(listener))
            s, _ = socks[lino].accept()
            s.setblocking(False)
            socks[server] = s
            if client is None:
                return c
            socks[client] = c
            return None
        x, y = _pair(ra["type"])
        self._as(_creds(ra), SOCKETPAIR, x, y, arg=ra["type"])
        if b is not None and _creds(saved[b]) != _creds(ra):
            self.rst.warn(f"warning: the ends of a restored unix socket pair (socket:[{a}], socket:[{b}]) "
                          "show the same SO_PEERCRED; one saw other credentials")
        socks[a] = x
        for i, s in ((a, x), (b, y)):
            if i is not None and saved[i]["name_len"]:
                self._bind(s, saved[i])  # a name of its own, or of a listener gone since
        if b is None:
            return y
        socks[b] = y
        return None

    def _addr(self, r):
        name, directory = _name(r)
        return os.path.join(directory, name) if directory else name

    def _bind(self, s, r):
        name, directory = _name(r)
        if name[:1] == b"\0":
            s.bind(name)
            return
        path = self._addr(r)
        self._clear(path, r)
        if directory:
            here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.chdir(directory)
                s.bind(name)
            finally:
                os.fchdir(here)
                os.close(here)
        else:
            s.bind(name)
        os.chmod(path, r["file_mode"])
        os.chown(path, r["file_uid"], r["file_gid"])
        if r["flags"] & FILE_GONE:
            self.gone.add(path)

    def _clear(self, path, r):
        """A stale socket file at path (nobody listens) is removed; anything else there is an error."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        shown = os.fsdecode(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise UcrError(f"cannot bind the unix socket to {shown}: something else than a socket is there")
        probe = socket.socket(socket.AF_UNIX, r["type"])
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)
            return
        except OSError as e:
            if e.errno != errno.EPROTOTYPE:  # a socket of another type: nobody of this type is there
                raise
            os.unlink(path)
            return
        finally:
            probe.close()
        raise UcrError(f"cannot bind the unix socket to {shown}: another program's socket is bound there")

    def _fill(self, ino, sender):
        """Sends ino's queued data from sender, its peer, message by message."""
        data = self.msgs.get(ino, [])
        if not data:
            return
        need = sum(len(m["tail"]) for m in data) * 2 + len(data) * 1024
        sender.setsockopt(socket.SOL_SOCKET, lib.SO_SNDBUFFORCE, need)
        for m in data:
            payload = m["tail"][m["name_len"]:]
            if self.saved[ino]["type"] == socket.SOCK_STREAM:
                sender.sendall(payload)
            else:
                sender.send(payload)

    def _queue(self, ino):
        r, socks = self.saved[ino], self.socks
        if not self.msgs.get(ino):
            return
        if r["type"] != socket.SOCK_DGRAM or self._dgram_pair(ino):
            self._fill(ino, socks[r["peer"]])
            return
        if not r["name_len"]:
            raise UcrError(f"datagrams are queued for unnamed socket:[{ino}] from another socket than its "
                           "peer; that cannot be restored")
        by_name = {_name(o)[0]: i for i, o in self.saved.items() if o["name_len"] and o["type"] == r["type"]}
        for m in self.msgs[ino]:
            name, payload = m["tail"][:m["name_len"]], m["tail"][m["name_len"]:]
            if name and name not in by_name:
                raise UcrError(f"a datagram queued for socket:[{ino}] came from {os.fsdecode(name)!r} outside "
                               "the tree; that cannot be restored")
            s = socks[by_name[name]] if name else _new(r["type"])  # an unnamed sender: any unbound socket
            try:
                s.setsockopt(socket.SOL_SOCKET, lib.SO_SNDBUFFORCE, len(payload) * 2 + 65536)
                s.sendto(payload, self._addr(r))
            finally:
                if not name:
                    s.close()

    def _options(self, s, r):
        s.setsockopt(socket.SOL_SOCKET, lib.SO_SNDBUFFORCE, r["sndbuf"] // 2)  # the kernel doubles it
        s.setsockopt(socket.SOL_SOCKET, lib.SO_RCVBUFFORCE, r["rcvbuf"] // 2)
        if r["passcred"]:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if r["peek_off"] >= 0 and r["state"] != lib.TCP_LISTEN:
            s.setsockopt(socket.SOL_SOCKET, lib.SO_PEEK_OFF, r["peek_off"])
        if r["shutdown"] in SHUT and r["state"] == lib.TCP_ESTABLISHED and not r["flags"] & PEER_GONE:
            try:
                s.shutdown(SHUT[r["shutdown"]])
            except OSError as e:
                if e.errno != errno.ENOTCONN:
                    raise
