#!/bin/bash
# Compile C for one target architecture with the matching (cross) gcc.
#   cross/build.sh ARCH [--static|--shared] -o OUT SRC.c... [-- EXTRA_GCC_ARGS...]
# ARCH: armhf | aarch64 | x86_64.  Default is a static executable, which
# runs under qemu-user without QEMU_LD_PREFIX and in the VM without
# caring about its libc.  Prints nothing on success.
# --pyext builds a CPython extension (e.g. cffi API-mode C from
# ffi.emit_c_code) against the target's Python headers, taken from the
# VM rootfs that cross/build-vm.sh ARCH made (host headers for x86_64).
# Also: cross/build.sh ARCH --print-cc  (the compiler command name).
set -euo pipefail

usage() {
    echo "usage: $0 armhf|aarch64|x86_64 [--static|--dynamic|--shared|--pyext] -o OUT SRC... [-- GCC_ARGS...]" >&2
    exit 2
}
[ $# -ge 1 ] || usage
ARCH=$1; shift
case "$ARCH" in
    armhf)   CC=arm-linux-gnueabihf-gcc ;;
    aarch64) CC=aarch64-linux-gnu-gcc ;;
    x86_64)  CC=gcc ;;
    *) usage ;;
esac
CC=${USERCR_CROSS_CC:-$CC}

mode=--static out= srcs=() extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --print-cc) echo "$CC"; exit 0 ;;
        --static|--dynamic|--shared|--pyext) mode=$1 ;;
        -o) [ $# -ge 2 ] || usage; out=$2; shift ;;
        --) shift; extra=("$@"); break ;;
        -*) usage ;;
        *) srcs+=("$1") ;;
    esac
    shift
done
[ -n "$out" ] && [ ${#srcs[@]} -gt 0 ] || usage
command -v "$CC" >/dev/null || { echo "build.sh: $CC not found (run cross/install-deps.sh)" >&2; exit 1; }

case "$mode" in
    --static)  flags=(-static) ;;
    --dynamic) flags=() ;;
    --shared)  flags=(-shared -fPIC) ;;
    --pyext)
        if [ "$ARCH" = x86_64 ]; then
            inc=(-I"$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')")
        else
            R=${USERCR_CROSS_CACHE:-/var/cache/usercr-cross}/$ARCH/rootfs
            [ -e "$R/usr/include/python3.11/Python.h" ] \
                || { echo "build.sh: no $R/usr/include/python3.11: run cross/build-vm.sh $ARCH" >&2; exit 1; }
            # -idirafter: the cross libc headers must win over the rootfs's
            inc=(-I"$R/usr/include/python3.11" -idirafter "$R/usr/include")
        fi
        flags=(-shared -fPIC "${inc[@]}") ;;
esac
exec "$CC" -O2 -g -Wall "${flags[@]}" -o "$out" "${srcs[@]}" "${extra[@]}"
