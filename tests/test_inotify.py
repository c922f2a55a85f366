"""inotify instances across a restart: GNU `tail -f` (which follows with
inotify) of a file that keeps growing, a program whose watch descriptors
have a gap, and a watched path that is gone at restart."""
import os
import sys

from conftest import Appender, assert_one_line_error, ckpt, lines, rstr_said, run, tool, wait_until

INOTIFY = "anon_inode:inotify"


def inotify_wds(pid):
    """{wd: (dev, ino)} of every inotify watch of pid, from fdinfo."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") != INOTIFY:
            continue
        for line in open(f"/proc/{pid}/fdinfo/{fd}"):
            if line.startswith("inotify "):
                f = dict(item.split(":", 1) for item in line.split()[1:])
                sdev = int(f["sdev"], 16)
                out[int(f["wd"], 16)] = (os.makedev(sdev >> 20, sdev & 0xfffff), int(f["ino"], 16))
    return out


def test_tail_follows_with_inotify(procs, tmp_path):
    """`tail -f` (inotify) of a file another process keeps appending to:
    after each restore tail prints the new lines, every line once, in order."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.write_text("")
    st = os.stat(data)
    with Appender(data) as appender:
        pid = procs.start(["tail", "-n", "+1", "-f", str(data)], stdout=out).pid
        for cycle in range(3):
            wait_until(lambda: len(lines(out)) >= 5 * (cycle + 1), what="tail printing")
            assert (st.st_dev, st.st_ino) in inotify_wds(pid).values(), "tail follows the file with inotify"
            img = tmp_path / f"img{cycle}"
            ckpt(pid, img, "--kill")
            procs.kill(pid)
            pid, _ = rstr_said(procs, img)   # warns of the IN_MODIFY queued meanwhile: the writer keeps on
            assert (st.st_dev, st.st_ino) in inotify_wds(pid).values(), "the restored tail has its watch"
        count = len(lines(out))
        wait_until(lambda: len(lines(out)) > count + 5, what="tail printing after the last restore")
        appender.stop()
        wait_until(lambda: len(lines(out)) >= len(appender.written), what="tail to catch up")
        assert [int(x) for x in lines(out)] == appender.written


def _events(out):
    return [line.split()[1:] for line in lines(out) if line.startswith("event ")]


def test_watch_descriptors_with_a_gap(procs, workloads, tmp_path):
    """Watches on a directory and two files, with wds 1, 2, 4 (wd 3 was
    removed): after each of three restores the same wds are on the same
    objects and events arrive with the right wd."""
    d, out = tmp_path / "w", tmp_path / "out"
    d.mkdir()
    pid = procs.start([workloads["inotify"], str(d)], stdout=out).pid
    wait_until(lambda: "ready" in lines(out), what="the workload to set up its watches")
    assert "watches dir=1 a=2 b=4" in lines(out)
    ids = {wd: (os.stat(p).st_dev, os.stat(p).st_ino) for wd, p in ((1, d), (2, d / "a"), (4, d / "b"))}
    assert inotify_wds(pid) == ids
    for cycle in range(4):
        seen = len(_events(out))
        with open(d / "a", "a") as f:
            f.write("a\n")
        with open(d / "b", "a") as f:
            f.write("b\n")
        (d / f"new{cycle}").touch()
        os.unlink(d / f"new{cycle}")
        want = [["2", "2", "-"], ["4", "2", "-"], ["1", "100", f"new{cycle}"], ["1", "200", f"new{cycle}"]]
        wait_until(lambda: len(_events(out)) >= seen + len(want), what=f"events of round {cycle}")
        assert _events(out)[seen:] == want, lines(out)
        if cycle == 3:
            break
        img = tmp_path / f"img{cycle}"
        ckpt(pid, img, "--kill")
        procs.kill(pid)
        pid, err = rstr_said(procs, img)
        assert inotify_wds(pid) == ids, "the same watch descriptors on the same objects"
    assert not [line for line in lines(out) if line.startswith("BAD")], lines(out)


IDLE = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
assert libc.inotify_add_watch(fd, sys.argv[1].encode(), 2) == 1
open(sys.argv[2], "w").close()
while True:
    time.sleep(1)
"""


def test_watched_path_gone_and_queued_events(procs, tmp_path):
    """A watched file deleted before the restart: rstr fails in one line
    naming it. Restarted once it is back: events queued and not read at the
    checkpoint are lost, and rstr's warning says so."""
    watched, ready = tmp_path / "watched", tmp_path / "ready"
    watched.write_text("")
    pid = procs.start([sys.executable, "-c", IDLE, str(watched), str(ready)]).pid
    wait_until(ready.exists, what="the watch")
    with open(watched, "a") as f:
        f.write("x\n")   # an IN_MODIFY event the program never reads
    img = tmp_path / "img"
    ckpt(pid, img, "--kill")
    procs.kill(pid)
    watched.unlink()
    r = run([tool("rstr"), "-i", str(img), "-W", "--pidfile", str(tmp_path / "pid")])
    err = assert_one_line_error(r)
    assert str(watched) in err and "inotify" in err, err
    watched.write_text("")
    pid, err = rstr_said(procs, img)
    assert "inotify events" in err and "lost" in err, err
    assert list(inotify_wds(pid)) == [1]


HOLDER = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
assert libc.inotify_add_watch(fd, sys.argv[1].encode(), 2) == 1
os.unlink(sys.argv[1])
open(sys.argv[2], "w").close()
while True:
    time.sleep(1)
"""


def test_watch_on_deleted_file_refused(procs, tmp_path):
    """A watch on a file deleted while it is open (here by the test) has no
    path: ckpt refuses in one line naming fd, PID and kind, and the program
    runs on."""
    watched, ready = tmp_path / "watched", tmp_path / "ready"
    watched.write_text("")
    with open(watched) as keep:   # the watch outlives the unlink while the file is open
        pid = procs.start([sys.executable, "-c", HOLDER, str(watched), str(ready)]).pid
        wait_until(ready.exists, what="the watch")
        r = run([tool("ckpt"), str(pid), "-o", str(tmp_path / "img"), "--kill"])
        err = assert_one_line_error(r)
        assert f"process {pid}" in err and "fd 3" in err and INOTIFY in err, err
        assert not (tmp_path / "img").exists()
        assert list(inotify_wds(pid)) == [1], "the program runs on with its watch"
        assert keep.readable()
