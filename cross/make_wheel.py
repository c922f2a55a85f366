"""Packs a cross-built usercr tree (cross/build-usercr.sh) into a wheel for
the target: python make_wheel.py TREE DISTDIR TAG (e.g. cp39-abi3-linux_armv7l: the
module uses only the stable ABI, so one wheel serves every Python from 3.9)."""
import base64
import hashlib
import os
import re
import sys
import zipfile


def version(top):
    text = open(os.path.join(top, "setup.py")).read()
    return re.search(r'version="([^"]+)"', text).group(1)


def main(tree, dist, tag):
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ver = version(top)
    name = f"usercr-{ver}-{tag}.whl"
    info = f"usercr-{ver}.dist-info"
    files = []
    for root, dirs, names in os.walk(os.path.join(tree, "usercr")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for n in sorted(names):
            if n.endswith((".o", ".elf", ".bin")):
                continue
            path = os.path.join(root, n)
            files.append((os.path.relpath(path, tree), open(path, "rb").read()))
    meta = {
        f"{info}/METADATA": (f"Metadata-Version: 2.1\nName: usercr\nVersion: {ver}\n"
                             "Summary: Checkpoint/restart of Linux processes on stock kernels\n"
                             "Requires-Python: >=3.9\nRequires-Dist: cffi>=1.15\n"
                             "Requires-Dist: pyelftools\n"),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: usercr cross/make_wheel.py\nRoot-Is-Purelib: false\nTag: {tag}\n",
        f"{info}/entry_points.txt": ("[console_scripts]\nckpt = usercr.cli:ckpt_main\nrstr = usercr.cli:rstr_main\n"
                                     "ckptinfo = usercr.cli:ckptinfo_main\nusercr = usercr.cli:usercr_main\n"
                                     "usercr-selfckpt = usercr.selfckpt:helper_main\n"),
        f"{info}/top_level.txt": "usercr\n",
    }
    files += [(k, v.encode()) for k, v in meta.items()]
    record = []
    out = os.path.join(dist, name)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, data in files:
            z.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
