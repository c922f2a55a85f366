"""Bad input: one clear line, a non-zero exit, no traceback, nothing left running,
and a checkpointed program that keeps running unharmed."""
import os
import signal
import struct
import subprocess

import pytest

from conftest import alive, assert_one_line_error, ckpt, lines, run, tool, wait_until
from usercr import records as R


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
    r = run([tool("rstr"), "-i", str(img), "--pids"])
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
    out, img, src, log = tmp_path / "out", tmp_path / "img", tmp_path / "input", tmp_path / "log"
    src.write_bytes(b"x" * 100000)
    p = procs.start([workloads["files"], str(src), str(log)], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="files workload")
    ckpt(p.pid, img, "--kill")
    procs.kill(p.pid)
    os.truncate(src, 5000)
    err = assert_one_line_error(run([tool("rstr"), "-i", str(img)]))
    assert str(src) in err and "changed size" in err
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
    return p, c, rfd, out


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
