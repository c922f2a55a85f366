"""epoll across restarts: a C program's epoll set over pipes (data pending,
a registration whose fd was closed, a nested epoll, fired one-shots), an
asyncio program on pipes, the flags fdinfo shows, and the refusal of a
registration whose file the tree no longer holds."""
import os
import re
import select
import sys

from conftest import assert_one_line_error, ckpt, lines, rstr, run, tool, wait_until

TFD = re.compile(r"tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)")


def registrations(pid):
    """{epoll fd: sorted [(tfd, events, data)]} of a process, from its fdinfo."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        out[int(fd)] = sorted((int(t), int(e, 16), int(d, 16)) for t, e, d in TFD.findall(text))
    return out


def ticks(out):
    return [int(x.split()[1]) for x in lines(out) if x.startswith("tick ")]


def no_bad(out):
    bad = [x for x in lines(out) if "BAD" in x or "Traceback" in x or "Error" in x]
    assert not bad, bad


def stable(regs):
    """The registrations without the armed state of one-shots a running
    program re-arms (EPOLL_CTL_MOD) at any moment."""
    shot = select.EPOLLONESHOT
    return {k: sorted((t, ev & ~0xffff if ev & shot and ev & 0xffff else ev, d) for t, ev, d in v)
            for k, v in regs.items()}


def cycles(procs, tmp_path, pid, out, progress, n=3, check=None):
    """n times: checkpoint with --kill, restart, and see the program go on."""
    for cycle in range(n):
        wait_until(lambda: progress() >= 3, what="progress before the checkpoint")
        before = stable(registrations(pid))
        img = tmp_path / f"img{cycle}"
        ckpt(pid, img, "--kill")
        procs.kill(pid)
        mark = progress()
        pid = rstr(procs, img)
        assert stable(registrations(pid)) == before
        if check:
            check(pid)
        wait_until(lambda: progress() >= mark + 3, what="progress after the restart")
        no_bad(out)
    return pid


def test_epoll_set_of_pipes(procs, workloads, tmp_path):
    """Pipe A (full at every checkpoint), pipe B registered under an fd
    number it no longer has, a nested epoll over pipe C with a re-armed
    one-shot, and a fired one-shot over pipe D that must stay silent: every
    source keeps delivering its messages in order, with its data value."""
    out = tmp_path / "out"
    pid = procs.start([workloads["epoll"]], stdout=out).pid
    wait_until(lambda: "ready" in lines(out), what="ready")
    count = lambda: len(ticks(out))
    regs = registrations(pid)
    assert sorted(len(r) for r in regs.values()) == [1, 4]
    pid = cycles(procs, tmp_path, pid, out, count)
    fired = [r for regs in registrations(pid).values() for r in regs if r[1] == select.EPOLLONESHOT]
    assert [d for _, _, d in fired] == [0x0123456789abcdef], "pipe D's one-shot stays disarmed"
    last = [x for x in lines(out) if x.startswith("counts")][-1]
    assert "d=1" in last


ASYNCIO = r"""
import asyncio, os, sys, time

class PipeEnd:
    # The loop's self-pipe on os.pipe() instead of a socketpair.
    def __init__(self, fd): self.fd = fd
    def fileno(self): return self.fd
    def setblocking(self, flag): os.set_blocking(self.fd, flag)
    def recv(self, n): return os.read(self.fd, n)
    def send(self, data): return os.write(self.fd, data)
    def close(self): os.close(self.fd)

class Loop(asyncio.SelectorEventLoop):
    def _make_self_pipe(self):
        r, w = os.pipe()
        self._ssock, self._csock = PipeEnd(r), PipeEnd(w)
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._internal_fds += 1
        self._add_reader(r, self._read_from_self)

def out(line):
    os.write(1, (line + "\n").encode())

def bad(what):
    out("BAD " + what)
    os._exit(1)

fed_r, fed_w = os.pipe()
if os.fork() == 0:
    os.close(fed_r)
    n = 0
    try:
        while True:
            os.write(fed_w, b"%d\n" % n)
            n += 1
            time.sleep(0.01)
    finally:
        os._exit(0)  # its reader gone (the test is over): quietly
os.close(fed_w)

class Lines:
    def __init__(self, name):
        self.name, self.buf, self.next = name, b"", 0
    def feed(self, data):
        if not data:
            bad(self.name + ": end of file")
        self.buf += data
        *done, self.buf = self.buf.split(b"\n")
        for x in done:
            if int(x) != self.next:
                bad(f"{self.name}: got {int(x)}, expected {self.next}")
            self.next += 1

fed, timed = Lines("fed"), Lines("timed")

class Proto(asyncio.Protocol):
    def data_received(self, data):
        fed.feed(data)
    def eof_received(self):
        bad("fed: eof")

tm_r, tm_w = os.pipe()
os.set_blocking(tm_r, False)
loop = Loop()
asyncio.set_event_loop(loop)
loop.add_reader(tm_r, lambda: timed.feed(os.read(tm_r, 4096)))
sent = [0]
def timer():
    os.write(tm_w, b"%d\n" % sent[0])
    sent[0] += 1
    loop.call_later(0.02, timer)
tick = [0]
def report():
    out(f"tick {tick[0]} fed={fed.next} timed={timed.next}")
    tick[0] += 1
    loop.call_later(0.2, report)
async def main():
    await loop.connect_read_pipe(Proto, os.fdopen(fed_r, "rb", buffering=0))
    timer()
    report()
    await asyncio.Event().wait()
loop.run_until_complete(main())
"""


def test_asyncio_on_pipes(procs, tmp_path):
    """An asyncio loop (epoll selector; its self-pipe on a pipe) reading a
    pipe a child feeds through connect_read_pipe and one its own timer
    writes through add_reader: after each restart it counts on from where it
    was, every line in order."""
    out = tmp_path / "out"
    pid = procs.start([sys.executable, "-c", ASYNCIO], stdout=out).pid
    procs.track(pid)

    def progress():
        return len(ticks(out))

    def counts():
        last = [x for x in lines(out) if x.startswith("tick ")][-1]
        return [int(v) for v in re.findall(r"=(\d+)", last)]
    wait_until(lambda: progress() >= 2, what="asyncio ticking")
    saved = []

    def check(pid):
        saved.append(counts())
    cycles(procs, tmp_path, pid, out, progress, check=check)
    wait_until(lambda: all(now > then for now, then in zip(counts(), saved[-1])), what="counting on")
    assert len(registrations(procs.pids[-1])) == 1


FLAGS = r"""
import os, select, sys, time
ep = select.epoll()
excl_r, excl_w = os.pipe()
ep.register(excl_r, select.EPOLLIN | select.EPOLLEXCLUSIVE)
et_r, et_w = os.pipe()
ep.register(et_r, select.EPOLLIN | select.EPOLLOUT | select.EPOLLET | select.EPOLLRDHUP)
shot_r, shot_w = os.pipe()
ep.register(shot_r, select.EPOLLIN | select.EPOLLONESHOT)
os.write(shot_w, b"x")
assert ep.poll(0) == [(shot_r, select.EPOLLIN)]
os.read(shot_r, 1)   # fired and disarmed; not ready any more
# A registration under an fd number that now names another file, registered too.
old_r, old_w = os.pipe()
ep.register(old_r, select.EPOLLIN)
keep = os.dup(old_r)
os.close(old_r)
new_r, new_w = os.pipe()
assert new_r == old_r
ep.register(new_r, select.EPOLLPRI)
inner = select.epoll()
inner.register(et_r, select.EPOLLIN)
ep.register(inner.fileno(), select.EPOLLIN)
os.write(et_w, b"y")
os.write(1, b"ready\n")
n = 0
while True:
    for fd, ev in ep.poll(0.1):
        if fd == shot_r:
            os.write(1, b"BAD the disarmed one-shot fired\n")
    os.write(1, b"tick %d\n" % n)
    n += 1
    time.sleep(0.1)
"""


def test_flags_and_reused_fd_numbers(procs, tmp_path):
    """EPOLLEXCLUSIVE, EPOLLET with EPOLLRDHUP, a fired one-shot whose target
    is not ready any more (back armed for EPOLLERR/EPOLLHUP only, with a
    warning), and two registrations under one fd number (the closed file's
    and the file now there), nested epoll: fdinfo shows the same registrations."""
    out = tmp_path / "out"
    pid = procs.start([sys.executable, "-c", FLAGS], stdout=out).pid
    wait_until(lambda: "ready" in lines(out), what="ready")
    before = registrations(pid)
    assert sorted(len(r) for r in before.values()) == [1, 6]
    img = tmp_path / "img"
    ckpt(pid, img, "--kill")
    procs.kill(pid)
    pidfile = tmp_path / "pid"
    r = run([tool("rstr"), "-i", str(img), "-W", "--pidfile", str(pidfile)])
    assert r.returncode == 0, r.stderr
    assert "one-shot" in r.stderr and "EPOLLERR" in r.stderr, r.stderr
    pid = procs.track(int(pidfile.read_text()))
    after = registrations(pid)
    shot = select.EPOLLONESHOT
    errhup = select.EPOLLERR | select.EPOLLHUP
    fix = {k: sorted((t, ev | errhup if ev == shot else ev, d) for t, ev, d in v) for k, v in before.items()}
    assert after == fix
    mark = len(ticks(out))
    wait_until(lambda: len(ticks(out)) >= mark + 3, what="ticking on")
    no_bad(out)


REFUSED = r"""
import os, select, sys, time
ep = select.epoll()
fd = int(sys.argv[1])
ep.register(fd, select.EPOLLIN)
os.close(fd)
n = 0
while True:
    os.write(1, b"tick %d\n" % n)
    n += 1
    time.sleep(0.05)
"""


def test_target_held_outside_the_tree_is_refused(procs, tmp_path):
    """A registration whose file only a process outside the tree holds
    (here the test) cannot come back: one line naming the fd, the process
    and epoll, and the program runs on."""
    out = tmp_path / "out"
    r, w = os.pipe()
    try:
        pid = procs.start([sys.executable, "-c", REFUSED, str(r)], stdout=out, pass_fds=(r,)).pid
        wait_until(lambda: len(ticks(out)) >= 2, what="ticking")
        res = run([tool("ckpt"), str(pid), "-o", str(tmp_path / "img"), "--kill"])
        err = assert_one_line_error(res)
        assert re.search(rf"fd \d+ of process {pid} is an epoll", err), err
        mark = len(ticks(out))
        wait_until(lambda: len(ticks(out)) >= mark + 3, what="ticking on after the refusal")
    finally:
        os.close(r)
        os.close(w)
