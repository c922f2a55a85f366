"""Netlink over a Python AF_NETLINK socket: requests, dumps and rtattrs,
for rtnetlink (namespaces.py) and sock_diag (unix.py, inet.py); and the
restore side the socket kinds share (KeptSockets)."""
import fcntl
import os
import struct

from .errors import UcrError
from .native import lib

NLMSG = struct.Struct("=IHHII")      # struct nlmsghdr
RTATTR = struct.Struct("=HH")        # struct rtattr


def open_socket(protocol):
    import socket  # only for a tree that needs netlink
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    sock.bind((0, 0))
    return sock


def attrs(data):
    """{type: payload} of a run of rtattrs (nested flag masked off)."""
    out, at = {}, 0
    while at + RTATTR.size <= len(data):
        length, type_ = RTATTR.unpack_from(data, at)
        if length < RTATTR.size:
            break
        out[type_ & 0x3FFF] = data[at + RTATTR.size:at + length]
        at += (length + 3) & ~3
    return out


def attr(type_, payload):
    n = RTATTR.size + len(payload)
    return RTATTR.pack(n, type_) + payload + bytes(((n + 3) & ~3) - n)


def talk(sock, type_, flags, body, what):
    """Sends one request; returns the messages of a dump as (type, payload),
    or [] once an acknowledged change is done."""
    sock.send(NLMSG.pack(NLMSG.size + len(body), type_, lib.NLM_F_REQUEST | flags, 1, 0) + body)
    out = []
    while True:
        data, at = sock.recv(1 << 16), 0
        while at + NLMSG.size <= len(data):
            length, mtype, _, _, _ = NLMSG.unpack_from(data, at)
            payload = data[at + NLMSG.size:at + length]
            at += (length + 3) & ~3
            if mtype == lib.NLMSG_DONE:
                return out
            if mtype == lib.NLMSG_ERROR:
                err = -struct.unpack_from("=i", payload)[0]
                if err:
                    raise UcrError(f"{what}: {os.strerror(err)}")
                return out
            out.append((mtype, payload))


class KeptSockets:
    """A socket fd kind's restore: every socket of the image is made at the
    first FILE record naming one (_build fills kept: ino -> fd kept by rstr);
    each FILE record gets a new fd on it with its own status flags."""
    RECORD = None  # the socket record's name, for the error

    def open(self, rec):
        if self.kept is None:
            self.kept = {}
            self._build()
        fd = self.kept.get(rec["ino"])
        if fd is None:
            raise UcrError(f"image corrupt: no {self.RECORD} record for the socket at fd {rec['fd']}")
        new = os.dup(fd)
        fcntl.fcntl(new, fcntl.F_SETFL, rec["flags"])
        return new
