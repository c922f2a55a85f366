"""Security (docs/security.md): nothing written through a symlink or into
another user's file, no partial image under its final name, root's rstr
trusts only root's images, image paths must be what their records say,
RLIMIT_NOFILE raised as needed, and a late failure leaves nothing running.
Each test fails if the hole it guards reopens."""
import os
import resource
import shutil
import signal
import stat
import subprocess

import pytest

from conftest import alive, assert_one_line_error, ckpt, files_image, lines, rstr, run, tool, wait_until
from test_bad_input import rewrite_image, running_copies
from test_tree import failures, start, ticked, ticks
from usercr import records as R
from usercr.image import ImageReader

VICTIM_TEXT = b"precious\n"
OTHER_UID = 1000


def plant(link, target):
    """A symlink at link, made by another user (as an attacker would)."""
    link.symlink_to(target)
    os.lchown(link, OTHER_UID, OTHER_UID)


def victim(tmp_path):
    """A file of another user that nothing of ours may change."""
    v = tmp_path / "victim"
    v.write_bytes(VICTIM_TEXT)
    os.chown(v, OTHER_UID, OTHER_UID)
    return v


def unchanged(v):
    return v.read_bytes() == VICTIM_TEXT and os.stat(v).st_uid == OTHER_UID


def counter(procs, workloads, tmp_path, name="out"):
    out = tmp_path / name
    p = procs.start([workloads["counter"], "20"], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="counter")
    return p, out


def keeps_counting(p, out):
    n = len(lines(out))
    wait_until(lambda: len(lines(out)) >= n + 3, what="the target to keep running")
    assert alive(p.pid)


@pytest.fixture
def image(procs, workloads, tmp_path):
    """A killed counter's image, and the counter's output."""
    p, out = counter(procs, workloads, tmp_path)
    img = tmp_path / "img"
    ckpt(p.pid, img, "--kill")
    procs.kill(p.pid)
    return img


def restores(procs, img, out, *extra):
    n = len(lines(out))
    procs.track(rstr(procs, img, *extra))
    wait_until(lambda: len(lines(out)) >= n + 3, what="the restored counter")


# (a) What ckpt, rstr and usercr run write

@pytest.mark.parametrize("force", [False, True], ids=["no-f", "f"])
def test_symlink_at_output_is_not_followed(procs, workloads, tmp_path, force):
    p, out = counter(procs, workloads, tmp_path)
    v, img = victim(tmp_path), tmp_path / "img"
    plant(img, v)
    r = run([tool("ckpt"), str(p.pid), "-o", str(img)] + (["-f"] if force else []))
    assert unchanged(v)
    if force:
        assert r.returncode == 0, r.stderr
        st = os.lstat(img)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
        assert run([tool("ckptinfo"), str(img)]).returncode == 0
    else:
        assert "exists; use -f" in assert_one_line_error(r)
        assert os.readlink(img) == str(v)
    assert sorted(os.listdir(tmp_path)) == ["img", "out", "victim"]  # no temporary file left
    keeps_counting(p, out)


def test_dangling_symlink_at_output_creates_nothing_through_it(procs, workloads, tmp_path):
    p, out = counter(procs, workloads, tmp_path)
    img, target = tmp_path / "img", tmp_path / "elsewhere"
    plant(img, target)
    assert "exists" in assert_one_line_error(run([tool("ckpt"), str(p.pid), "-o", str(img)]))
    ckpt(p.pid, img, "-f")
    assert not target.exists() and not img.is_symlink()


def _start_ckpt_of_bigmem(procs, workloads, tmp_path, *extra):
    """ckpt -o img of the bigmem tree (3 x 64 MiB); returns (ckpt Popen, root, out, img)."""
    out, img = tmp_path / "out", tmp_path / "img"
    root = start(procs, workloads["bigmem"], out)
    c = subprocess.Popen([tool("ckpt"), str(root), "-o", str(img), *extra], stderr=subprocess.PIPE, text=True)
    procs.popens.append(c)
    return c, root, out, img


def _others(tmp_path, known=("out", "victim")):
    return [tmp_path / n for n in os.listdir(tmp_path) if n not in known]


def _stop_when_written(c, tmp_path, size):
    """Stops ckpt once a file of at least size bytes is in the directory; returns that file."""
    def big():
        if c.poll() is not None:
            return "exited"
        return next((f for f in _others(tmp_path) if f.stat().st_size >= size), None)
    got = wait_until(big, 30, "ckpt to be writing")
    assert got != "exited", "ckpt finished before the test could stop it"
    os.kill(c.pid, signal.SIGSTOP)
    return got


def test_sigkilled_ckpt_leaves_no_image_under_the_final_name(procs, workloads, tmp_path):
    c, root, out, img = _start_ckpt_of_bigmem(procs, workloads, tmp_path)
    partial = _stop_when_written(c, tmp_path, 1 << 20)
    assert not os.path.lexists(img), "the image is being written under its final name"
    os.kill(c.pid, signal.SIGKILL)
    c.wait(timeout=10)
    assert not os.path.lexists(img)
    assert partial.name.startswith(".img.") and stat.S_IMODE(partial.stat().st_mode) == 0o600
    ticked(out, ticks(out)[-1] + 3)  # the tree runs on, untouched


@pytest.mark.parametrize("force", [False, True], ids=["no-f", "f"])
def test_symlink_planted_during_the_dump(procs, workloads, tmp_path, force):
    """The name is taken atomically at the end: without -f a name that
    appeared meanwhile is kept (and --kill kills nothing); with -f a symlink
    there is replaced, not followed."""
    c, root, out, img = _start_ckpt_of_bigmem(procs, workloads, tmp_path, "--kill", *(["-f"] if force else []))
    _stop_when_written(c, tmp_path, 0)
    v = victim(tmp_path)
    plant(img, v)
    os.kill(c.pid, signal.SIGCONT)
    c.wait(timeout=60)
    assert unchanged(v)
    if force:
        assert c.returncode == 0, c.stderr.read()
        assert stat.S_ISREG(os.lstat(img).st_mode)
        wait_until(lambda: not alive(root), 10, "--kill to kill the root")
    else:
        err = c.stderr.read().strip()
        assert c.returncode == 1 and "\n" not in err and "appeared meanwhile" in err, err
        assert os.readlink(img) == str(v)
        assert _others(tmp_path, ("out", "victim", "img")) == []
        ticked(out, ticks(out)[-1] + 3)


def test_own_symlink_or_special_file_at_output_is_not_replaced(procs, workloads, image, tmp_path):
    """-f and pidfiles replace a regular file or a planted symlink, but not
    the caller's own symlink (think /dev/stdout as root) nor a device, FIFO or
    socket node (think /dev/null): a FIFO stands in for those."""
    p, out = counter(procs, workloads, tmp_path, "out2")
    v, link, node = victim(tmp_path), tmp_path / "link", tmp_path / "node"
    link.symlink_to(v)
    os.mkfifo(node)
    for path, why in ((link, "symbolic link of yours"), (node, "FIFO")):
        err = assert_one_line_error(run([tool("ckpt"), str(p.pid), "-o", str(path), "-f", "--kill"]))
        assert why in err, err
        keeps_counting(p, out)
        err = assert_one_line_error(run([tool("rstr"), "-i", str(image), "-W", "--pidfile", str(path)]))
        assert why in err and running_copies(workloads["counter"]) == [p.pid], err
    assert stat.S_ISFIFO(os.lstat(node).st_mode) and os.readlink(link) == str(v) and unchanged(v)
    assert sorted(os.listdir(tmp_path)) == ["img", "link", "node", "out", "out2", "victim"]


def test_rstr_pidfile_symlink_is_replaced_not_followed(procs, image, tmp_path):
    v, pidfile = victim(tmp_path), tmp_path / "pidfile"
    plant(pidfile, v)
    r = run([tool("rstr"), "-i", str(image), "-W", "--pidfile", str(pidfile)])
    assert r.returncode == 0, r.stderr
    assert not pidfile.is_symlink()
    pid = procs.track(int(pidfile.read_text()))
    assert alive(pid) and unchanged(v)


def test_usercr_run_pidfile_symlink_is_replaced_not_followed(procs, tmp_path):
    v, pidfile = victim(tmp_path), tmp_path / "pidfile"
    plant(pidfile, v)
    procs.start([tool("usercr"), "run", "--pidfile", str(pidfile), "--", "sleep", "30"])
    pid = procs.track(int(wait_until(lambda: not pidfile.is_symlink() and pidfile.read_text(), what="the pidfile")))
    assert alive(pid) and unchanged(v)
    assert sorted(os.listdir(tmp_path)) == ["pidfile", "victim"]


def _log_cases(tmp_path):
    """(log path, what the error says): a symlink to a victim, another user's file, a FIFO."""
    v = victim(tmp_path)
    link, theirs, fifo = tmp_path / "link.log", tmp_path / "theirs.log", tmp_path / "fifo.log"
    link.symlink_to(v)
    theirs.write_bytes(b"")
    os.chown(theirs, OTHER_UID, OTHER_UID)
    os.mkfifo(fifo)
    return v, [(link, "symbolic link"), (theirs, f"uid {OTHER_UID}"), (fifo, "not a regular file")]


def test_ckpt_logfile_refused_unless_ours(procs, workloads, tmp_path):
    p, out = counter(procs, workloads, tmp_path)
    v, cases = _log_cases(tmp_path)
    for log, why in cases:
        r = run([tool("ckpt"), str(p.pid), "-o", str(tmp_path / "img"), "--kill", "-v", "-l", str(log)])
        assert why in assert_one_line_error(r)
        assert not (tmp_path / "img").exists()
    assert unchanged(v) and os.stat(tmp_path / "theirs.log").st_size == 0
    keeps_counting(p, out)
    good = tmp_path / "good.log"
    ckpt(p.pid, tmp_path / "img", "-v", "-l", str(good))
    assert "image complete" in good.read_text() and stat.S_IMODE(good.stat().st_mode) == 0o600


def test_rstr_logfile_refused_unless_ours(procs, workloads, image, tmp_path):
    v, cases = _log_cases(tmp_path)
    for log, why in cases:
        assert why in assert_one_line_error(run([tool("rstr"), "-i", str(image), "-l", str(log)]))
    assert unchanged(v) and running_copies(workloads["counter"]) == []


# (b) What root's rstr trusts

def _chown_other(img):
    os.chown(img, OTHER_UID, OTHER_UID)


def _world_writable(img):
    os.chmod(img, 0o666)


@pytest.mark.parametrize("change", [_chown_other, _world_writable], ids=["other-owner", "world-writable"])
def test_root_refuses_an_image_others_could_have_written(procs, workloads, image, tmp_path, change):
    change(image)
    owner = f"uid {OTHER_UID}" if change is _chown_other else "uid 0 (root)"
    for how in (["-i", str(image)], ["--input-fd", "0"]):
        with open(image) as f:
            err = assert_one_line_error(run([tool("rstr"), *how], stdin=f))
        assert owner in err and "--trust-image" in err, err
    assert running_copies(workloads["counter"]) == []
    restores(procs, image, tmp_path / "out", "--trust-image")


def test_a_pipe_is_the_callers_own_pipeline(procs, image, tmp_path):
    _chown_other(image)
    pidfile = tmp_path / "pid"
    with open(image, "rb") as f:
        cat = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
    r = run([tool("rstr"), "-W", "--pidfile", str(pidfile)], stdin=cat.stdout)
    cat.stdout.close()
    cat.wait(timeout=10)
    assert r.returncode == 0, r.stderr
    procs.track(int(pidfile.read_text()))


@pytest.fixture
def fifo_image(procs, workloads, tmp_path):
    """A killed fifo workload's image (the FIFO holds data), its output."""
    out, img = tmp_path / "out", tmp_path / "img"
    root = start(procs, workloads["fifo"], out, tmp_path)
    ckpt(root, img, "--kill")
    for pid in [root] + [int(c) for c in open(f"/proc/{root}/task/{root}/children").read().split()]:
        procs.kill(pid)
    return img


def test_fifo_record_naming_a_regular_file_is_refused(procs, workloads, fifo_image, tmp_path):
    v = victim(tmp_path)
    before = os.stat(v)

    def to_victim(meta, begin):
        fifos = [m for m in meta if m.name == "FILE" and m.fields["kind"] == R.FD_KINDS.FIFO]
        assert fifos and all(stat.S_ISFIFO(m.fields["mode"]) for m in fifos)
        for m in fifos:
            m.fields["tail"] = str(v)
        pipes = [m for m in meta if m.name == "PIPE" and m.fields["ino"] == fifos[0].fields["ino"]]
        assert pipes[0].fields["tail"], "the FIFO should hold data (it would be written into the file)"
    rewrite_image(fifo_image, to_victim)
    err = assert_one_line_error(run([tool("rstr"), "-i", str(fifo_image)]))
    assert str(v) in err and "regular file" in err and "FIFO" in err, err
    after = os.stat(v)
    assert unchanged(v) and (after.st_mtime_ns, after.st_atime_ns) == (before.st_mtime_ns, before.st_atime_ns)
    assert running_copies(workloads["fifo"]) == []


def test_open_file_replaced_by_a_symlink_is_refused(procs, workloads, tmp_path):
    img, src = files_image(procs, workloads, tmp_path)
    other = tmp_path / "other"
    shutil.move(src, other)
    src.symlink_to(other)  # same size, same content: only the link is new
    err = assert_one_line_error(run([tool("rstr"), "-i", str(img)]))
    assert str(src) in err and "symbolic link" in err, err
    assert running_copies(workloads["files"]) == []


# (c) Resources and late failures

def _nofile(soft, hard=None):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                                                    if hard is None else hard))
    return set_limit


def test_a_thousand_fds_restore_under_a_soft_limit_of_1024(procs, workloads, tmp_path):
    data, out, img, pidfile = tmp_path / "data", tmp_path / "out", tmp_path / "img", tmp_path / "pid"
    data.write_bytes(bytes(range(256)) * 4)
    p = procs.start([workloads["manyfds"], str(data), "1000"], stdout=out, preexec_fn=_nofile(1024))
    wait_until(lambda: failures(out) or len(ticks(out)) >= 2, 30, "manyfds to tick")
    assert_no_failures(out)
    ckpt(p.pid, img, "--kill")
    procs.kill(p.pid)
    low = assert_one_line_error(run([tool("rstr"), "-i", str(img)], preexec_fn=_nofile(1024, 1024)))
    assert "RLIMIT_NOFILE" in low and "hard limit" in low, low
    assert running_copies(workloads["manyfds"]) == []
    last = ticks(out)[-1]
    r = run([tool("rstr"), "-i", str(img), "-W", "--pidfile", str(pidfile)], preexec_fn=_nofile(1024))
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(pidfile.read_text()))
    wait_until(lambda: failures(out) or ticks(out)[-1] >= last + 3, 30, "the restored process to tick")
    assert_no_failures(out)
    limits = [ln for ln in open(f"/proc/{pid}/limits") if ln.startswith("Max open files")][0].split()
    assert limits[3] == "1024", limits  # its own limit, not the one rstr raised for itself
    assert len(os.listdir(f"/proc/{pid}/fd")) == 1003


def image_root_pid(img):
    fd = os.open(img, os.O_RDONLY)
    try:
        reader = ImageReader(fd)
        reader.header()
        while True:
            rec = reader.next()
            if rec.name == "PIDS":
                return rec["pid"]
    finally:
        os.close(fd)


def assert_no_failures(out):
    assert not failures(out), failures(out)


def test_unwritable_pidfile_kills_the_restored_process(procs, workloads, image, tmp_path):
    """Restored with --pids, so the process to look for has the image's PID."""
    pid = image_root_pid(image)
    assert not alive(pid)
    err = assert_one_line_error(run([tool("rstr"), "-i", str(image), "--pids", "-W",
                                     "--pidfile", str(tmp_path / "no" / "such" / "dir")]))
    assert "cannot create" in err and "no/such/dir" in err, err
    assert not alive(pid) and running_copies(workloads["counter"]) == []


def test_log_write_failure_kills_the_restored_process(procs, workloads, image, tmp_path):
    """The log's last line ("restored ...") is written once the tree exists; a
    file size limit makes that write fail."""
    log = tmp_path / "log"
    log.write_bytes(b"x" * 4096)

    def fsize():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    err = assert_one_line_error(run([tool("rstr"), "-i", str(image), "-W", "-l", str(log)], preexec_fn=fsize))
    assert "cannot write log file" in err, err
    assert running_copies(workloads["counter"]) == []
