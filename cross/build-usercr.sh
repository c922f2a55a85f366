#!/bin/bash
# Cross-build usercr for an ARM target on this x86_64 host.
#   cross/build-usercr.sh armhf|aarch64 OUTDIR [--wheel DISTDIR]
# OUTDIR/usercr is the package with its cffi module compiled for the target
# (out-of-line API mode: the host's cffi generates the C, the cross gcc
# compiles it against the target's Python 3.11 headers from the VM rootfs),
# OUTDIR/bin holds ckpt/rstr/ckptinfo/usercr scripts. Put OUTDIR on
# PYTHONPATH (or install the wheel) on the target; it needs python3-cffi,
# python3-pyelftools there. See docs/arm.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
[ $# -ge 2 ] || { echo "usage: $0 armhf|aarch64 OUTDIR [--wheel DISTDIR]" >&2; exit 2; }
ARCH=$1 OUT=$2 WHEEL=
[ "${3:-}" = --wheel ] && WHEEL=${4:?--wheel needs a directory}
case "$ARCH" in
    armhf)   PLAT=linux_armv7l  AD=arm     EXTRA=(-D_FILE_OFFSET_BITS=64) ;;
    aarch64) PLAT=linux_aarch64 AD=aarch64 EXTRA=() ;;
    *) echo "build-usercr.sh: unknown arch $ARCH" >&2; exit 2 ;;
esac
CC=$("$HERE/build.sh" "$ARCH" --print-cc)
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x "$TOP/.venv/bin/python" ]; then PY=$TOP/.venv/bin/python; else PY=python3; fi
fi

rm -rf "$OUT"
mkdir -p "$OUT/build" "$OUT/bin"
# A private copy of the package: the build writes generated files (the
# restorer blob for the target) under usercr/native/gen, which must not
# touch the host build's.
tar -C "$TOP" --exclude='__pycache__' --exclude='*.so' --exclude='usercr/native/gen' -cf - usercr | tar -C "$OUT" -xf -

# Restorer blob (with $CC) and the module's C source (host cffi).
(cd "$OUT/usercr/native" && CC=$CC "$PY" -c '
import sys
sys.path.insert(0, ".")
import build_native
build_native.ffibuilder.emit_c_code(sys.argv[1])' "$OUT/build/_native.c")

N=$OUT/usercr/native
"$HERE/build.sh" "$ARCH" --pyext -o "$OUT/usercr/_native.abi3.so" \
    "$OUT/build/_native.c" "$N/core.c" "$N/selfdump.c" -- -I"$N/gen" -I"$N" -I"$N/arch/$AD" "${EXTRA[@]}"

for tool in ckpt:cli:ckpt_main rstr:cli:rstr_main ckptinfo:cli:ckptinfo_main usercr:cli:usercr_main \
            usercr-selfckpt:selfckpt:helper_main; do
    name=${tool%%:*} mod=${tool#*:} fn=${tool##*:}
    mod=${mod%%:*}
    printf '#!/usr/bin/python3\nimport sys\nfrom usercr.%s import %s\nsys.exit(%s())\n' "$mod" "$fn" "$fn" > "$OUT/bin/$name"
    chmod +x "$OUT/bin/$name"
done

if [ -n "$WHEEL" ]; then
    mkdir -p "$WHEEL"
    "$PY" "$HERE/make_wheel.py" "$OUT" "$WHEEL" "cp39-abi3-$PLAT"
fi
