"""TCP and UDP sockets across restarts, with real programs: an asyncio echo
server with clients in the same tree and timers; data in flight both ways
on a loopback connection (unread in the receive queue, unsent in the send
queue); UDP sockets bound on IPv4 and IPv6 and an IPv6 listener with their
options; a connection to a peer outside the tree, refused in one line
without --tcp-established and kept alive with it; a listener with a
connection waiting to be accepted, refused; tcploop.c (also run in the ARM
VMs) streaming checked messages over IPv4 and IPv6 loopback."""
import os
import socket
import sys
import time

from conftest import alive, assert_one_line_error, ckpt, lines, rstr, run, tool, wait_until
from test_tree import cycles, start, tree
from usercr.arch import current
from usercr.image import ImageReader
from usercr.model import Image
from usercr.native import lib

CYCLES = 3


def image_records(img, name):
    fd = os.open(img, os.O_RDONLY)
    try:
        return Image(ImageReader(fd), current()).tree_records(name)
    finally:
        os.close(fd)


def cycle(procs, pid, img, *extra):
    ckpt(pid, img, "--kill", *extra)
    procs.kill(pid)
    return rstr(procs, img)


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# A server and two clients (one a task of the server's process, one a child
# process), each client sending numbered lines and checking their echo, and
# a timer task counting; every number runs on with no gap or repeat.
ASYNCIO = r"""
import asyncio, os, sys
out, port = open(sys.argv[1], "a", buffering=1), int(sys.argv[2])

async def handle(reader, writer):
    while line := await reader.readline():
        writer.write(b"echo " + line)
        await writer.drain()

async def client(tag):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    while True:
        writer.write(f"{tag}{n}\n".encode())
        await writer.drain()
        line = await reader.readline()
        assert line == f"echo {tag}{n}\n".encode(), (line, n)
        out.write(f"{tag} {n}\n")
        n += 1
        await asyncio.sleep(0.02)

async def ticker():
    n = 0
    while True:
        await asyncio.sleep(0.05)
        out.write(f"tick {n}\n")
        n += 1

async def main(child):
    if child:
        await client("child")
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    os.write(ready_w, b"x")
    await asyncio.gather(client("task"), ticker(), server.serve_forever())

ready_r, ready_w = os.pipe()
if os.fork() == 0:
    os.read(ready_r, 1)
    asyncio.run(main(True))
asyncio.run(main(False))
"""


def counts(out, who):
    got = [int(line.split()[-1]) for line in lines(out) if line.startswith(f"{who} ")]
    assert got == list(range(len(got))), f"{who}: {got}"
    return len(got)


def progress(out, whos, more):
    seen = {w: counts(out, w) for w in whos}
    wait_until(lambda: all(counts(out, w) >= seen[w] + more for w in whos), what=f"{whos} to go on")


def test_asyncio_server_and_clients(procs, tmp_path):
    out, port = tmp_path / "out", free_port()
    pid = procs.start([sys.executable, "-c", ASYNCIO, str(out), str(port)]).pid
    whos = ("task", "child", "tick")
    for k in range(CYCLES):
        progress(out, whos, 5)
        img = tmp_path / f"img{k}"
        pid = cycle(procs, pid, img)
        socks = image_records(img, "INET_SOCK")
        assert sum(s["state"] == lib.TCP_LISTEN for s in socks) == 1
        conns = [s for s in socks if s["state"] == lib.TCP_ESTABLISHED]
        assert len(conns) == 4 and {s["peer"] for s in conns} == {s["ino"] for s in conns}
    for child, _ in tree(pid):  # the client process, killed by PID at the end
        procs.track(child)
    # options as the program had them, also on restored connections (leaving repair mode clears SO_REUSEADDR)
    options = [sorted((s["src_port"] == port, s["reuseaddr"], s["nodelay"], s["keepalive"])
                      for s in image_records(tmp_path / f"img{k}", "INET_SOCK")) for k in range(CYCLES)]
    assert options[0] == options[1] == options[2]
    progress(out, whos, 10)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:  # the listener answers newcomers
        c.sendall(b"outside\n")
        assert c.makefile("rb").readline() == b"echo outside\n"


# Each round: both ends write a known byte stream without reading until the
# kernel takes no more (the peer's receive queue and the writer's send queue
# full), say so, wait for go<k>, then each reads and checks all the other sent.
IN_FLIGHT = r"""
import os, socket, sys, time
out, go = open(sys.argv[1], "a", buffering=1), sys.argv[2]
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
a = socket.create_connection(srv.getsockname()); b, _ = srv.accept(); srv.close()
BASE = bytes(i * 7 % 251 for i in range(251)) * 4200   # period 251, longer than any read
pattern = lambda start, n: BASE[start % 251:start % 251 + n]
sent = {a: 0, b: 0}; got = {a: 0, b: 0}
for k in range(3):
    for s in (a, b):
        s.setblocking(False)
        while True:
            try:
                sent[s] += s.send(pattern(sent[s], 65536))
            except BlockingIOError:
                break
    out.write(f"full {k} {sent[a]} {sent[b]}\n")
    while not os.path.exists(f"{go}{k}"):
        time.sleep(0.02)
    # read both ways at once: a writer's unsent bytes move only as its peer reads
    a.setblocking(False); b.setblocking(False)
    while got[a] < sent[b] or got[b] < sent[a]:
        for s, peer in ((a, b), (b, a)):
            try:
                data = s.recv(1 << 20)
            except BlockingIOError:
                continue
            assert data, "EOF"
            assert data == pattern(got[s], len(data)), f"corrupt at {got[s]}"
            got[s] += len(data)
        time.sleep(0.001)
    out.write(f"verified {k} {got[a]} {got[b]}\n")
while True:
    time.sleep(1)
"""


def test_data_in_flight_both_ways(procs, tmp_path):
    out, go = tmp_path / "out", str(tmp_path / "go")
    pid = procs.start([sys.executable, "-c", IN_FLIGHT, str(out), go]).pid
    for k in range(CYCLES):
        wait_until(lambda: any(line.startswith(f"full {k} ") for line in lines(out)), what=f"round {k}")
        img = tmp_path / f"img{k}"
        pid = cycle(procs, pid, img)
        queues = image_records(img, "INET_QUEUE")
        socks = {s["ino"]: s for s in image_records(img, "INET_SOCK")}
        assert {q["ino"] for q in queues if q["queue"] == lib.TCP_RECV_QUEUE} == set(socks), "unread data both ways"
        assert {q["ino"] for q in queues if q["queue"] == lib.TCP_SEND_QUEUE} == set(socks), "unsent data both ways"
        open(f"{go}{k}", "w").close()
        wait_until(lambda: any(line.startswith(f"verified {k} ") for line in lines(out)), what=f"round {k} checked")
        full = next(line for line in lines(out) if line.startswith(f"full {k} ")).split()[2:]
        verified = next(line for line in lines(out) if line.startswith(f"verified {k} ")).split()[2:]
        assert verified == full[::-1]
    assert alive(pid)


def test_tcploop_v4_v6(procs, workloads, tmp_path):
    """Three cycles of tests/workloads/tcploop.c: every message arrives once
    and in order across them, and each image caught bytes on their way in
    both directions of both connections."""
    out = tmp_path / "out"
    root = start(procs, workloads["tcploop"], out)
    assert "families ipv4 ipv6" in lines(out)
    cycles(procs, tmp_path, root, out)
    for k in range(CYCLES):
        socks = image_records(tmp_path / f"img{k}", "INET_SOCK")
        queued = {(q["ino"], q["queue"]) for q in image_records(tmp_path / f"img{k}", "INET_QUEUE")}
        conns = [s for s in socks if s["state"] == lib.TCP_ESTABLISHED]
        assert len(conns) == 4 and sum(s["state"] == lib.TCP_LISTEN for s in socks) == 2
        for s in conns:  # bytes from s to its peer: in s's send queue or in the peer's receive queue
            assert {(s["ino"], lib.TCP_SEND_QUEUE), (s["peer"], lib.TCP_RECV_QUEUE)} & queued, f"cycle {k}: {s}"


# UDP sockets bound on IPv4 and IPv6 and a TCP listener on IPv6 only, each
# echoing what it gets, and a tick.
UDP_V6 = r"""
import select, socket, sys, time
out, p4, p6, pl = open(sys.argv[1], "a", buffering=1), *map(int, sys.argv[2:5])
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u4.bind(("127.0.0.1", p4))
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.bind(("::1", p6))
l6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
l6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
l6.bind(("::", pl)); l6.listen(4)
n, last = 0, time.monotonic()
while True:
    ready, _, _ = select.select([u4, u6, l6], [], [], 0.05)
    for s in ready:
        if s is l6:
            c, _ = l6.accept()
            c.sendall(b"hello " + c.recv(100)); c.close()
        else:
            data, addr = s.recvfrom(100)
            s.sendto(b"echo " + data, addr)
    if time.monotonic() - last > 0.05:
        out.write(f"tick {n}\n"); n += 1; last = time.monotonic()
"""


def udp_echo(family, host, port, msg):
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(msg, (host, port))
        return s.recvfrom(100)[0]


def sock_opt(pid, fd, level, name):
    copy = lib.ucr_pidfd_getfd(pid, fd)
    assert copy >= 0
    with socket.socket(fileno=copy) as s:
        return s.getsockopt(level, name)


def test_udp_v4_v6_and_ipv6_listener(procs, tmp_path):
    out = tmp_path / "out"
    p4, p6, pl = free_port(), free_port(socket.AF_INET6, "::1"), free_port(socket.AF_INET6, "::")
    pid = procs.start([sys.executable, "-c", UDP_V6, str(out), str(p4), str(p6), str(pl)]).pid
    wait_until(lambda: counts(out, "tick") >= 3, what="the program")
    for k in range(CYCLES):
        img = tmp_path / f"img{k}"
        pid = cycle(procs, pid, img)
        kinds = sorted((s["family"], s["type"]) for s in image_records(img, "INET_SOCK"))
        assert kinds == sorted([(socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_INET6, socket.SOCK_DGRAM),
                                (socket.AF_INET6, socket.SOCK_STREAM)])
        assert udp_echo(socket.AF_INET, "127.0.0.1", p4, b"v4") == b"echo v4"
        assert udp_echo(socket.AF_INET6, "::1", p6, b"v6") == b"echo v6"
        with socket.create_connection(("::1", pl), timeout=10) as c:
            c.sendall(b"tcp6")
            assert c.recv(100) == b"hello tcp6"
        # the kernel sets IPV6_V6ONLY itself on a socket bound to one IPv6 address (::1); the listener set it
        assert [sock_opt(pid, fd, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) for fd in (5, 6)] == [1, 1]
        assert [sock_opt(pid, fd, socket.SOL_SOCKET, socket.SO_REUSEADDR) for fd in (5, 6)] == [0, 1]
        with socket.socket() as c:  # IPv6 only: nothing answers on IPv4
            assert c.connect_ex(("127.0.0.1", pl)) != 0
        progress(out, ("tick",), 3)


# A peer outside the tree: it sends a numbered line every 20 ms and checks
# the echo; the program in the tree echoes and logs.
PEER = r"""
import socket, sys, time
out, port = open(sys.argv[1], "a", buffering=1), int(sys.argv[2])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(1)
c, _ = srv.accept()
f = c.makefile("rb")
n = 0
try:
    while True:
        c.sendall(f"{n}\n".encode())
        line = f.readline()
        assert line == f"echo {n}\n".encode(), (line, n)
        out.write(f"peer {n}\n"); n += 1
        time.sleep(0.02)
except Exception as e:
    out.write(f"peer error {e!r}\n")
"""

ECHO_CLIENT = r"""
import socket, sys
out, port = open(sys.argv[1], "a", buffering=1), int(sys.argv[2])
c = socket.create_connection(("127.0.0.1", port))
f = c.makefile("rb")
n = 0
while line := f.readline():
    assert line == f"{n}\n".encode(), (line, n)
    c.sendall(b"echo " + line)
    out.write(f"tree {n}\n"); n += 1
out.write("tree EOF\n")
"""


def start_outside_pair(procs, tmp_path):
    out, port = tmp_path / "out", free_port()
    procs.start([sys.executable, "-c", PEER, str(out), str(port)])
    wait_until(lambda: run(["ss", "-Htln", f"sport = :{port}"]).stdout.strip(), what="the outside peer")
    pid = procs.start([sys.executable, "-c", ECHO_CLIENT, str(out), str(port)]).pid
    progress(out, ("peer", "tree"), 5)
    return out, port, pid


def test_peer_outside_refused_without_tcp_established(procs, tmp_path):
    out, port, pid = start_outside_pair(procs, tmp_path)
    r = run([tool("ckpt"), str(pid), "-o", str(tmp_path / "img"), "--kill"])
    err = assert_one_line_error(r)
    assert f"fd 4 of process {pid} is a tcp socket (127.0.0.1:" in err and f"-> 127.0.0.1:{port})" in err, err
    assert "--tcp-established" in err, err
    progress(out, ("peer", "tree"), 5)
    assert not any("error" in line or "EOF" in line for line in lines(out))


def nft_tables():
    return run(["nft", "list", "tables"]).stdout


def test_peer_outside_kept_with_tcp_established(procs, tmp_path):
    """The outside peer keeps sending while the tree is gone: its packets
    are dropped (not answered with a reset) until rstr has the connection
    back, then both go on."""
    out, port, pid = start_outside_pair(procs, tmp_path)
    for k in range(CYCLES):
        img = tmp_path / f"img{k}"
        ckpt(pid, img, "--kill", "--tcp-established")
        procs.kill(pid)
        assert "usercr_tcp_" in nft_tables()
        seen = counts(out, "peer")
        time.sleep(0.5)  # the peer sends and retransmits meanwhile: dropped, not answered with a reset
        pid = rstr(procs, img)
        assert "usercr_tcp_" not in nft_tables()
        wait_until(lambda: counts(out, "peer") >= seen + 5, what="the peer to go on")
        (s,) = image_records(img, "INET_SOCK")
        assert s["flags"] & 1 and s["peer"] == 0
    progress(out, ("peer", "tree"), 5)
    assert not any("error" in line or "EOF" in line for line in lines(out))


def test_checkpoint_without_kill_leaves_connections(procs, tmp_path):
    """ckpt without --kill (and with --tcp-established, which drops the
    peer's packets while it reads): everything runs on, nothing is left."""
    out, port, pid = start_outside_pair(procs, tmp_path)
    for k in range(CYCLES):
        ckpt(pid, tmp_path / f"img{k}", "--tcp-established")
        assert "usercr_tcp_" not in nft_tables()
        progress(out, ("peer", "tree"), 5)
    assert not any("error" in line or "EOF" in line for line in lines(out))
    assert alive(pid)


PENDING = r"""
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
c = socket.create_connection(srv.getsockname())
out = open(sys.argv[1], "a", buffering=1)
n = 0
while True:
    out.write(f"tick {n}\n"); n += 1
    time.sleep(0.02)
"""


def test_listener_with_pending_connection_refused(procs, tmp_path):
    out = tmp_path / "out"
    pid = procs.start([sys.executable, "-c", PENDING, str(out)]).pid
    wait_until(lambda: counts(out, "tick") >= 3, what="the program")
    r = run([tool("ckpt"), str(pid), "-o", str(tmp_path / "img"), "--kill"])
    err = assert_one_line_error(r)
    assert f"fd 3 of process {pid} is a tcp socket (127.0.0.1:" in err and "waiting to be accepted" in err, err
    progress(out, ("tick",), 5)


# One end has sent its last words and shut down writing (FIN_WAIT2), the
# other has not read them yet (CLOSE_WAIT) and keeps sending numbered lines
# the first one reads; once told, it reads the last words and end of file.
HALF_CLOSED = r"""
import os, socket, sys, time
out, go = open(sys.argv[1], "a", buffering=1), sys.argv[2]
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
a = socket.create_connection(srv.getsockname()); b, _ = srv.accept(); srv.close()
a.sendall(b"last words"); a.shutdown(socket.SHUT_WR)
f = a.makefile("rb")
n = 0
while not os.path.exists(go):
    b.sendall(f"{n}\n".encode())
    assert f.readline() == f"{n}\n".encode()
    out.write(f"line {n}\n"); n += 1
    time.sleep(0.02)
got = b""
while chunk := b.recv(100):
    got += chunk
out.write(f"read {got.decode()} then EOF\n")
while True:
    time.sleep(1)
"""


def test_half_closed_connection(procs, tmp_path):
    out, go = tmp_path / "out", tmp_path / "go"
    pid = procs.start([sys.executable, "-c", HALF_CLOSED, str(out), str(go)]).pid
    for k in range(CYCLES):
        progress(out, ("line",), 5)
        img = tmp_path / f"img{k}"
        pid = cycle(procs, pid, img)
        states = sorted(s["state"] for s in image_records(img, "INET_SOCK"))
        assert states == sorted([lib.TCP_FIN_WAIT2, lib.TCP_CLOSE_WAIT])
    progress(out, ("line",), 5)
    go.touch()
    wait_until(lambda: "read last words then EOF" in lines(out), what="the last words and EOF")


def test_checkpoint_without_kill_within_the_tree(procs, tmp_path):
    """ckpt without --kill of connections within the tree: each socket leaves
    repair mode as it was (SO_REUSEADDR too) and the echoes run on exactly."""
    out, port = tmp_path / "out", free_port()
    pid = procs.start([sys.executable, "-c", ASYNCIO, str(out), str(port)]).pid
    whos = ("task", "child", "tick")
    for k in range(CYCLES):
        progress(out, whos, 5)
        ckpt(pid, tmp_path / f"img{k}")
    for child, _ in tree(pid):
        procs.track(child)
    progress(out, whos, 10)
    options = [sorted((s["src_port"], s["dst_port"], s["reuseaddr"], s["nodelay"])
                      for s in image_records(tmp_path / f"img{k}", "INET_SOCK")) for k in range(CYCLES)]
    assert options[0] == options[1] == options[2]
    assert sum(o[2] for o in options[0]) >= 2  # the listener and the connection accepted from it
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"outside\n")
        assert c.makefile("rb").readline() == b"echo outside\n"


NETNS_PAIR = r"""
import socket, sys, time
out = open(sys.argv[1], "a", buffering=1)
srv = socket.socket(); srv.bind(("10.9.8.7", 4000)); srv.listen(1)
c = socket.create_connection(("10.9.8.7", 4000)); a, _ = srv.accept()
f = a.makefile("rb")
n = 0
while True:
    c.sendall(f"{n}\n".encode())
    assert f.readline() == f"{n}\n".encode()
    out.write(f"line {n}\n"); n += 1
    time.sleep(0.02)
"""


def test_connection_in_own_network_namespace(procs, tmp_path):
    """A tree in a network namespace of its own, talking over an address it
    added to its loopback: rstr recreates the namespace with the address,
    then the sockets in it."""
    out = tmp_path / "out"
    setup = "ip link set lo up && ip addr add 10.9.8.7/24 dev lo && exec \"$0\" -c \"$1\" \"$2\""
    pid = procs.start(["unshare", "-n", "sh", "-c", setup, sys.executable, NETNS_PAIR, str(out)]).pid
    for k in range(CYCLES):
        progress(out, ("line",), 5)
        img = tmp_path / f"img{k}"
        pid = cycle(procs, pid, img)
        assert {s["src_port"] for s in image_records(img, "INET_SOCK")} >= {4000}
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    progress(out, ("line",), 5)


# Sockets with every option of inet.EXTRA_OPTIONS set away from its default (argv[2]: JSON
# [[socket, level, name, value]...], a value an int or [ints] packed as such, or a string); each
# tick reads them all back and compares them with what they were at the start, and pings over IPv6.
OPTIONS = r"""
import json, socket, struct, sys, time
out, want = open(sys.argv[1], "a", buffering=1), json.loads(sys.argv[2])
l4 = socket.socket(); l4.bind(("127.0.0.1", 0))
b = socket.socket(); b.bind(("127.0.0.1", 0))
l6 = socket.socket(socket.AF_INET6); l6.bind(("::1", 0)); l6.listen(4)
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u4.bind(("127.0.0.1", 0))
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.bind(("::1", 0))
socks = dict(l4=l4, b=b, l6=l6, u4=u4, u6=u6, c4=socket.socket(), c6=socket.socket(socket.AF_INET6))

def setall(names):
    for name, level, opt, v in want:
        if name in names:
            if isinstance(v, list) and v[0] == "q":
                v = struct.pack("=qq", *v[1:])
            elif isinstance(v, list):
                v = struct.pack("=%di" % len(v), *v)
            elif isinstance(v, str):
                v = v.encode()
            socks[name].setsockopt(level, opt, v)

setall(("l4", "b", "l6", "u4", "u6", "c4", "c6"))
l4.listen(4)
socks["c4"].connect(l4.getsockname()); socks["a4"] = l4.accept()[0]
socks["c6"].connect(l6.getsockname()[:2]); socks["a6"] = l6.accept()[0]
socks["a4"].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("=ii", 1, 4))
socks["a4"].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("=ii", 0, 0))  # off, its time kept
table = json.loads(sys.argv[3])
def snapshot():
    return {(n, l, o): s.getsockopt(l, o, size) for n, s in socks.items() for l, o, fams, types, size in table
            if s.family in fams and s.type in types}
first = snapshot()
out.write("ready\n")
n = 0
while True:
    now = snapshot()
    bad = [(k, first[k], now[k]) for k in first if now[k] != first[k]]
    if bad:
        out.write(f"BAD options: {bad}\n"); sys.exit(1)
    socks["c6"].sendall(b"%d\n" % n)
    if socks["a6"].recv(100) != b"%d\n" % n:
        out.write("BAD ping\n"); sys.exit(1)
    out.write(f"tick {n}\n"); n += 1
    time.sleep(0.05)
"""


def test_socket_options_kept(procs, tmp_path):
    """Each option of inet.EXTRA_OPTIONS, set by the program away from its
    default, reads back the same after three cycles; the images hold them."""
    import json
    from usercr.inet import EXTRA_OPTIONS
    ip, ip6, so, tcp = socket.IPPROTO_IP, socket.IPPROTO_IPV6, socket.SOL_SOCKET, socket.IPPROTO_TCP
    want = [("l4", tcp, lib.TCP_DEFER_ACCEPT, 5), ("l4", tcp, lib.TCP_FASTOPEN, 8), ("l4", ip, lib.IP_FREEBIND, 1),
            ("l4", so, lib.SO_BINDTODEVICE, "lo"), ("l4", tcp, lib.TCP_CONGESTION, "reno"),
            ("b", tcp, lib.TCP_FASTOPEN_CONNECT, 1),
            ("c4", ip, lib.IP_TOS, 0x10), ("c4", so, lib.SO_PRIORITY, 3), ("c4", so, lib.SO_MARK, 7),
            ("c4", so, lib.SO_RCVLOWAT, 5), ("c4", so, lib.SO_LINGER, [1, 3]),
            ("c4", so, lib.SO_RCVTIMEO_NEW, ["q", 2, 500000]), ("c4", so, lib.SO_SNDTIMEO_NEW, ["q", 1, 250000]),
            ("c4", so, lib.SO_OOBINLINE, 1), ("c4", ip, lib.IP_TTL, 33), ("c4", ip, lib.IP_TRANSPARENT, 1),
            ("c4", ip, lib.IP_RECVERR, 1), ("c4", tcp, lib.TCP_CORK, 1), ("c4", tcp, lib.TCP_USER_TIMEOUT, 12345),
            ("c4", tcp, lib.TCP_NOTSENT_LOWAT, 9999), ("c4", tcp, lib.TCP_LINGER2, 7), ("c4", tcp, lib.TCP_SYNCNT, 3),
            ("c4", tcp, lib.TCP_THIN_LINEAR_TIMEOUTS, 1), ("c4", tcp, lib.TCP_CONGESTION, "reno"),
            ("c6", ip6, lib.IPV6_TCLASS, 0x20), ("c6", ip6, lib.IPV6_UNICAST_HOPS, 17),
            ("c6", ip6, lib.IPV6_TRANSPARENT, 1), ("c6", ip6, lib.IPV6_RECVERR, 1),
            ("u4", ip, lib.IP_MULTICAST_TTL, 5), ("u4", ip, lib.IP_MULTICAST_LOOP, 0),
            ("u4", ip, lib.IP_MULTICAST_ALL, 0), ("u4", ip, lib.IP_PKTINFO, 1), ("u4", ip, lib.IP_RECVTOS, 1),
            ("u4", ip, lib.IP_RECVTTL, 1),
            ("u6", ip6, lib.IPV6_MULTICAST_HOPS, 3), ("u6", ip6, lib.IPV6_MULTICAST_LOOP, 0),
            ("u6", ip6, lib.IPV6_MULTICAST_IF, socket.if_nametoindex("lo")), ("u6", ip6, lib.IPV6_RECVPKTINFO, 1)]
    assert {(level, name) for _, level, name, _ in want} == {(level, name) for level, name, *_ in EXTRA_OPTIONS}, \
        "every option of the table is set by the workload"
    out = tmp_path / "out"
    root = start(procs, sys.executable, out, "-c", OPTIONS, str(out), json.dumps(want), json.dumps(EXTRA_OPTIONS))
    cycles(procs, tmp_path, root, out)
    saved = {(r["level"], r["name"]) for r in image_records(tmp_path / "img2", "INET_OPT")}
    assert saved >= {(level, name) for _, level, name, _ in want}, "every option set is in the image"


# The reader has not read the urgent byte (and with SO_OOBINLINE, a second one).
URGENT = r"""
import socket, sys, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname()); a = l.accept()[0]
if sys.argv[1] == "inline":
    a.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
c.send(b"data"); c.send(b"!", socket.MSG_OOB)
print("ready", flush=True)
time.sleep(600)
"""


def test_urgent_data_refused(procs, tmp_path):
    """Urgent data not read yet: refused in one line, the program left running."""
    for mode in ("oob", "inline"):
        out = tmp_path / f"out-{mode}"
        pid = procs.start([sys.executable, "-c", URGENT, mode], stdout=out).pid
        wait_until(lambda: "ready" in lines(out), what="the urgent byte sent")
        err = assert_one_line_error(run([tool("ckpt"), str(pid), "-o", str(tmp_path / "img"), "--kill"]))
        assert "urgent (out-of-band) data" in err and f"process {pid}" in err, err
        assert alive(pid)
