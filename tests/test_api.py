"""The Python API (docs/api.md): usercr.checkpoint, usercr.restart,
usercr.open_image and usercr.Error, in this process; --stats against the
image; progress on a terminal and never on a pipe."""
import io
import json
import os
import subprocess

import pytest

import usercr
from conftest import alive, lines, run, tool, wait_until
from test_tree import start, ticked, ticks, tree
from usercr.arch import current as current_arch


def counter(procs, workloads, tmp_path):
    out = tmp_path / "out"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="counter")
    return p.pid, out


def counts_on(out):
    n = len(lines(out))
    wait_until(lambda: len(lines(out)) >= n + 3, what="the counter to go on")
    got = [int(x) for x in lines(out)]
    assert got == list(range(len(got))), "the count goes on where it was, without a gap or a repeat"


def test_checkpoint_restart_cycles(procs, workloads, tmp_path):
    """checkpoint(kill=True) -> restart -> checkpoint of the restored tree, 3 times."""
    pid, out = counter(procs, workloads, tmp_path)
    for k in range(3):
        img = tmp_path / f"img{k}"
        stats = usercr.checkpoint(pid, img, kill=True)
        assert isinstance(stats, usercr.Stats) and stats.bytes_written == img.stat().st_size
        assert 0 < stats.frozen_s <= stats.total_s and stats.pages_written > 0
        procs.kill(pid)
        restored = usercr.restart(img)
        procs.track(restored.pid)
        assert restored.pid == pid and restored.status is None and alive(pid)
        assert restored.stats.processes == 1 and restored.stats.bytes_read == img.stat().st_size
        counts_on(out)
    restored.kill()
    assert restored.status == -9 and not alive(pid)


def test_file_objects(procs, workloads, tmp_path):
    """dest and src may be binary file objects, with or without an fd."""
    pid, out = counter(procs, workloads, tmp_path)
    with open(tmp_path / "img", "wb") as f:
        f.write(b"")  # what is buffered is flushed before the image
        usercr.checkpoint(pid, f)
    mem = io.BytesIO()
    usercr.checkpoint(pid, mem, kill=True)
    for src in (tmp_path / "img", str(tmp_path / "img"), open(tmp_path / "img", "rb"), io.BytesIO(mem.getvalue())):
        image = usercr.open_image(src)
        assert [p.pid for p in image.processes] == [pid] and image.processes[0].comm == "counter"
        assert image.threads[0].tid == pid and "rip" in image.threads[0].registers
        assert {f.fd for f in image.files} >= {0, 1, 2} and all(f.pid == pid for f in image.files)
        assert any(m.path == "[stack]" for m in image.mappings)
    procs.kill(pid)
    restored = usercr.restart(io.BytesIO(mem.getvalue()), wait=False)
    procs.track(restored.pid)
    counts_on(out)
    restored.kill()


def test_to_json_is_ckptinfo_json(procs, workloads, tmp_path):
    pid, _ = counter(procs, workloads, tmp_path)
    usercr.checkpoint(pid, tmp_path / "img")
    r = run([tool("ckptinfo"), "--json", str(tmp_path / "img")])
    assert r.returncode == 0 and r.stdout == usercr.open_image(tmp_path / "img").to_json() + "\n"


def test_errors(procs, workloads, tmp_path):
    """Errors are usercr.Error (one line); a failed checkpoint leaves the target running."""
    pid, out = counter(procs, workloads, tmp_path)
    cases = [
        (lambda: usercr.checkpoint(999999999, tmp_path / "a"), usercr.Error, "does not exist"),
        (lambda: usercr.checkpoint("12", tmp_path / "a"), usercr.UsageError, "invalid PID"),
        (lambda: usercr.checkpoint(pid, object()), usercr.UsageError, "cannot write an image"),
        (lambda: usercr.checkpoint(pid, tmp_path / "no" / "dir"), usercr.Error, "cannot create"),
        (lambda: usercr.open_image(io.BytesIO(b"garbage")), usercr.Error, "not a usercr image"),
        (lambda: usercr.open_image(tmp_path / "none"), usercr.Error, "cannot open"),
        (lambda: usercr.restart(io.BytesIO(b"")), usercr.Error, "not a usercr image"),
        (lambda: usercr.restart(tmp_path / "none", forward=15), usercr.UsageError, "--signal needs --wait"),
    ]
    for call, kind, said in cases:
        with pytest.raises(kind) as e:
            call()
        assert said in str(e.value) and "\n" not in str(e.value)
    usercr.checkpoint(pid, tmp_path / "img")
    with pytest.raises(usercr.Error, match="exists"):
        usercr.checkpoint(pid, tmp_path / "img", kill=True)
    assert alive(pid)
    counts_on(out)
    usercr.checkpoint(pid, tmp_path / "img", force=True)


def test_checkpoint_self_is_exported_where_it_exists():
    here = os.path.exists(os.path.join(os.path.dirname(usercr.__file__), "selfckpt.py"))
    assert hasattr(usercr, "checkpoint_self") == here
    assert {"checkpoint", "restart", "open_image", "Error"} <= set(dir(usercr))


def saved_pages(image):
    """Pages of the mappings whose memory a checkpoint reads (docs/api.md)."""
    total = 0
    for m in image.mappings:
        private_file = m.kind == "file" and not m.flags & current_arch().C["MAP_SHARED"]
        if m.kind in ("anon", "shared-anon") or private_file:
            total += (m.end - m.start) // image.header["page_size"]
    return total


def test_stats_files_match_the_image(procs, workloads, tmp_path):
    """ckpt --stats and rstr --stats, each field checked against the image."""
    out = tmp_path / "out"
    root = start(procs, workloads["multitask"], out)
    nprocs = len(tree(root))
    img, cs, rs = tmp_path / "img", tmp_path / "ckpt.json", tmp_path / "rstr.json"
    r = run([tool("ckpt"), str(root), "-o", str(img), "--kill", "--stats", str(cs)])
    assert r.returncode == 0, r.stderr
    for pid, _ in tree(root):
        procs.kill(pid)
    stats = json.loads(cs.read_text())
    image = usercr.open_image(img)
    assert set(stats) == {"frozen_s", "total_s", "pages_scanned", "pages_written", "bytes_written"}
    assert stats["bytes_written"] == img.stat().st_size
    assert stats["pages_written"] == image.pages == sum(r["nr_pages"] for r in image.records if r.name == "PAGES")
    assert stats["pages_scanned"] == saved_pages(image) >= stats["pages_written"]
    assert 0 < stats["frozen_s"] <= stats["total_s"] < 30
    last = ticks(out)[-1]
    r = run([tool("rstr"), "-i", str(img), "-W", "--pidfile", str(tmp_path / "pid"), "--stats", str(rs)])
    assert r.returncode == 0, r.stderr
    for pid, _ in tree(procs.track(int((tmp_path / "pid").read_text()))):
        procs.track(pid)
    stats = json.loads(rs.read_text())
    assert set(stats) == {"total_s", "bytes_read", "processes"}
    assert stats["bytes_read"] == img.stat().st_size and stats["processes"] == len(image.processes) == nprocs
    ticked(out, last + 3)


def on_terminal(argv, env):
    """(status, what argv wrote to stderr) with stderr on a pseudo-terminal."""
    master, slave = os.openpty()
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env,
                             close_fds=True)
        os.close(slave)
        said = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not chunk:
                break
            said += chunk
        return p.wait(timeout=60), said.decode()
    finally:
        os.close(master)


def test_progress_on_a_terminal_only(procs, workloads, tmp_path):
    """With the delay set to 0 (normally about a second), ckpt and rstr show
    bytes, percent and MB/s on a terminal, and end with the line cleared; on
    a pipe, nothing. Without that, a short checkpoint shows nothing either."""
    out, img = tmp_path / "out", tmp_path / "img"
    root = start(procs, workloads["bigmem"], out)
    now = dict(os.environ, USERCR_PROGRESS_AFTER="0")
    status, said = on_terminal([tool("ckpt"), str(root), "-o", str(img)], now)
    assert status == 0, said
    assert "ckpt:" in said and "MiB" in said and "%" in said and "MB/s" in said, said
    assert said.endswith("\r\x1b[K"), repr(said[-40:])
    quick, _ = counter(procs, workloads, tmp_path)
    status, said = on_terminal([tool("ckpt"), str(quick), "-o", str(tmp_path / "quick")], os.environ)
    assert status == 0 and said == "", said
    r = subprocess.run([tool("ckpt"), str(root), "-o", str(img), "-f", "--kill"], env=now, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    pids = [pid for pid, _ in tree(root)]
    for pid in pids:
        procs.kill(pid)
    last = ticks(out)[-1]
    status, said = on_terminal([tool("rstr"), "-i", str(img), "-W", "--pidfile", str(tmp_path / "pid")], now)
    restored = procs.track(int((tmp_path / "pid").read_text()))
    for pid, _ in tree(restored):
        procs.track(pid)
    assert status == 0 and "rstr:" in said and "%" in said and "MB/s" in said, said
    ticked(out, last + 2)
