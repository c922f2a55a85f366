"""Bad input: one clear line, a non-zero exit, no traceback, nothing left running,
and a checkpointed program that keeps running unharmed."""
import fcntl
import os
import re
import shutil
import signal
import struct
import subprocess
import termios
import time

import pytest

from conftest import Procs, alive, assert_one_line_error, ckpt, files_image, lines, rstr, run, tool, wait_until
from test_tree import failures, family, start, ticked, ticks, tree
from usercr import records as R
from usercr.image import ImageReader
from usercr.native import ffi, lib


def running_copies(exe):
    """PIDs whose executable is exe (to prove a failed restart left nothing)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/exe") == exe and alive(int(name)):
                    out.append(int(name))
            except OSError:
                pass
    return out


@pytest.fixture
def image(procs, workloads, tmp_path):
    """A killed counter's image."""
    out, img = tmp_path / "out", tmp_path / "img"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="counter")
    ckpt(p.pid, img, "--kill")
    procs.kill(p.pid)
    return img


def restart_fails(procs, workloads, img):
    r = run([tool("rstr"), "-i", str(img)], timeout=60)
    err = assert_one_line_error(r)
    assert running_copies(workloads["counter"]) == []
    return err


def mutate(img, offset, data):
    with open(img, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_truncated_in_pages(procs, workloads, image):
    os.truncate(image, os.path.getsize(image) - 5000)
    assert "truncated" in restart_fails(procs, workloads, image)
    assert "truncated" in assert_one_line_error(run([tool("ckptinfo"), str(image)]))


def test_truncated_in_metadata(procs, workloads, image):
    os.truncate(image, 1000)
    assert "truncated at offset" in restart_fails(procs, workloads, image)


def test_flipped_byte_in_page_data(procs, workloads, image):
    size = os.path.getsize(image)
    with open(image, "r+b") as f:
        f.seek(size - 100)
        b = f.read(1)
        f.seek(size - 100)
        f.write(bytes([b[0] ^ 0x40]))
    assert "checksum" in restart_fails(procs, workloads, image)
    assert "checksum" in assert_one_line_error(run([tool("ckptinfo"), str(image)]))


def test_flipped_byte_in_metadata(procs, workloads, image):
    data = open(image, "rb").read()
    at = data.index(b"/dev/null")  # a FILE record's path
    mutate(image, at, b"/dev/nulL")
    assert "checksum" in restart_fails(procs, workloads, image)


def test_wrong_magic(procs, workloads, image):
    mutate(image, 8, struct.pack("<Q", 0x1234))
    assert "not a usercr image" in restart_fails(procs, workloads, image)
    assert "bad magic" in assert_one_line_error(run([tool("ckptinfo"), str(image)]))


def test_not_an_image(procs, workloads, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(4096))
    assert "not a usercr image" in restart_fails(procs, workloads, junk)


def test_other_architecture(procs, workloads, image):
    mutate(image, 8 + 8 + 4, struct.pack("<I", R.ARCH_IDS["arm"]))
    assert "image is for arm" in restart_fails(procs, workloads, image)


def test_pid_does_not_exist(tmp_path):
    pid = 4194303
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    r = run([tool("ckpt"), str(pid), "-o", str(tmp_path / "img")])
    assert "does not exist" in assert_one_line_error(r)
    assert not (tmp_path / "img").exists()


def test_pid_in_use(procs, workloads, tmp_path):
    out, img = tmp_path / "out", tmp_path / "img"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="counter")
    ckpt(p.pid, img)
    r = run([tool("rstr"), "-i", str(img), "--pids", "--no-pidns"])
    err = assert_one_line_error(r)
    assert f"PID {p.pid} is in use" in err and "--pidns" in err and "--no-pids" in err
    assert running_copies(workloads["counter"]) == [p.pid]


def test_existing_output_needs_force(procs, workloads, tmp_path, image):
    p = procs.start([workloads["counter"], "20"], stdout=tmp_path / "out2")
    err = assert_one_line_error(run([tool("ckpt"), str(p.pid), "-o", str(image)]))
    assert "use -f" in err
    ckpt(p.pid, image, "-f")
    assert alive(p.pid)


def test_file_changed_size(procs, workloads, tmp_path):
    img, src = files_image(procs, workloads, tmp_path)
    os.truncate(src, 5000)
    err = assert_one_line_error(run([tool("rstr"), "-i", str(img), "--strict-files"]))
    assert str(src) in err and "changed size" in err
    os.truncate(src, 10)  # shorter than the saved offset
    err = assert_one_line_error(run([tool("rstr"), "-i", str(img)]))
    assert str(src) in err and "past the end" in err
    os.unlink(src)
    err = assert_one_line_error(run([tool("rstr"), "-i", str(img)]))
    assert str(src) in err and "gone" in err
    assert running_copies(workloads["files"]) == []


def _dump_blocked_on_pipe(procs, workloads, tmp_path):
    """A ckpt of the memory workload stalled on a full pipe, target frozen."""
    priv, shared, out = tmp_path / "private.bin", tmp_path / "shared.bin", tmp_path / "out"
    for f in (priv, shared):
        f.write_bytes(os.urandom(1 << 20))
    p = procs.start([workloads["memory"], str(priv), str(shared)], stdout=out)
    wait_until(lambda: any(x.startswith("ok 1") for x in lines(out)), what="memory workload")
    rfd, wfd = os.pipe()
    c = subprocess.Popen([tool("ckpt"), str(p.pid)], stdout=wfd, stderr=subprocess.PIPE, text=True)
    procs.popens.append(c)
    os.close(wfd)
    wait_until(lambda: lines(out) and open(f"/proc/{p.pid}/stat").read().split(")")[1].split()[0] == "t",
               what="target to be frozen")
    wait_until(lambda: _writing_to_pipe(c.pid), what="ckpt to block on the full pipe")
    return p, c, rfd, out


def _writing_to_pipe(pid):
    """Whether a thread of pid sleeps in a pipe write (wchan pipe_write or anon_pipe_write)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if "pipe_write" in open(f"/proc/{pid}/task/{tid}/wchan").read():
                return True
        except OSError:
            pass
    return False


def test_target_exits_during_dump(procs, workloads, tmp_path):
    p, c, rfd, _ = _dump_blocked_on_pipe(procs, workloads, tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    with os.fdopen(rfd, "rb") as r:
        while r.read(1 << 20):
            pass
    assert c.wait(timeout=30) != 0
    err = c.stderr.read().strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    assert "exited" in err or "copying memory" in err, err


def test_ckpt_killed_mid_dump_leaves_target_running(procs, workloads, tmp_path):
    p, c, rfd, out = _dump_blocked_on_pipe(procs, workloads, tmp_path)
    c.send_signal(signal.SIGKILL)
    c.wait(timeout=10)
    os.close(rfd)
    n = len(lines(out))
    wait_until(lambda: len(lines(out)) >= n + 5, what="target to keep running after ckpt died")
    assert not [x for x in lines(out) if x.startswith("BAD")]
    assert alive(p.pid)


def _timed(cmd):
    start = time.monotonic()
    subprocess.run(cmd, check=True, timeout=30)
    return time.monotonic() - start


def test_ckpt_terminated_at_any_moment_leaves_target_running(procs, workloads, tmp_path):
    """SIGTERM or SIGHUP reaching ckpt at any moment (starting, freezing, in
    the middle of the syscalls it runs inside the target, copying memory):
    one line, and the target runs on as it was, no longer traced."""
    priv, shared, out = tmp_path / "private.bin", tmp_path / "shared.bin", tmp_path / "out"
    for f in (priv, shared):
        f.write_bytes(os.urandom(1 << 20))
    p = procs.start([workloads["memory"], str(priv), str(shared)], stdout=out)
    wait_until(lambda: any(x.startswith("ok 1") for x in lines(out)), what="memory workload")
    ended = {"interrupted": 0, "finished": 0, "before its handlers": 0}
    cmd = [tool("ckpt"), str(p.pid), "-o", str(tmp_path / "img"), "-f"]
    whole = min(_timed(cmd) for _ in range(3))  # the signals land from its start to its end
    for attempt in range(24):
        c = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.popens.append(c)
        time.sleep(whole * (0.05 + attempt / 24))
        c.send_signal(signal.SIGHUP if attempt % 3 == 2 else signal.SIGTERM)
        err = c.communicate(timeout=30)[1].strip()
        sig = signal.SIGHUP if attempt % 3 == 2 else signal.SIGTERM
        if c.returncode == 0:
            ended["finished"] += 1
        elif c.returncode == -sig:  # still starting: it had not touched the target
            ended["before its handlers"] += 1
        else:
            assert c.returncode == 130 and err == "ckpt: interrupted", (c.returncode, err)
            ended["interrupted"] += 1
        n = len(lines(out))
        wait_until(lambda: len(lines(out)) >= n + 2, what=f"the target to run on after attempt {attempt}")
        assert not [x for x in lines(out) if x.startswith("BAD")]
        assert "TracerPid:\t0\n" in open(f"/proc/{p.pid}/status").read()
    assert ended["interrupted"] >= 8, ended


def test_kernel_engine_is_never_issued_on_mainline():
    from usercr.engine import kernel_engine_available, require_kernel_engine
    from usercr.errors import UcrError
    from usercr.headers import x86_64
    assert not kernel_engine_available()
    with pytest.raises(UcrError, match="313 is finit_module"):
        require_kernel_engine(x86_64)


def test_kernel_engine_detected_from_symbols(tmp_path):
    from usercr.engine import kernel_engine_available
    fake = tmp_path / "kallsyms"
    fake.write_text("ffffffff81000000 T sys_checkpoint\nffffffff81000010 T sys_restart\n")
    assert kernel_engine_available(str(fake))
    fake.write_text("ffffffff81000000 T __x64_sys_kcmp\n")
    assert not kernel_engine_available(str(fake))


def test_usercr_check():
    r = run([tool("usercr"), "check"])
    assert r.returncode == 0, r.stdout
    assert "ok       ptrace" in r.stdout and "[vdso]" in r.stdout


# Process trees ---------------------------------------------------------------

def private_exe(workloads, name, where):
    """A copy of a workload's executable for one test alone: finding processes
    by executable then sees none of another test's (or another test run's)."""
    exe = os.path.realpath(os.path.join(where, name))
    shutil.copy(workloads[name], exe)
    return exe


def our_children():
    """Live children of this test process (the subreaper), orphans included."""
    out = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            out |= {int(x) for x in f.read().split()}
    return {pid for pid in out if alive(pid)}


def left_behind(exe, before, grace=5):
    """Processes of exe and new children of ours (such as the PID 1 of a
    --pidns restore) still alive once a short grace for dying ones is over."""
    deadline = time.monotonic() + grace
    while True:
        left = running_copies(exe) + sorted(our_children() - before)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def rstr_fails(procs, img, exe, *extra):
    """Runs rstr expecting one clear error line and nothing left running;
    returns the line. A wrong success is tracked, so it cannot leak."""
    pidfile = procs.tmp / f"fail-{len(procs.pids)}.pid"
    before = our_children()
    r = run([tool("rstr"), "-i", str(img), "-W", "--pidfile", str(pidfile), *extra])
    if pidfile.exists():
        for root in pidfile.read_text().split():
            for pid in family(int(root)):
                procs.track(pid)
    err = assert_one_line_error(r)
    left = left_behind(exe, before)
    for pid in left:
        procs.track(pid)
    assert left == [], f"a failed restart ({err}) left processes running"
    return err


FREEZE_ATTEMPTS = 16


def test_tree_forking_during_freeze(procs, workloads, tmp_path):
    """All three processes fork and reap short-lived children in a tight loop.
    Every other attempt is ckpt --kill, the others a plain ckpt. Each either
    succeeds (with --kill: the image restores and ticks on, short-lived
    children caught alive or as zombies included; without: the tree runs on
    unharmed), or fails with one line saying the tree changed and leaves the
    tree running unharmed."""
    out = tmp_path / "out"
    root = start(procs, workloads["forker"], out)
    outcomes = []
    for attempt in range(FREEZE_ATTEMPTS):
        kill = attempt % 2 == 0
        img = tmp_path / f"img{attempt}"
        doomed = family(root)
        r = run([tool("ckpt"), str(root), "-o", str(img), *(["--kill"] if kill else [])])
        if r.returncode == 0 and kill:
            for pid in doomed:
                procs.kill(pid)
            last = ticks(out)[-1]
            root = rstr(procs, img, "--pids", "--pidns")
            for pid in family(root):
                procs.track(pid)
            outcomes.append("restored")
        elif r.returncode == 0:
            assert alive(root)
            outcomes.append("saved")
            last = ticks(out)[-1]
        else:
            err = assert_one_line_error(r)
            outcomes.append(err)
            assert re.search(r"exited during the checkpoint|keeps changing", err), \
                f"attempt {attempt}: not a clear reason: {err}"
            assert not img.exists(), "a failed ckpt must not leave a partial image"
            assert alive(root)
            last = ticks(out)[-1]
        ticked(out, last + 5)
    assert "restored" in outcomes, outcomes


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _pipe_bytes(fd):
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0]


@pytest.mark.parametrize("when", ["frozen", "copying-pages"])
def test_child_exits_during_dump(procs, workloads, tmp_path, when):
    """A short-lived grandchild is killed while ckpt has the tree frozen,
    either at once or once ckpt is stalled on a full pipe copying the root's
    8 MiB (the metadata of every process is written by then): one line naming
    it, and the rest of the tree goes on (its parent sees it killed, which the
    workload does not count as failure)."""
    out = tmp_path / "out"
    root = start(procs, workloads["forker"], out, 200, 8)
    rfd, wfd = os.pipe()
    c = subprocess.Popen([tool("ckpt"), str(root)], stdout=wfd, stderr=subprocess.PIPE, text=True, close_fds=True)
    procs.popens.append(c)
    os.close(wfd)
    try:
        frozen = lambda: all(_state(pid) in ("t", "Z") for pid, _ in tree(root))  # noqa: E731
        wait_until(lambda: c.poll() is not None or frozen(), what="the tree to be frozen")
        if when == "copying-pages":
            capacity = fcntl.fcntl(rfd, 1032)  # F_GETPIPE_SZ
            wait_until(lambda: c.poll() is not None or (_pipe_bytes(rfd) == capacity and _state(c.pid) == "S"),
                       what="ckpt to stall on the full pipe")
        assert c.poll() is None, c.stderr.read()
        victim = next(pid for pid, parent in tree(root) if parent not in (None, root) and _state(pid) == "t")
        os.kill(victim, signal.SIGKILL)
        with os.fdopen(rfd, "rb", closefd=False) as r:
            while r.read(1 << 20):
                pass
    finally:
        os.close(rfd)
    rc = c.wait(timeout=30)
    err = c.stderr.read().strip()
    if rc == 0:
        # The kill landed while ckpt was still scanning the frozen tree: the
        # victim went into the image as the zombie it was by then.
        assert when == "frozen" and not err, err
    else:
        assert err and "\n" not in err and "Traceback" not in err and "internal error" not in err, err
        assert f"process {victim} exited" in err, err
    wait_until(lambda: failures(out) or f"lost {victim}" in lines(out), what="the parent to see its child killed")
    ticked(out, ticks(out)[-1] + 3)
    assert alive(root)


@pytest.fixture(scope="module")
def tree_image(workloads, tmp_path_factory):
    """A killed multitask tree's image, and its private executable and tree."""
    tmp = tmp_path_factory.mktemp("tree_image")
    owner = Procs(tmp)
    try:
        exe = private_exe(workloads, "multitask", tmp)
        out = tmp / "out"
        root = start(owner, exe, out)
        ids = tree(root)
        doomed = family(root)
        ckpt(root, tmp / "img", "--kill")
        for pid in doomed:
            owner.kill(pid)
    finally:
        owner.cleanup()
    return {"img": tmp / "img", "exe": exe, "tree": ids, "out": out}


class MetaRecord:
    """One metadata record of an image: re-packed from its fields if they
    were changed, its original bytes otherwise."""

    def __init__(self, rec, raw):
        self.name, self.spec, self.raw = rec.name, rec.spec, raw
        self.fields, self._orig = dict(rec.fields), dict(rec.fields)

    def bytes(self):
        if self.fields == self._orig:
            return self.raw
        f = dict(self.fields)
        return self.spec.pack(tail=f.pop("tail", None), **f)


def _csum(data):
    state = ffi.new("uint64_t[2]")
    lib.ucr_csum_update(state, ffi.from_buffer(data), len(data))
    return state[0], state[1]


def rewrite_image(img, edit):
    """Lets edit(records, pages_begin_fields) change the metadata records
    (the list may change too), then writes the image again with the checksums
    of PAGES_BEGIN and TAIL recomputed, so only rstr's own checks can object."""
    data = img.read_bytes()
    fd = os.open(img, os.O_RDONLY)
    try:
        reader = ImageReader(fd)
        recs = [reader.header()]
        while recs[-1].type != R.PAGES_BEGIN.type:
            recs.append(reader.next())
    finally:
        os.close(fd)
    bounds = [r.offset for r in recs] + [reader.offset]
    meta = [MetaRecord(r, data[a:b]) for r, a, b in zip(recs, bounds, bounds[1:])]
    begin = meta.pop().fields
    result = edit(meta, begin)
    head = b"".join(m.bytes() for m in meta)
    a, b = _csum(head)
    head += R.PAGES_BEGIN.pack(nr_sections=begin["nr_sections"], csum_a=a, csum_b=b)
    tail_at = len(data) - R.align(R.TAIL.fixed_len)
    assert R.RECORD_HDR.unpack_from(data, tail_at)[0] == R.TAIL.type
    body = head + data[reader.offset:tail_at]
    a, b = _csum(body)
    img.write_bytes(body + R.TAIL.pack(magic=R.TAIL_MAGIC, csum_a=a, csum_b=b))
    return result


def _recs(meta, name):
    return [m for m in meta if m.name == name]


def _ppid_unknown(meta, begin):
    ids = _recs(meta, "PIDS")
    ids[3].fields["ppid"] = 4194000  # above any pid_max: no task
    return ["4194000", str(ids[3].fields["pid"])]


def _ppid_is_own_child(meta, begin):
    ids = _recs(meta, "PIDS")  # depth first: root, child 1, its children, child 2, its children
    ids[1].fields["ppid"] = ids[2].fields["pid"]
    return [str(ids[2].fields["pid"]), str(ids[1].fields["pid"])]


def _ppid_is_itself(meta, begin):
    ids = _recs(meta, "PIDS")
    ids[3].fields["ppid"] = ids[3].fields["pid"]
    return [str(ids[3].fields["pid"])]


def _duplicate_pid(meta, begin):
    ids, tasks = _recs(meta, "PIDS"), _recs(meta, "TASK")
    dup = ids[1].fields["pid"]
    ids[2].fields["pid"] = ids[2].fields["tgid"] = tasks[2].fields["pid"] = dup
    return [str(dup)]


def _pids_disagree_with_task(meta, begin):
    ids = _recs(meta, "PIDS")
    ids[4].fields["pid"] = ids[4].fields["tgid"] = 4194001
    return ["4194001"]


def _tree_count_short(meta, begin):
    tree = _recs(meta, "TREE")[0]
    tree.fields["nr_tasks"] -= 1
    return [f"{tree.fields['nr_tasks']} in TREE"]


def _pids_record_missing(meta, begin):
    meta.remove(_recs(meta, "PIDS")[-1])
    _recs(meta, "TREE")[0].fields["nr_tasks"] -= 1
    return ["PIDS", "TASK"]


def _root_not_first(meta, begin):
    ids = _recs(meta, "PIDS")
    _recs(meta, "TREE")[0].fields["root_pid"] = ids[1].fields["pid"]
    return ["root"]


def _page_sections(meta, begin):
    begin["nr_sections"] -= 1
    return ["page sections"]


def _group_without_leader(meta, begin):
    """A grandchild in the process group named after its parent, which
    leads no group: no such group can exist."""
    ids = _recs(meta, "PIDS")
    ids[3].fields["pgid"] = ids[1].fields["pid"]
    return [str(ids[1].fields["pid"]), "group"]


TREE_EDITS = [_ppid_unknown, _ppid_is_own_child, _ppid_is_itself, _duplicate_pid, _pids_disagree_with_task,
              _tree_count_short, _pids_record_missing, _root_not_first, _page_sections, _group_without_leader]


@pytest.mark.parametrize("edit", TREE_EDITS, ids=lambda f: f.__name__.strip("_"))
def test_inconsistent_tree_record(procs, tree_image, tmp_path, edit):
    img = tmp_path / "img"
    shutil.copy(tree_image["img"], img)
    want = rewrite_image(img, edit)
    assert img.read_bytes() != tree_image["img"].read_bytes()
    for how in (["--pids", "--pidns"], []):
        err = rstr_fails(procs, img, tree_image["exe"], *how)
        assert "checksum" not in err and "truncated" not in err, err
        assert all(w in err for w in want), f"{how}: expected {want} in: {err}"


def test_rewritten_image_still_restores(procs, tree_image, tmp_path):
    """The control for the test above: an unchanged rewrite is byte for byte
    the image, and one that changes only padding (re-packing the record and
    recomputing both checksums) restores and ticks on."""
    img = tmp_path / "img"
    shutil.copy(tree_image["img"], img)
    rewrite_image(img, lambda meta, begin: None)
    assert img.read_bytes() == tree_image["img"].read_bytes()

    def pad(meta, begin):
        _recs(meta, "PIDS")[2].fields["pad"] = 1
    rewrite_image(img, pad)
    assert img.read_bytes() != tree_image["img"].read_bytes()
    out = tree_image["out"]
    last = ticks(out)[-1]
    root = rstr(procs, img, "--pids", "--pidns")
    for pid in family(root):
        procs.track(pid)
    wait_until(lambda: failures(out) or (ticks(out) or [-1])[-1] >= last + 5, 30, "the restored tree to tick")
    assert not failures(out)
    assert len(tree(root)) == len(tree_image["tree"])


def _records_after_pages_begin(img):
    fd = os.open(img, os.O_RDONLY)
    try:
        reader = ImageReader(fd)
        recs = [reader.header()]
        while recs[-1].type != R.TAIL.type:
            recs.append(reader.next(skip_data=True))
    finally:
        os.close(fd)
    return recs[next(i for i, r in enumerate(recs) if r.type == R.PAGES_BEGIN.type) + 1:]


def _truncate_in_fifth_section(img):
    ends = [r for r in _records_after_pages_begin(img) if r.type == R.PAGES_END.type]
    os.truncate(img, ends[3].offset + R.PAGES_END.fixed_len + 4096)
    return "truncated"


def _flip_byte_in_root_pages(img):
    first = _records_after_pages_begin(img)[0]
    assert first.type == R.PAGES.type
    at = first.offset + R.PAGES.fixed_len + 100
    with open(img, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x40]))
    return "checksum"


@pytest.mark.parametrize("how", [["--pids", "--pidns"], []], ids=["pidns", "default"])
@pytest.mark.parametrize("damage", [_truncate_in_fifth_section, _flip_byte_in_root_pages],
                         ids=["truncated-mid-tree", "bad-page-of-root"])
def test_restart_fails_mid_tree(procs, tree_image, tmp_path, damage, how):
    """Page data is read by each process in turn after the whole tree has
    been created (and checked against the TAIL by the last one): a failure
    there must still take every restored process down."""
    img = tmp_path / "img"
    shutil.copy(tree_image["img"], img)
    want = damage(img)
    err = rstr_fails(procs, img, tree_image["exe"], *how)
    assert want in err, err


@pytest.mark.parametrize("change", ["deleted", "changed size"])
def test_file_of_non_root_changed(procs, workloads, tmp_path, change):
    """A file only a child of the root has open: its restart fails with the
    file named, and nothing of the tree is left."""
    exe = private_exe(workloads, "treefile", tmp_path)
    data, out, img = tmp_path / "data", tmp_path / "out", tmp_path / "img"
    data.write_bytes(b"x" * 1000)
    root = start(procs, exe, out, data)
    path = os.path.realpath(data)
    held = lambda pid: any(os.readlink(f"/proc/{pid}/fd/{fd}") == path for fd in os.listdir(f"/proc/{pid}/fd"))  # noqa: E731,E501
    assert not held(root) and [pid for pid, parent in tree(root) if parent and held(pid)]
    doomed = family(root)
    ckpt(root, img, "--kill")
    for pid in doomed:
        procs.kill(pid)
    if change == "deleted":
        data.unlink()
    else:
        data.write_bytes(b"x" * 10)
    for how in (["--pids", "--pidns"], []):
        err = rstr_fails(procs, img, exe, *how, "--strict-files")
        assert path in err and ("gone" if change == "deleted" else "changed size") in err, err


def test_thread_id_in_use(procs, workloads, tmp_path):
    """--pids --no-pidns while another process holds one thread's ID (the
    process's own PID is free): one clear line naming that ID."""
    exe = private_exe(workloads, "threads", tmp_path)
    out, img = tmp_path / "out", tmp_path / "img"
    root = start(procs, exe, out)
    tids = sorted(int(t) for t in os.listdir(f"/proc/{root}/task") if int(t) != root)
    ckpt(root, img, "--kill")
    procs.kill(root)
    tid = tids[-1]
    try:
        for _ in range(50):  # fork a process with PID tid (others may fork meanwhile)
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(tid - 1))
            holder = procs.start(["sleep", "60"])
            if holder.pid == tid:
                break
            procs.kill(holder.pid)
        else:
            pytest.skip(f"could not get PID {tid} for a process")
    except OSError as e:
        pytest.skip(f"cannot set the next PID: {e.strerror}")
    assert not alive(root)
    err = rstr_fails(procs, img, exe, "--pids", "--no-pidns")
    assert str(tid) in err and "in use" in err and "--pidns" in err and "--no-pids" in err, err
    assert alive(holder.pid)
