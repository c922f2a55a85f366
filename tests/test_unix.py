"""Unix sockets across restarts, with real Python programs: a socketpair
between a parent and its child with numbered messages queued both ways
(stream, datagram, seqpacket), a server listening on a named and on an
abstract socket with clients of its own tree and a new one after each
restart, and the refusals (a peer outside the tree, descriptors in
flight), which leave the program running."""
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import alive, assert_one_line_error, ckpt, lines, rstr, run, tool, wait_until
from usercr.arch import current
from usercr.image import ImageReader
from usercr.model import Image

CYCLES = 3

# Parent and child each keep AHEAD messages on their way to the other and
# answer each one they get after a pause, so the queues are never empty.
PAIR = r"""
import os, socket, struct, sys, time
out, kind = open(sys.argv[1], "a", buffering=1), getattr(socket, "SOCK_" + sys.argv[2])
AHEAD = 3
a, b = socket.socketpair(socket.AF_UNIX, kind)
CREATOR = (os.getpid(), os.geteuid(), os.getegid())  # SO_PEERCRED of both ends: whoever made the pair

def talk(s, me, other):
    buf, got, sent = b"", 0, 0
    for _ in range(AHEAD):
        s.sendall(f"{me}{sent}\n".encode()); sent += 1
    while True:
        if kind == socket.SOCK_STREAM:
            while b"\n" not in buf:
                chunk = s.recv(7)   # any cut: a stream has no boundaries
                assert chunk, "EOF"
                buf += chunk
            msg, buf = buf.split(b"\n", 1)
        else:
            msg = s.recv(100)
            assert msg.endswith(b"\n") and msg.count(b"\n") == 1, msg  # one message, whole
            msg = msg[:-1]
        assert msg == f"{other}{got}".encode(), (msg, got)
        cred = struct.unpack("=iII", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        assert cred == CREATOR, (cred, CREATOR)
        out.write(f"{me} got {got}\n")
        got += 1
        time.sleep(0.03)
        s.sendall(f"{me}{sent}\n".encode()); sent += 1

if os.fork() == 0:
    a.close()
    talk(b, "c", "p")
b.close()
talk(a, "p", "c")
"""

SERVER = r"""
import os, select, socket, struct, sys, time
cred = lambda s: struct.unpack("=iII", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
out, path, abstract = open(sys.argv[1], "a", buffering=1), sys.argv[2], b"\0" + sys.argv[3].encode()
listeners = []
for addr in (path, abstract):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(addr)
    s.listen(8)
    listeners.append(s)

def client(addr, tag):
    for s in listeners:
        s.close()
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(addr)
    f = c.makefile("rb")
    sent = 0
    for _ in range(2):
        c.sendall(f"{tag}{sent}\n".encode()); sent += 1
    n = 0
    while True:
        line = f.readline()
        assert line == f"echo {tag}{n}\n".encode(), (line, n)
        assert cred(c) == (os.getppid(), 0, 0), cred(c)  # the listener's: the server's, root
        out.write(f"{tag} {n}\n")
        n += 1
        time.sleep(0.03)
        c.sendall(f"{tag}{sent}\n".encode()); sent += 1

for addr, tag in ((path, "named"), (abstract, "abstract")):
    if os.fork() == 0:
        client(addr, tag)
conns, seen = {}, {}
while True:
    ready, _, _ = select.select(listeners + list(conns), [], [])
    for s in ready:
        if s in listeners:
            c, _ = s.accept()
            conns[c] = b""
            seen[c] = cred(c)
            continue
        assert cred(s) == seen[s], (cred(s), seen[s])
        data = s.recv(4096)
        if not data:
            del conns[s]
            s.close()
            continue
        *done, conns[s] = (conns[s] + data).split(b"\n")
        for msg in done:
            s.sendall(b"echo " + msg + b"\n")
"""


def image_sockets(img):
    """The UNIX_SOCK records of an image and how many messages are queued for each."""
    fd = os.open(img, os.O_RDONLY)
    try:
        image = Image(ImageReader(fd), current())
    finally:
        os.close(fd)
    queued = {}
    for m in image.tree_records("UNIX_MSG"):
        queued[m["ino"]] = queued.get(m["ino"], 0) + 1
    return image.tree_records("UNIX_SOCK"), queued


def image_records(img, name):
    fd = os.open(img, os.O_RDONLY)
    try:
        return Image(ImageReader(fd), current()).tree_records(name)
    finally:
        os.close(fd)


def counts(out, who):
    """The numbers `who got N` in the log, which must run 0, 1, 2... with no gap or repeat."""
    got = [int(line.split()[-1]) for line in lines(out) if line.startswith(f"{who} ")]
    assert got == list(range(len(got))), f"{who}: {got}"
    return len(got)


def cycle(procs, pid, img):
    ckpt(pid, img, "--kill")
    procs.kill(pid)
    return rstr(procs, img)


@pytest.mark.parametrize("kind", ["STREAM", "DGRAM", "SEQPACKET"])
def test_socketpair_with_child(procs, tmp_path, kind):
    """A socketpair between parent and child, messages queued both ways at
    each checkpoint: every message arrives once, in order, whole, and both
    ends see the pair's creator in SO_PEERCRED (the program checks)."""
    out = tmp_path / "out"
    pid = procs.start([sys.executable, "-c", PAIR, str(out), kind]).pid
    both_ways = 0
    for k in range(CYCLES):
        seen = min(counts(out, "p"), counts(out, "c"))
        wait_until(lambda: min(counts(out, "p"), counts(out, "c")) >= seen + 5, what="messages both ways")
        img = tmp_path / f"img{k}"
        pid = cycle(procs, pid, img)
        socks, queued = image_sockets(img)
        assert len(socks) == 2 and {s["peer"] for s in socks} == {s["ino"] for s in socks}
        both_ways += all(queued.get(s["ino"]) for s in socks)
    seen = min(counts(out, "p"), counts(out, "c"))
    wait_until(lambda: min(counts(out, "p"), counts(out, "c")) >= seen + 5, what="messages after the last restart")
    assert both_ways, "no checkpoint had messages queued in both directions"


def talk_to(addr, msg):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(addr)
        c.sendall(msg + b"\n")
        f = c.makefile("rb")
        return f.readline()


def test_server_named_and_abstract(procs, tmp_path):
    """A server listening on a path and on an abstract name, with a client
    of its own on each: they go on where they were, and a new client from
    outside is answered on both after every restart; SO_PEERCRED shows the
    server to its clients and each client to the server (the program checks)."""
    out, path = tmp_path / "out", str(tmp_path / "sock")
    abstract = f"usercr-test-{os.getpid()}-{time.monotonic_ns()}"
    pid = procs.start([sys.executable, "-c", SERVER, str(out), path, abstract]).pid
    for k in range(CYCLES):
        seen = min(counts(out, "named"), counts(out, "abstract"))
        wait_until(lambda: min(counts(out, "named"), counts(out, "abstract")) >= seen + 5, what="clients talking")
        img = tmp_path / f"img{k}"
        pid = cycle(procs, pid, img)
        socks, _ = image_sockets(img)
        assert sum(s["state"] == 10 for s in socks) == 2, "two listeners"  # TCP_LISTEN
        assert talk_to(path, f"new{k}".encode()) == f"echo new{k}\n".encode()
        assert talk_to(b"\0" + abstract.encode(), b"abs") == b"echo abs\n"
        assert os.stat(path).st_mode & 0o170000 == 0o140000
    seen = min(counts(out, "named"), counts(out, "abstract"))
    wait_until(lambda: min(counts(out, "named"), counts(out, "abstract")) >= seen + 5, what="clients talking on")


OUTSIDE_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(1)
c, _ = s.accept()
while c.recv(100):
    pass
"""

CLIENT = r"""
import socket, sys, time
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(sys.argv[1])
out = open(sys.argv[2], "a", buffering=1)
n = 0
while True:
    c.sendall(b"x"); out.write(f"{n}\n"); n += 1
    time.sleep(0.02)
"""


def test_peer_outside_the_tree_is_refused(procs, tmp_path):
    """A program connected to a server that is not in its tree: ckpt --kill
    refuses in one line naming the fd, the PID and the kind, and the program
    runs on."""
    path, out = str(tmp_path / "sock"), tmp_path / "out"
    procs.start([sys.executable, "-c", OUTSIDE_SERVER, path])
    wait_until(lambda: os.path.exists(path), what="the outside server")
    pid = procs.start([sys.executable, "-c", CLIENT, path, str(out)]).pid
    wait_until(lambda: len(lines(out)) >= 3, what="the client")
    r = run([tool("ckpt"), str(pid), "-o", str(tmp_path / "img"), "--kill"])
    err = assert_one_line_error(r)
    assert f"process {pid}" in err and "fd 3" in err and "unix stream socket" in err and "outside the tree" in err, err
    n = len(lines(out))
    wait_until(lambda: len(lines(out)) >= n + 3, what="the client to run on")
    assert alive(pid)


IN_FLIGHT = r"""
import array, os, socket, sys, time
a, b = socket.socketpair()
a.sendmsg([b"fd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [1]))])
out = open(sys.argv[1], "a", buffering=1)
n = 0
while True:
    out.write(f"{n}\n"); n += 1
    time.sleep(0.02)
"""


def test_descriptors_in_flight_are_refused(procs, tmp_path):
    """A descriptor sent with SCM_RIGHTS and not received yet: refused in one
    line, the program runs on."""
    out = tmp_path / "out"
    pid = procs.start([sys.executable, "-c", IN_FLIGHT, str(out)]).pid
    wait_until(lambda: len(lines(out)) >= 3, what="the program")
    r = run([tool("ckpt"), str(pid), "-o", str(tmp_path / "img"), "--kill"])
    err = assert_one_line_error(r)
    assert f"process {pid}" in err and "SCM_RIGHTS" in err, err
    n = len(lines(out))
    wait_until(lambda: len(lines(out)) >= n + 3, what="the program to run on")


def test_checkpoint_without_kill_consumes_nothing(procs, tmp_path):
    """ckpt without --kill reads the queues with MSG_PEEK: the program runs
    on with every message, in order (it checks each number itself)."""
    out = tmp_path / "out"
    pid = procs.start([sys.executable, "-c", PAIR, str(out), "DGRAM"]).pid
    for k in range(CYCLES):
        seen = min(counts(out, "p"), counts(out, "c"))
        wait_until(lambda: min(counts(out, "p"), counts(out, "c")) >= seen + 3, what="messages both ways")
        ckpt(pid, tmp_path / f"img{k}")
    seen = min(counts(out, "p"), counts(out, "c"))
    wait_until(lambda: min(counts(out, "p"), counts(out, "c")) >= seen + 5, what="messages after the checkpoints")
    assert alive(pid)


BACKLOG = r"""
import os, socket, struct, sys, time
cred = lambda s: struct.unpack("=iII", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
out, path, gate = open(sys.argv[1], "a", buffering=1), sys.argv[2], sys.argv[3]
server = os.getpid()
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(path)
l.listen(8)
for batch in range(1000):
    kids = []
    for i in range(2):
        pid = os.fork()
        if pid == 0:
            l.close()
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(path)
            out.write(f"connected {batch}.{i}\n")
            assert c.recv(10) == b"hi", "greeting"
            assert cred(c) == (server, 0, 0), cred(c)
            c.sendall(str(os.getpid()).encode())
            os._exit(0)
        kids.append(pid)
    while not os.path.exists(f"{gate}{batch}"):
        time.sleep(0.02)
    for _ in range(3):  # two clients of the tree, then one from outside
        c, _ = l.accept()
        c.settimeout(10)
        pid = cred(c)[0]
        try:
            c.sendall(b"hi")
            data = c.recv(20)
        except BrokenPipeError:  # the client is gone
            data = b""
        if data:
            assert int(data) == pid and pid in kids, (data, pid, kids)
            out.write(f"batch {batch} client {kids.index(pid)} ok\n")
        else:
            out.write(f"batch {batch} outside {pid}\n")
        c.close()
    for pid in kids:
        os.waitpid(pid, 0)
"""

OUTSIDE_CLIENT = r"""
import socket, sys, time
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(sys.argv[1])
print("connected", flush=True)
time.sleep(60)
"""


def test_listener_with_connections_waiting(procs, tmp_path):
    """A server whose listener has three connections waiting to be accepted
    at each checkpoint: two from clients of its tree (blocked reading) and
    one from a process outside. After each restart it accepts them in
    order: its own clients get their greeting and answer, each side seeing
    the other's credentials as before; the outside one, gone with the
    checkpoint, reads as end of file with the credentials it connected with."""
    out, path, gate = tmp_path / "out", str(tmp_path / "sock"), str(tmp_path / "go")
    pid = procs.start([sys.executable, "-c", BACKLOG, str(out), path, gate]).pid
    for k in range(CYCLES):
        wait_until(lambda: sum(x.startswith(f"connected {k}.") for x in lines(out)) == 2, what="clients waiting")
        outside = procs.start([sys.executable, "-c", OUTSIDE_CLIENT, path], stdout=subprocess.PIPE)
        assert outside.stdout.readline() == b"connected\n"
        img = tmp_path / f"img{k}"
        ckpt(pid, img, "--kill")
        procs.kill(pid)
        procs.kill(outside.pid)
        waiting = image_records(img, "UNIX_WAITING")
        assert [w["client"] != 0 for w in waiting] == [True, True, False]
        assert waiting[2]["pid"] == outside.pid
        pid = rstr(procs, img)
        open(f"{gate}{k}", "w").close()
        wait_until(lambda: f"batch {k} outside {outside.pid}" in lines(out), what="the waiting connections accepted")
        got = [x for x in lines(out) if x.startswith(f"batch {k} ")]
        assert sorted(got[:2]) == [f"batch {k} client 0 ok", f"batch {k} client 1 ok"]
        assert got[2:] == [f"batch {k} outside {outside.pid}"]
    assert alive(pid)


def test_waiting_connection_with_data_is_refused(procs, tmp_path):
    """Bytes a client sent on a connection not accepted yet cannot be read
    without accepting it: refused in one line, the server runs on."""
    path, out = str(tmp_path / "sock"), tmp_path / "out"
    pid = procs.start([sys.executable, "-c", BACKLOG, str(out), path, str(tmp_path / "go")]).pid
    wait_until(lambda: len(lines(out)) == 2, what="clients waiting")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(path)
        c.sendall(b"early")
        r = run([tool("ckpt"), str(pid), "-o", str(tmp_path / "img"), "--kill"])
        err = assert_one_line_error(r)
        assert f"process {pid}" in err and "fd 4" in err and "unix stream socket" in err and "not accepted yet" in err, err
    assert alive(pid)
    open(tmp_path / "go0", "w").close()
    wait_until(lambda: "batch 0 client 1 ok" in lines(out), what="the server to run on")


EXT_SERVER = r"""
import os, socket, sys, threading
stream, dgram, out = sys.argv[1], sys.argv[2], open(sys.argv[3], "a", buffering=1)
def serve(c):
    while True:
        data = c.recv(100)
        if not data:
            return
        c.sendall(b"echo " + data)
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(stream); l.listen(8)
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
d.bind(dgram)
threading.Thread(target=lambda: [out.write(d.recv(100).decode() + "\n") for _ in iter(int, 1)], daemon=True).start()
print("ready", flush=True)
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

EXT_CLIENT = r"""
import os, socket, struct, sys, time
stream, dgram, out, server = sys.argv[1], sys.argv[2], open(sys.argv[3], "a", buffering=1), int(sys.argv[4])
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(stream)
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
d.connect(dgram)
n = 0
while True:
    c.sendall(b"%d" % n)
    assert c.recv(100) == b"echo %d" % n
    assert c.getpeername() == stream and d.getpeername() == dgram
    assert struct.unpack("=iII", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0] == server
    d.send(b"log %d" % n)
    out.write(f"{n}\n")
    n += 1
    time.sleep(0.02)
"""


def test_external_peer_reattached(procs, tmp_path):
    """ckpt --ext-unix-sk: a program connected to a stream server and to a
    datagram socket (syslog-like) outside its tree is reconnected to the
    same addresses after each restart and goes on talking to them; the
    server answers and SO_PEERCRED names it."""
    stream, dgram = str(tmp_path / "stream"), str(tmp_path / "dgram")
    out, log = tmp_path / "out", tmp_path / "log"
    server = procs.start([sys.executable, "-c", EXT_SERVER, stream, dgram, str(log)], stdout=subprocess.PIPE)
    assert server.stdout.readline() == b"ready\n"
    pid = procs.start([sys.executable, "-c", EXT_CLIENT, stream, dgram, str(out), str(server.pid)]).pid
    for k in range(CYCLES):
        n = len(lines(out))
        wait_until(lambda: len(lines(out)) >= n + 5, what="the client talking")
        r = run([tool("ckpt"), str(pid), "-o", str(tmp_path / "refused")])
        err = assert_one_line_error(r)
        assert f"process {pid}" in err and "fd 4" in err and "unix stream socket" in err and stream in err, err
        img = tmp_path / f"img{k}"
        for _ in range(20):  # the server's answer may be in flight: that one is refused, the client runs on
            r = run([tool("ckpt"), str(pid), "-o", str(img), "--kill", "--ext-unix-sk"])
            if r.returncode == 0 or "data queued from its peer" not in assert_one_line_error(r):
                break
            time.sleep(0.05)
        assert r.returncode == 0, r.stderr
        procs.kill(pid)
        assert len(image_records(img, "UNIX_EXTERNAL")) == 2
        pid = rstr(procs, img)
    n = len(lines(out))
    wait_until(lambda: len(lines(out)) >= n + 5, what="the client talking after the last restart")
    assert [int(x) for x in lines(out)] == list(range(len(lines(out))))
    logged = [int(x.split()[1]) for x in lines(log)]
    assert logged == list(range(len(logged))), "every datagram once, in order"
