"""usercr installed for an ARM target, as cross/vm-run and cross/qemu-run put
it into the VM's or the chroot's root: stage(arch) returns a directory laid
out as a root (usr/local/lib/python3.11/dist-packages/usercr with its
cross-built cffi module and libusercr.a, usr/local/bin/{ckpt,rstr,ckptinfo,
usercr,usercr-selfckpt}), built by cross/build-usercr.sh once per content of
the sources and kept in $USERCR_CROSS_CACHE/ARCH/usercr/<hash>."""
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
SITE = "usr/local/lib/python3.11/dist-packages"
BIN = "usr/local/bin"


def _source_hash():
    h = hashlib.sha256()
    paths = [os.path.join(HERE, n) for n in ("build-usercr.sh", "build.sh", "stage_usercr.py")]
    for root, dirs, names in os.walk(os.path.join(TOP, "usercr")):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "gen"))
        paths += [os.path.join(root, n) for n in sorted(names) if n.endswith((".py", ".c", ".h", ".lds"))]
    for p in paths:
        h.update(os.path.relpath(p, TOP).encode() + b"\0")
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def stage(arch):
    base = os.path.join(os.environ.get("USERCR_CROSS_CACHE", "/var/cache/usercr-cross"), arch, "usercr")
    out = os.path.join(base, _source_hash())
    if os.path.exists(os.path.join(out, "COMPLETE")):
        return out
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(out, "COMPLETE")):
            return out
        tmp = tempfile.mkdtemp(prefix="build-", dir=base)
        try:
            tree = os.path.join(tmp, "tree")
            r = subprocess.run([os.path.join(HERE, "build-usercr.sh"), arch, tree], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            if r.returncode:
                raise RuntimeError(f"build-usercr.sh {arch} failed:\n{r.stdout[-3000:]}")
            root = os.path.join(tmp, "root")
            shutil.copytree(os.path.join(tree, "usercr"), os.path.join(root, SITE, "usercr"),
                            ignore=shutil.ignore_patterns("*.o", "*.elf", "*.bin", "__pycache__"))
            shutil.copytree(os.path.join(tree, "bin"), os.path.join(root, BIN))
            shutil.rmtree(out, ignore_errors=True)
            os.rename(root, out)
            open(os.path.join(out, "COMPLETE"), "w").close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
