"""Self-checkpoint on ARM (docs/self-checkpoint.md). In each ARM VM (real
kernels under qemu-system, cross/vm-run, usercr installed there): the C API
(tests/selfckpt/counter_self.c, cross-built statically against the target's
libusercr.a) and the Python API write their own image, are killed and come
back with rstr, counting on from the checkpoint. Under qemu-user
(cross/qemu-run) there is no ptrace and no clone3: the single-threaded
programs dump themselves and rstr restores them by fork; usercr check names
that path. `cross/vm-run armhf -- ckpt --version`."""
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

CROSS = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(CROSS), "tests", "selfckpt")
ARCHES = ("armhf", "aarch64")
TIMEOUT = 600
CASES = (("c", "1", ["/opt/self/counter_self"]), ("py", "True", ["python3", "/opt/self/counter_self.py"]))

sys.path.insert(0, CROSS)
import stage_usercr  # noqa: E402


def _run(cmd, timeout=TIMEOUT + 60):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


def _build(arch, tmp):
    native = os.path.join(stage_usercr.stage(arch), stage_usercr.SITE, "usercr", "native")
    exe = os.path.join(tmp, f"counter_self-{arch}")
    r = _run([os.path.join(CROSS, "build.sh"), arch, "-o", exe, os.path.join(SRC, "counter_self.c"), "--",
              "-pthread", "-I", os.path.join(native, "include"), "-L", native, "-lusercr"], 120)
    assert r.returncode == 0, r.stderr
    return exe


def _script(mode, arch):
    cmds = [f"sh /opt/self/self_arm.sh {mode} {name}-{arch} {yes} {' '.join(argv)}" for name, yes, argv in CASES]
    if mode == "qemu":
        cmds.append("usercr check | grep '^[a-z]* *self-checkpoint' | sed 's/^/CHECK /'")
    return "; ".join(cmds)


def _go(runner, mode, arch, tmp):
    exe = _build(arch, tmp)
    puts = ["--put", f"{exe}:/opt/self/counter_self", "--put", f"{os.path.join(SRC, 'counter_self.py')}:/opt/self/",
            "--put", f"{os.path.join(CROSS, 'self_arm.sh')}:/opt/self/"]
    r = _run([os.path.join(CROSS, runner), arch, "--timeout", str(TIMEOUT)] + puts + ["--", "sh", "-c",
                                                                                       _script(mode, arch)])
    return r.returncode, r.stdout, r.stderr


def _runs(runner, mode, tmp):
    with ThreadPoolExecutor(2) as ex:
        futs = {arch: ex.submit(_go, runner, mode, arch, tmp) for arch in ARCHES}
        return {arch: f.result() for arch, f in futs.items()}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("selfarm"))


# One fixture per vehicle: `-k qemu` starts no VM.
@pytest.fixture(scope="module")
def vm_runs(tmp):
    return _runs("vm-run", "vm", tmp)


@pytest.fixture(scope="module")
def qemu_runs(tmp):
    return _runs("qemu-run", "qemu", tmp)


def _result(run, case):
    rc, out, err = run
    m = re.search(rf"^RESULT {case} (PASS|FAIL) (.*)$", out, re.M)
    assert m, f"no result for {case} (exit {rc}):\n{out[-3000:]}\n{err[-3000:]}"
    return m.group(1), m.group(2)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_self_checkpoint_in_vm(vm_runs, arch, case):
    verdict, said = _result(vm_runs[arch], f"{case}-{arch}")
    print(said)
    assert verdict == "PASS", said
    m = re.fullmatch(r"restored at ckpt (\d+), then: tick (\d+) (.*)", said)
    assert m and int(m.group(2)) == int(m.group(1)) + 1, said
    counts = [int(x) for x in m.group(3).split()]
    if case == "c":  # the tick's own count and the thread's, both carried on from before the checkpoint
        assert counts[0] == int(m.group(2)) and counts[1] > 0, said


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_self_checkpoint_under_qemu_user(qemu_runs, arch, case):
    """qemu-user has no ptrace and no clone3: the program dumps itself from a
    signal handler, rstr restores it by fork with a new PID and without
    PR_SET_MM (it says so); three cycles, each copy counting on from its
    checkpoint, the C one's heap growing and checked on (docs/self-checkpoint.md)."""
    verdict, said = _result(qemu_runs[arch], f"{case}-{arch}")
    print(said)
    assert verdict == "PASS", said
    if case == "c":  # with its second thread it is refused in one line (qemu-user shows no tracee threads)
        assert said.startswith("mt-refused "), said
        said = said[len("mt-refused "):]
    cycles = re.findall(r"(\d+):tick (\d+) (\d+)?", said)
    assert [int(n) for n, _, _ in cycles] == [5, 10, 15], said
    for n, tick, count in cycles:
        assert int(tick) == int(n) + 1, said
        if case == "c":  # the tick's own count came back with the memory
            assert int(count) == int(tick), said
    assert "with a new PID" in said and "PR_SET_MM" in said, said
    if case == "c":  # its brk lies below rstr's (python3's) first one, which qemu-user will not go under
        assert "brk() answers at least" in said, said


@pytest.mark.parametrize("arch", ARCHES)
def test_check_says_self_checkpoint_path_under_qemu_user(qemu_runs, arch):
    rc, out, err = qemu_runs[arch]
    line = [ln for ln in out.splitlines() if ln.startswith("CHECK ")]
    assert line and line[0].split()[1] == "ok" and "without ptrace" in line[0], out


def test_vm_run_has_usercr():
    r = _run([os.path.join(CROSS, "vm-run"), "armhf", "--", "ckpt", "--version"])
    assert r.returncode == 0 and r.stdout.strip() == "ckpt (usercr) 0.1.0", r.stdout + r.stderr
