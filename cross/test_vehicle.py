"""Tests of the ARM test vehicle: cross gcc + qemu-user, and real ARM kernels
under qemu-system via cross/vm-run.

Assumes cross/install-deps.sh has run.  Builds the VM caches with
cross/build-vm.sh when missing (both arches in parallel, ~10 min the
first time).  Nothing here is skipped: a missing tool is a failure.
"""
import os
import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

CROSS = os.path.dirname(os.path.abspath(__file__))
VM_RUN = os.path.join(CROSS, "vm-run")
ARM = ["armhf", "aarch64"]
MACHINE = {"armhf": "armv7l", "aarch64": "aarch64"}
LONG = {"armhf": 4, "aarch64": 8}
PRSTATUS = {"armhf": 72, "aarch64": 272}  # bytes of NT_PRSTATUS regset
BUILD_TIMEOUT = 1500
RUN_TIMEOUT = 300

HELLO_C = r"""
#include <stdio.h>
#include <sys/utsname.h>
int main(int argc, char **argv)
{
    struct utsname u;
    uname(&u);
    printf("hello %s %zu\n", u.machine, sizeof(long));
    return argc > 1 ? 3 : 0;
}
"""


def run(cmd, timeout, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout, text=True, **kw)


def build(arch, src, out):
    r = run([os.path.join(CROSS, "build.sh"), arch, "-o", str(out), str(src)], 120)
    assert r.returncode == 0, r.stderr
    return str(out)


@pytest.fixture(scope="session")
def progs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cross-progs")
    hello_c = d / "hello.c"
    hello_c.write_text(HELLO_C)
    probe_c = os.path.join(CROSS, "testprogs", "ptrace_probe.c")
    out = {}
    for arch in ARM + ["x86_64"]:
        out[arch, "hello"] = build(arch, hello_c, d / ("hello-" + arch))
        out[arch, "probe"] = build(arch, probe_c, d / ("probe-" + arch))
    return out


def _cache_complete(arch):
    base = os.environ.get("USERCR_CROSS_CACHE", "/var/cache/usercr-cross")
    return os.path.exists(os.path.join(base, arch, "COMPLETE"))


def _build_vm(arch):
    r = subprocess.run([os.path.join(CROSS, "build-vm.sh"), arch],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=BUILD_TIMEOUT)
    return arch, r.returncode, r.stdout


@pytest.fixture(scope="session")
def vms():
    # build-vm.sh is a quick no-op on a complete cache; when missing, both
    # arches build at once (debootstrap under qemu-user is mostly serial).
    with ThreadPoolExecutor(len(ARM)) as ex:
        results = list(ex.map(_build_vm, ARM))
    for arch, rc, out in results:
        assert rc == 0, "build-vm.sh %s failed:\n%s" % (arch, out[-4000:])
    return ARM


def vm_run(arch, *args, timeout=RUN_TIMEOUT):
    cmd = [VM_RUN, arch, "--timeout", str(timeout)] + list(args)
    return run(cmd, timeout + 60)


# (a) qemu-user via binfmt_misc


@pytest.mark.parametrize("arch", ARM)
def test_qemu_user_runs_cross_built_binary(arch, progs):
    exe = progs[arch, "hello"]
    r = run([exe], 60)  # executed directly: binfmt_misc picks qemu
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello %s %d\n" % (MACHINE[arch], LONG[arch])
    assert run([exe, "x"], 60).returncode == 3


@pytest.mark.parametrize("arch", ARM)
def test_qemu_user_has_no_ptrace(arch, progs):
    # Why the VM exists: qemu-user answers ptrace with ENOSYS.
    r = run([progs[arch, "probe"]], 60)
    assert r.returncode == 101
    assert "PTRACE_SEIZE: Function not implemented" in r.stderr


def test_native_probe(progs):
    r = run([progs["x86_64", "probe"], "5"], 60)
    assert r.returncode == 5, r.stderr
    assert "NT_PRSTATUS 216" in r.stdout


# (b) real ARM kernels under qemu-system


@pytest.mark.parametrize("arch", ARM)
def test_vm_ptrace_getregset(arch, progs, vms):
    r = vm_run(arch, "--put", progs[arch, "probe"] + ":/root/prog",
               "--", "/root/prog")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        "machine %s long %d" % (MACHINE[arch], LONG[arch]),
        "NT_PRSTATUS %d" % PRSTATUS[arch],
        "exiting 0",
    ]
    assert "probe stderr line" in r.stderr
    assert "probe stderr line" not in r.stdout


@pytest.mark.parametrize("arch", ARM)
def test_vm_exit_status_propagates(arch, progs, vms):
    r = vm_run(arch, "--put", progs[arch, "probe"] + ":/usr/local/bin/",
               "--", "probe-" + arch, "7")
    assert r.returncode == 7, r.stdout + r.stderr
    assert "NT_PRSTATUS %d" % PRSTATUS[arch] in r.stdout
    assert "exiting 7" in r.stdout


# (c) Python with the project's dependencies inside the VM


def _make_wheel(path, name, body):
    # A minimal pure-Python wheel, built by hand (no host tools needed).
    dist = "%s-1.0.dist-info" % name
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("%s/__init__.py" % name, body)
        z.writestr(dist + "/METADATA",
                   "Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name)
        z.writestr(dist + "/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: hand\n"
                   "Root-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(dist + "/RECORD", "")


EXT_SUFFIX = {"armhf": ".cpython-311-arm-linux-gnueabihf.so",
              "aarch64": ".cpython-311-aarch64-linux-gnu.so"}


def _cffi_ext(arch, tree):
    # cffi API mode, cross-built: C from the host's cffi, compiled against
    # the target's Python headers by build.sh --pyext.
    import cffi
    ffi = cffi.FFI()
    ffi.cdef("int add(int, int); long word(void);")
    ffi.set_source("_vehffi", "static int add(int a, int b) { return a + b; }\n"
                   "static long word(void) { return sizeof(long); }\n")
    c = str(tree / "_vehffi.c")
    ffi.emit_c_code(c)
    r = run([os.path.join(CROSS, "build.sh"), arch, "--pyext", "-o",
             str(tree / ("_vehffi" + EXT_SUFFIX[arch])), c], 120)
    assert r.returncode == 0, r.stderr
    os.unlink(c)


@pytest.mark.parametrize("arch", ARM)
def test_vm_python_deps_and_hooks(arch, vms, tmp_path):
    # Source-tree hook: --put DIR + --env PYTHONPATH.
    tree = tmp_path / "tree"
    (tree / "vehpkg").mkdir(parents=True)
    (tree / "vehpkg" / "__init__.py").write_text("WHERE = 'tree'\n")
    _cffi_ext(arch, tree)
    # Wheel hook: --put the wheel, pip install it offline.
    wheel = tmp_path / "vehwheel-1.0-py3-none-any.whl"
    _make_wheel(str(wheel), "vehwheel", "WHERE = 'wheel'\n")
    script = (
        "import cffi, elftools, click, platform, vehpkg, vehwheel, _vehffi\n"
        "print('deps', cffi.__version__, elftools.__version__,"
        " click.__version__)\n"
        "print('machine', platform.machine(), vehpkg.WHERE, vehwheel.WHERE,"
        " _vehffi.lib.add(2, 3), _vehffi.lib.word())\n"
    )
    r = vm_run(arch,
               "--put", "%s:/opt/usercr" % tree,
               "--put", "%s:/root/wheels/" % wheel,
               "--env", "PYTHONPATH=/opt/usercr",
               "--", "sh", "-c",
               "pip install -q --no-deps --no-index /root/wheels/*.whl"
               " && python3 -c \"$0\"", script)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "machine %s tree wheel 5 %d" % (
        MACHINE[arch], LONG[arch]), r.stdout
    assert lines[-2].startswith("deps "), r.stdout


def test_vm_timeout_is_bounded(vms):
    r = vm_run("aarch64", "--", "sleep", "1000", timeout=8)
    assert r.returncode == 124
    assert "timeout" in r.stderr and "8 s" in r.stderr
