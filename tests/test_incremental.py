"""Incremental images (ckpt --parent) and pre-copy (ckpt --pre-copy): the
restored memory is exactly right; a broken chain is one line and nothing runs."""
import os

from conftest import assert_one_line_error, ckpt, run, tool, wait_until
from test_tree import restored, start, ticked, ticks


def _no_tracking_left(pid):
    """The write tracking is gone from a process pre-copy has seen."""
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert "anon_inode:[userfaultfd]" not in fds
    with open(f"/proc/{pid}/smaps") as f:
        flags = [line.split()[1:] for line in f if line.startswith("VmFlags:")]
    assert not any({"uw", "um", "ui"} & set(fl) for fl in flags)


def test_chain_of_three(procs, workloads, tmp_path):
    out = tmp_path / "out"
    root = start(procs, workloads["dirty"], out, 16, 20)
    images = []
    for k in range(3):  # a full image, then two incremental ones, the last with --kill
        img = tmp_path / f"img{k}"
        extra = ["--parent", str(images[-1])] if images else []
        if k == 2:
            r = run([tool("ckpt"), str(root), "-o", str(img), "--kill", *extra])
            assert r.returncode == 0, r.stderr
            procs.kill(root)
        else:
            ckpt(root, img, *extra)
            ticked(out, ticks(out)[-1] + 3)
        images.append(img)
    # The increments hold only what changed (20 %/s of 16 MiB for a few ticks), not the 16 MiB.
    assert os.path.getsize(images[1]) < os.path.getsize(images[0]) / 3
    assert os.path.getsize(images[2]) < os.path.getsize(images[0]) / 3
    info = run([tool("ckptinfo"), str(images[2])])
    assert info.returncode == 0 and f"parent: {images[1]}" in info.stdout, info.stdout
    last = ticks(out)[-1]
    root = restored(procs, images[2])
    ticked(out, last + 5)
    # And once more from the restored program, on top of the same chain.
    img = tmp_path / "img3"
    r = run([tool("ckpt"), str(root), "-o", str(img), "--kill", "--parent", str(images[2])])
    assert r.returncode == 0, r.stderr
    procs.kill(root)
    last = ticks(out)[-1]
    restored(procs, img)
    ticked(out, last + 5)


def test_pre_copy_cycles(procs, workloads, tmp_path):
    out = tmp_path / "out"
    root = start(procs, workloads["dirty"], out, 32, 20)
    img = tmp_path / "img-running"
    ckpt(root, img, "--pre-copy")  # the program runs on, unharmed and untracked
    _no_tracking_left(root)
    ticked(out, ticks(out)[-1] + 3)
    for cycle in range(3):
        img = tmp_path / f"img{cycle}"
        r = run([tool("ckpt"), str(root), "-o", str(img), "--pre-copy", "--kill"])
        assert r.returncode == 0, r.stderr
        procs.kill(root)
        last = ticks(out)[-1]
        root = restored(procs, img)
        _no_tracking_left(root)
        ticked(out, last + 5)


def test_broken_chain(procs, workloads, tmp_path):
    out = tmp_path / "out"
    root = start(procs, workloads["dirty"], out, 4, 20)
    a, b = tmp_path / "a", tmp_path / "b"
    ckpt(root, a)
    r = run([tool("ckpt"), str(root), "-o", str(b), "--parent", str(b)])
    assert "parent image" in assert_one_line_error(r)
    ckpt(root, b, "--parent", str(a))
    ticked(out, ticks(out)[-1] + 2)  # the refused ckpt left it running
    procs.kill(root)
    os.rename(a, tmp_path / "moved")
    err = assert_one_line_error(run([tool("rstr"), "-i", str(b), "-W"]))
    assert str(a) in err
    os.rename(tmp_path / "moved", a)
    with open(a, "r+b") as f:  # same size, another checksum: another image
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))
    err = assert_one_line_error(run([tool("rstr"), "-i", str(b), "-W"]))
    assert "changed" in err
    wait_until(lambda: not os.path.exists(f"/proc/{root}"), 5, "nothing left running")
