"""Checkpoint a real workload, kill it, restart it, and check it continues."""
import os
import struct
import subprocess
import sys
import time

import pytest

from conftest import alive, assert_one_line_error, ckpt, lines, rstr, run, tool, wait_until


def last_int(path):
    got = [int(x) for x in lines(path) if x.isdigit()]
    return got[-1] if got else None


def test_counter_continues_from_saved_value(procs, workloads, tmp_path):
    out, img = tmp_path / "out", tmp_path / "img"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    wait_until(lambda: (last_int(out) or 0) >= 10, what="counter to reach 10")
    ckpt(p.pid, img, "--kill")
    procs.kill(p.pid)
    saved = last_int(out)
    assert oct(os.stat(img).st_mode & 0o777) == "0o600"
    pid = rstr(procs, img)
    assert pid == p.pid, "by default, the original PID (free again here)"
    wait_until(lambda: last_int(out) >= saved + 10, what="restored counter to go on")
    values = [int(x) for x in lines(out)]
    assert values == list(range(len(values))), "the restored counter must go on from the saved value"
    special = lambda p: [ln.split()[-1] for ln in open(f"/proc/{p}/maps") if ln.split()[-1].startswith("[v")]  # noqa: E731
    assert special(pid) == special("self"), "the restored task must have this kernel's vDSO/vvar mappings"


def test_three_cycles(procs, workloads, tmp_path):
    out = tmp_path / "out"
    p = procs.start([workloads["counter"], "10"], stdout=out)
    pid = p.pid
    for cycle in range(3):
        before = last_int(out) or 0
        wait_until(lambda: (last_int(out) or 0) >= before + 5, what="progress")
        img = tmp_path / f"img{cycle}"
        ckpt(pid, img, "--kill")
        procs.kill(pid)
        pid = rstr(procs, img)
    wait_until(lambda: last_int(out) >= 30, what="progress after three cycles")
    values = [int(x) for x in lines(out)]
    assert values == list(range(len(values)))


def test_memory_checksums(procs, workloads, tmp_path):
    out, img = tmp_path / "out", tmp_path / "img"
    priv, shared = tmp_path / "private.bin", tmp_path / "shared.bin"
    for f in (priv, shared):
        f.write_bytes(os.urandom(1 << 20))
    p = procs.start([workloads["memory"], str(priv), str(shared)], stdout=out)
    wait_until(lambda: any(x.startswith("ok 2") for x in lines(out)), what="memory workload")
    ckpt(p.pid, img, "--kill")
    procs.kill(p.pid)
    n_before = len(lines(out))
    rstr(procs, img)
    wait_until(lambda: len(lines(out)) >= n_before + 5, what="restored memory workload")
    got = lines(out)
    assert not [x for x in got if x.startswith("BAD")], got[-5:]
    oks = [int(x.split()[1]) for x in got if x.startswith("ok")]
    assert oks == list(range(len(oks)))
    assert os.path.getsize(img) > 64 << 20


def test_fpu_and_vector_registers(procs, workloads, tmp_path):
    progress, img = tmp_path / "progress", tmp_path / "img"
    progress.write_bytes(bytes(4096))
    count = lambda: struct.unpack("<Q", progress.read_bytes()[:8])[0]  # noqa: E731
    p = procs.start([workloads["fpu"], str(progress)])
    wait_until(lambda: count() > 1000, what="fpu loop")
    ckpt(p.pid, img, "--kill")
    procs.kill(p.pid)
    saved = count()
    pid = rstr(procs, img)
    wait_until(lambda: count() > saved + 100000, what="restored fpu loop to go on")
    time.sleep(0.2)
    assert alive(pid), "the register check in the workload failed after restart"


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])


@pytest.mark.skipif("amx_tile" not in cpu_flags(), reason="needs a CPU with AMX")
def test_amx_permission_refused_target_runs_on(procs, workloads, tmp_path):
    """AMX tile state needs a permission that a restored process would not
    have: ckpt refuses in one line and leaves the program running."""
    out, img = tmp_path / "out", tmp_path / "img"
    p = procs.start([workloads["amx"]], stdout=out)
    wait_until(lambda: lines(out) == ["ready"], what="the tiles to be loaded")
    err = assert_one_line_error(run([tool("ckpt"), str(p.pid), "-o", str(img), "--kill"]))
    assert "AMX" in err, err
    assert not img.exists()
    time.sleep(0.2)
    assert alive(p.pid)


def test_signal_handler_and_pending_signal(procs, workloads, tmp_path):
    out, img, go = tmp_path / "out", tmp_path / "img", tmp_path / "go"
    p = procs.start([workloads["signals"], str(go)], stdout=out)
    wait_until(lambda: "pending 1" in lines(out), what="signal to be pending")
    ckpt(p.pid, img, "--kill")
    procs.kill(p.pid)
    info = run([tool("ckptinfo"), "--json", str(img)])
    assert '"SIGPENDING"' in info.stdout
    r = subprocess.Popen([tool("rstr"), "-i", str(img), "--copy-status"], stdin=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    procs.popens.append(r)
    time.sleep(0.3)
    go.write_text("go")
    assert r.wait(timeout=20) == 0, r.stderr.read()
    assert lines(out)[-1] == "handled 1"


def test_inside_nanosleep(procs, workloads, tmp_path):
    out, img = tmp_path / "out", tmp_path / "img"
    p = procs.start([workloads["syscalls"], "sleep", "2"], stdout=out)
    wait_until(lambda: "sleeping" in lines(out), what="sleep to start")
    time.sleep(0.3)
    ckpt(p.pid, img, "--kill")
    procs.kill(p.pid)
    r = run([tool("rstr"), "-i", str(img), "--copy-status"], timeout=30)
    assert r.returncode == 0, (r.stderr, lines(out))
    assert lines(out)[-1] == "woke"


def test_inside_read(procs, workloads, tmp_path):
    out, img = tmp_path / "out", tmp_path / "img"
    rfd, wfd = os.pipe()
    try:
        p = procs.start([workloads["syscalls"], "read"], stdout=out, stdin=rfd)
        wait_until(lambda: "reading" in lines(out), what="read to start")
        time.sleep(0.2)
        ckpt(p.pid, img, "--kill")
        procs.kill(p.pid)
    finally:
        os.close(rfd)
        os.close(wfd)
    r = run([tool("rstr"), "-i", str(img), "--copy-status"], input="hello\n", timeout=30)
    assert r.returncode == 0, (r.stderr, lines(out))
    assert lines(out)[-1] == "got hello"


def test_open_files_keep_offsets(procs, workloads, tmp_path):
    out, img, src, log = tmp_path / "out", tmp_path / "img", tmp_path / "input", tmp_path / "log"
    src.write_bytes(b"".join(b"%08d" % i for i in range(100000)))
    p = procs.start([workloads["files"], str(src), str(log)], stdout=out)
    wait_until(lambda: len(lines(out)) >= 5, what="files workload")
    ckpt(p.pid, img, "--kill")
    procs.kill(p.pid)
    n = len(lines(out))
    rstr(procs, img)
    wait_until(lambda: len(lines(out)) >= n + 5, what="restored files workload")
    for i, line in enumerate(lines(out)):
        assert line == f"{8 * i} {i:08d}", "the read offset must continue"
    assert [int(x) for x in lines(log)] == list(range(len(lines(log)))), "appends must continue"


def test_python_interpreter(procs, tmp_path):
    out, img = tmp_path / "out", tmp_path / "img"
    script = ("import json, decimal, sqlite3, asyncio, email, http.server, time, sys\n"
              "state = {'n': 0, 'd': str(decimal.Decimal(1) / 7)}\n"
              "while True:\n"
              "    state['n'] += 1\n"
              "    print(json.dumps(state), flush=True)\n"
              "    time.sleep(0.02)\n")
    p = procs.start([sys.executable, "-c", script], stdout=out)
    wait_until(lambda: len(lines(out)) >= 10, what="python workload")
    ckpt(p.pid, img, "--kill")
    procs.kill(p.pid)
    n = len(lines(out))
    rstr(procs, img)
    wait_until(lambda: len(lines(out)) >= n + 10, what="restored interpreter")
    import json
    states = [json.loads(x) for x in lines(out)]
    assert [s["n"] for s in states] == list(range(1, len(states) + 1))
    assert states[-1]["d"] == "0.1428571428571428571428571429"


def test_same_pid_and_new_pid(procs, workloads, tmp_path):
    out = tmp_path / "out"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    orig = p.pid
    wait_until(lambda: (last_int(out) or 0) >= 3, what="counter")
    ckpt(orig, tmp_path / "img", "--kill")
    procs.kill(orig)
    pid = rstr(procs, tmp_path / "img", "--pids")
    assert pid == orig
    before = last_int(out)
    wait_until(lambda: last_int(out) > before + 3, what="restored counter")
    ckpt(pid, tmp_path / "img2", "--kill")
    procs.kill(pid)
    new = rstr(procs, tmp_path / "img2", "--no-pids")
    assert new != orig


def test_detach_leaves_target_running(procs, workloads, tmp_path):
    out = tmp_path / "out"
    p = procs.start([workloads["counter"], "10"], stdout=out)
    wait_until(lambda: (last_int(out) or 0) >= 3, what="counter")
    ckpt(p.pid, tmp_path / "img")
    before = last_int(out)
    wait_until(lambda: last_int(out) >= before + 5, what="counter to keep counting after ckpt")
    values = [int(x) for x in lines(out)]
    assert values == list(range(len(values)))
    assert alive(p.pid)


def test_checkpoint_to_stdout_and_restart_from_stdin(procs, workloads, tmp_path):
    out, img = tmp_path / "out", tmp_path / "img"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    wait_until(lambda: (last_int(out) or 0) >= 3, what="counter")
    with open(img, "wb") as f:
        r = subprocess.run([tool("ckpt"), str(p.pid), "--kill"], stdout=f, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r.stderr
    assert os.stat(img).st_mode & 0o777 == 0o600
    procs.kill(p.pid)
    saved = last_int(out)
    pidfile = tmp_path / "pid"
    with open(img, "rb") as f:
        r = subprocess.run([tool("rstr"), "-W", "--pidfile", str(pidfile)], stdin=f, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    procs.track(int(pidfile.read_text()))
    wait_until(lambda: last_int(out) >= saved + 3, what="restored counter")


def test_same_pid_in_new_pid_namespace(procs, workloads, tmp_path):
    out = tmp_path / "out"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    orig = p.pid
    wait_until(lambda: (last_int(out) or 0) >= 3, what="counter")
    ckpt(orig, tmp_path / "img")  # the original keeps running: its PID stays taken here
    pid = rstr(procs, tmp_path / "img", "--pids", "--pidns")
    nspid = [ln for ln in open(f"/proc/{pid}/status") if ln.startswith("NSpid:")][0].split()[1:]
    assert nspid == [str(pid), str(orig)], nspid
    assert alive(orig)
    with open(f"/proc/{pid}/stat") as f:
        reaper = int(f.read().rsplit(")", 1)[1].split()[1])
    procs.track(reaper)
