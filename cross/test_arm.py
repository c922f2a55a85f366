"""usercr on ARM: cross-builds usercr (cross/build-usercr.sh) and the ARM
workloads (cross/testprogs/arm_wl.c), boots one VM per arch (armhf: 6.1
armmp-lpae, cortex-a15; aarch64: 6.1 arm64, cortex-a57) with cross/vm-run,
and inside it checkpoints each workload with ckpt --kill, restarts it with
rstr and checks that it carries on from the saved state; the process-tree
workloads of tests/workloads go through three cycles of ckpt --kill / rstr
--pids --pidns each, as in tests/test_tree.py (cross/arm_vm_driver.py prints
one RESULT line per case); incr-* cases restore incremental (--parent) and
pre-copy images of tests/workloads/dirty.c. The two VMs run in
parallel. Also installs the cross-built wheel in each VM and reads an image
with its ckptinfo. The restart rules are in test_arm_rules.py (host only)."""
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

CROSS = os.path.dirname(os.path.abspath(__file__))
TREE_SRC = os.path.join(os.path.dirname(CROSS), "tests", "workloads")
VM_TIMEOUT = 900
ARCHES = ("armhf", "aarch64")
WORKLOADS = ("counter", "memsum", "fp", "signal", "sleep")
# Process-tree workloads of tests/test_tree.py, built for the VM's own arch. Not tree64: its ckpt
# takes 20-65 s per cycle under TCG (95-180 s a case) and it adds nothing arch-specific to multitask.
TREE = ("multitask", "pipes", "pipes2", "shmem", "zombie", "pgrp", "orphans", "threads", "threadstate",
        "sigpending", "pty", "ipcshm", "ipcmsq", "ipcsem")
# Workloads of tests/workloads for the fd kinds with layouts of their own per arch (epoll_event,
# signalfd_siginfo, itimerspec, sockaddr_un...), run as the tree ones are: `-k kind` selects them.
# A new kind is one more name here (its workload in tests/workloads, tick protocol of wl.h).
# tcploop: TCP on loopback (IPv4, and IPv6 where the VM has it), data queued both ways (struct
# tcp_repair_window, tcp_info and sock_diag layouts of the arch).
KINDS = ("epollmix", "epoll", "eventfd", "timerfd", "signalfd", "tcploop")
# Incremental images and pre-copy with tests/workloads/dirty.c (`-k incr`): a chain of three images
# (--parent) and pre-copy cycles, with the write tracking `usercr check` names (arm_vm_driver.py).
INCR = ("chain", "precopy")
# armhf: the ARM-state and the Thumb-state build of every workload
# zmemsum: memsum through a compressed image (ckpt --compress, libzstd of the VM)
CASES = {
    "armhf": [f"{mode}-{w}" for w in WORKLOADS for mode in ("arm", "thumb")] + ["arm-zmemsum"] +
             [f"tree-{w}" for w in TREE],
    "aarch64": [f"a64-{w}" for w in WORKLOADS] + ["a64-zmemsum", "armhf-compat"] + [f"tree-{w}" for w in TREE],
}
for _arch in ARCHES:
    CASES[_arch] += [f"kind-{w}" for w in KINDS] + [f"incr-{w}" for w in INCR]
PLAT = {"armhf": "linux_armv7l", "aarch64": "linux_aarch64"}


def _run(cmd, timeout):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


def _build(arch, tmp, cases):
    r = _run([os.path.join(CROSS, "build-vm.sh"), arch], 1500)
    assert r.returncode == 0, f"build-vm.sh {arch} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    tree, dist = os.path.join(tmp, f"{arch}-tree"), os.path.join(tmp, "dist")
    r = _run([os.path.join(CROSS, "build-usercr.sh"), arch, tree, "--wheel", dist], 300)
    assert r.returncode == 0, r.stderr
    wheel = r.stdout.strip().splitlines()[-1]
    progs = {}
    src = os.path.join(CROSS, "testprogs", "arm_wl.c")
    flavours = {"armhf": {"arm": ("armhf", ["-marm"]), "thumb": ("armhf", ["-mthumb"])},
                "aarch64": {"a64": ("aarch64", []), "armhf": ("armhf", ["-mthumb"])}}[arch]
    # (path in the VM, target, source, gcc flags)
    progs_needed = {_vm_prog(c) for c in cases}
    builds = [(f"/opt/wl/{name}", target, src, flags) for name, (target, flags) in flavours.items()]
    builds += [(f"/opt/tree/{w}", arch, os.path.join(TREE_SRC, f"{w}.c"), ["-pthread"]) for w in TREE + KINDS + ("dirty",)]
    builds = [b for b in builds if b[0] in progs_needed]
    for dest, target, source, flags in builds:
        out = os.path.join(tmp, arch + dest.replace("/", "-"))
        r = _run([os.path.join(CROSS, "build.sh"), target, "-o", out, source, "--"] + flags, 120)
        assert r.returncode == 0, r.stderr
        progs[dest] = out
    return tree, wheel, progs


def _vm_prog(case):
    """Where the case's program is in the VM: tree-NAME and kind-NAME -> /opt/tree/NAME,
    incr-* -> /opt/tree/dirty, FLAVOUR-KIND -> /opt/wl/FLAVOUR."""
    group, name = case.split("-", 1)
    if group == "incr":
        return "/opt/tree/dirty"
    return f"/opt/tree/{name}" if group in ("tree", "kind") else f"/opt/wl/{group}"


def _image(case):
    """An image the case leaves in the VM (the first cycle's of a tree case)."""
    return f"/tmp/{case}.0.img" if case.split("-", 1)[0] in ("tree", "kind", "incr") else f"/tmp/{case}.img"


def _vm(arch, tmp, cases):
    tree, wheel, progs = _build(arch, tmp, cases)
    puts = ["--put", f"{tree}:/opt/usercr", "--put", f"{wheel}:/root/wheels/",
            "--put", f"{os.path.join(CROSS, 'arm_vm_driver.py')}:/opt/drv.py"]
    for dest, path in progs.items():
        puts += ["--put", f"{path}:{dest}"]
    first_img = _image(cases[0])
    cases = [f"{c}={_vm_prog(c)}" for c in cases]
    # Bytecode compiled once: the VM's PYTHONDONTWRITEBYTECODE would have each ckpt/rstr compile usercr again.
    script = ("python3 -m compileall -q /opt/usercr >&2; python3 /opt/drv.py /opt/usercr/bin " + " ".join(cases) +
              "; rc=$?; "
              "env -u PYTHONPATH pip install -q --no-deps --no-index /root/wheels/*.whl "
              f"&& cd / && env -u PYTHONPATH ckptinfo {first_img} | sed 's/^/WHEEL /'; exit $rc")
    cmd = [os.path.join(CROSS, "vm-run"), arch, "--timeout", str(VM_TIMEOUT)] + puts + \
          ["--env", "PYTHONPATH=/opt/usercr", "--", "sh", "-c", script]
    r = _run(cmd, VM_TIMEOUT + 60)
    return r.returncode, r.stdout, r.stderr, wheel


def _selected(session):
    """{arch: cases} that this session's tests need (so `-k` runs only those in the VMs): the cases
    selected, and the first case of an arch whose wheel test needs an image but has no case selected."""
    want = {a: set() for a in ARCHES}
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.originalname == "test_checkpoint_restart_in_vm":
            want[params["arch"]].add(params["case"])
        elif item.originalname == "test_wheel_installs_and_reads_image" and not want[params["arch"]]:
            want[params["arch"]].add(CASES[params["arch"]][0])
    return {a: [c for c in CASES[a] if c in want[a]] for a in ARCHES if want[a]}


@pytest.fixture(scope="session")
def arm_runs(request, tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("arm"))
    with ThreadPoolExecutor(2) as ex:
        futs = {a: ex.submit(_vm, a, tmp, cases) for a, cases in _selected(request.session).items()}
        return {a: f.result() for a, f in futs.items()}


def _results(out):
    return {m.group(1): (m.group(2), m.group(0)) for m in re.finditer(r"^RESULT (\S+) (PASS|FAIL) .*$", out, re.M)}


@pytest.mark.parametrize("arch,case", [(a, c) for a in ARCHES for c in CASES[a]])
def test_checkpoint_restart_in_vm(arm_runs, arch, case):
    rc, out, err, _ = arm_runs[arch]
    res = _results(out)
    assert case in res, f"no result for {case} (vm-run exit {rc}):\n{out[-3000:]}\n{err[-3000:]}"
    print(res[case][1])
    assert res[case][0] == "PASS", res[case][1] + "\n" + err[-2000:]


@pytest.mark.parametrize("arch", ARCHES)
def test_wheel_installs_and_reads_image(arm_runs, arch):
    rc, out, err, wheel = arm_runs[arch]
    assert wheel.endswith(f"-cp39-abi3-{PLAT[arch]}.whl")
    lines = [ln for ln in out.splitlines() if ln.startswith("WHEEL ")]
    name = "arm" if arch == "armhf" else "aarch64"
    assert lines and f", {name}," in lines[0], f"{out[-2000:]}\n{err[-2000:]}"
