"""Compressed images (ckpt --compress): memory comes back exactly, through
files and pipes, for one process and for a tree whose processes read the
stream in turn; ckptinfo reads them; a damaged or cut compressed stream is
refused in one line with nothing left running."""
import os
import shutil
import subprocess

import pytest

from conftest import alive, assert_one_line_error, ckpt, lines, rstr, run, tool, wait_until
from test_bad_input import running_copies
from test_tree import family, restored, start, ticked, ticks
from usercr.compress import ZSTD_MAGIC


def memory_workload(procs, workloads, tmp_path):
    out = tmp_path / "out"
    priv, shared = tmp_path / "private.bin", tmp_path / "shared.bin"
    for f in (priv, shared):
        f.write_bytes(os.urandom(1 << 20))
    p = procs.start([workloads["memory"], str(priv), str(shared)], stdout=out)
    wait_until(lambda: any(x.startswith("ok 2") for x in lines(out)), what="memory workload")
    return p.pid, out


def assert_checks_pass(out, more=3):
    """The memory workload re-checksums all its memory each tick: more ticks, no BAD, no gap."""
    n = len(lines(out))
    wait_until(lambda: len(lines(out)) >= n + more or any(x.startswith("BAD") for x in lines(out)),
               what="restored memory workload")
    got = lines(out)
    assert not [x for x in got if x.startswith("BAD")], got[-5:]
    oks = [int(x.split()[1]) for x in got if x.startswith("ok")]
    assert oks == list(range(len(oks)))


def test_memory_through_three_compressed_cycles(procs, workloads, tmp_path):
    pid, out = memory_workload(procs, workloads, tmp_path)
    for cycle in range(3):
        img = tmp_path / f"img{cycle}"
        ckpt(pid, img, "--kill", "--compress")
        procs.kill(pid)
        with open(img, "rb") as f:
            assert f.read(4) == ZSTD_MAGIC
        pid = rstr(procs, img)
        assert_checks_pass(out)


@pytest.mark.parametrize("other", [["--pre-copy"], ["--parent", "PARENT"]])
def test_compress_refused_with_offset_readers(procs, workloads, tmp_path, other):
    """Incremental and pre-copy images are read by offset: --compress with them is one line, the target runs on."""
    pid, out = memory_workload(procs, workloads, tmp_path)
    ckpt(pid, tmp_path / "PARENT")
    args = [str(tmp_path / a) if a == "PARENT" else a for a in other]
    r = run([tool("ckpt"), str(pid), "-o", str(tmp_path / "img"), "--kill", "--compress", *args])
    assert "--compress" in assert_one_line_error(r)
    assert alive(pid) and not (tmp_path / "img").exists()
    assert_checks_pass(out)


def test_tree_reads_one_compressed_stream_in_turn(procs, workloads, tmp_path):
    """Three processes of 64 MiB each (shared copy-on-write and private pages),
    restored from one compressed image with their PIDs, twice."""
    out = tmp_path / "out"
    root = start(procs, workloads["bigmem"], out)
    pids = sorted(family(root))
    for cycle in range(2):
        img = tmp_path / f"img{cycle}"
        doomed = family(root)
        ckpt(root, img, "--kill", "--compress")
        for pid in doomed:
            procs.kill(pid)
        root = restored(procs, img, "--pids")
        assert sorted(family(root)) == pids
        ticked(out, ticks(out)[-1] + 3)


def test_ckptinfo_reads_compressed_as_plain(procs, workloads, tmp_path):
    pid, _ = memory_workload(procs, workloads, tmp_path)
    img = tmp_path / "img"
    ckpt(pid, img, "--compress")
    decompressed = tmp_path / "plain"
    with open(decompressed, "wb") as f:
        r = subprocess.run([tool("ckpt"), str(pid)], stdout=f, timeout=60)  # plain on stdout
    assert r.returncode == 0
    info = [run([tool("ckptinfo"), "--json", str(p)]) for p in (img, decompressed)]
    assert info[0].returncode == 0 and info[1].returncode == 0, info[0].stderr + info[1].stderr
    assert "\"processes\"" in info[0].stdout
    assert info[0].stdout.count('"pid"') == info[1].stdout.count('"pid"')


def test_compressed_image_on_a_pipe(procs, workloads, tmp_path):
    """ckpt --compress on stdout piped straight into rstr."""
    pid, out = memory_workload(procs, workloads, tmp_path)
    pidfile = tmp_path / "pid"
    sh = f"{tool('ckpt')} {pid} --compress --kill | {tool('rstr')} -W --pidfile {pidfile}"
    r = subprocess.run(["sh", "-c", sh], stderr=subprocess.PIPE, text=True, timeout=120)
    procs.track(pid)
    assert r.returncode == 0, r.stderr
    procs.track(int(pidfile.read_text()))
    assert_checks_pass(out)


@pytest.mark.skipif(not shutil.which("zstd"), reason="the zstd tool is not installed")
def test_zstd_tool_pipelines(procs, workloads, tmp_path):
    """An image compressed by the zstd tool is read directly; zstd -d of a
    --compress image restores as a plain stream."""
    pid, out = memory_workload(procs, workloads, tmp_path)
    zst = tmp_path / "img.zst"
    r = subprocess.run(["sh", "-c", f"{tool('ckpt')} {pid} --kill | zstd -q -c > {zst}"], timeout=120)
    procs.track(pid)
    assert r.returncode == 0
    pid = rstr(procs, zst)
    assert_checks_pass(out)
    img = tmp_path / "img"
    ckpt(pid, img, "--kill", "--compress")
    procs.kill(pid)
    pidfile = tmp_path / "pid"
    r = subprocess.run(["sh", "-c", f"zstd -q -d -c {img} | {tool('rstr')} -W --pidfile {pidfile}"],
                       stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    procs.track(int(pidfile.read_text()))
    assert_checks_pass(out)


@pytest.fixture
def compressed(procs, workloads, tmp_path):
    """A killed counter's compressed image."""
    out, img = tmp_path / "out", tmp_path / "img"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="counter")
    ckpt(p.pid, img, "--kill", "--compress")
    procs.kill(p.pid)
    return img


def refused(workloads, img, *how):
    """rstr and ckptinfo each say one line; no copy of the counter runs and no
    decompressor is left behind."""
    before = set(_children())
    r = run([tool("rstr"), "-i", str(img), *how], timeout=60)
    err = assert_one_line_error(r)
    assert running_copies(workloads["counter"]) == []
    assert_one_line_error(run([tool("ckptinfo"), str(img)], timeout=60))
    assert set(_children()) <= before
    return err


def _children():
    """Our own processes that are not yet reaped or still run (a decompressor would be rstr's, reparented)."""
    me = str(os.getpid())
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and alive(int(name)):
            try:
                with open(f"/proc/{name}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        out.append(int(name))
            except OSError:
                pass
    return out


def flip(img, at):
    with open(img, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x5a]))


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_damaged_compressed_stream(procs, workloads, compressed, where):
    flip(compressed, int(os.path.getsize(compressed) * where))
    refused(workloads, compressed)


def test_truncated_compressed_stream(procs, workloads, compressed):
    os.truncate(compressed, os.path.getsize(compressed) - 100)
    err = refused(workloads, compressed)
    assert "truncated" in err, err


def test_damaged_compressed_stream_on_a_pipe(procs, workloads, compressed):
    flip(compressed, os.path.getsize(compressed) // 2)
    with open(compressed, "rb") as f:
        r = subprocess.run([tool("rstr")], stdin=f, capture_output=True, text=True, timeout=60)
    assert_one_line_error(r)
    assert running_copies(workloads["counter"]) == []


@pytest.mark.skipif(not shutil.which("zstd"), reason="the zstd tool is not installed")
def test_page_data_in_independent_frames(procs, workloads, tmp_path):
    """The page data goes out as one zstd frame per 256 KiB buffer, compressed
    by whichever dump thread had time: the zstd tool finds the frames whole
    and their sum is the plain stream, which restores."""
    pid, out = memory_workload(procs, workloads, tmp_path)
    img, plain = tmp_path / "img", tmp_path / "plain"
    ckpt(pid, img, "--kill", "--compress")
    procs.kill(pid)
    listed = run(["zstd", "-lv", str(img)])
    assert listed.returncode == 0, listed.stderr
    frames = int(next(x for x in listed.stdout.splitlines() if "Frames:" in x).split(":")[1])
    with open(plain, "wb") as f:
        assert subprocess.run(["zstd", "-q", "-d", "-c", str(img)], stdout=f, timeout=60).returncode == 0
    assert frames > plain.stat().st_size // (256 << 10)
    pid = rstr(procs, plain)
    assert_checks_pass(out)
