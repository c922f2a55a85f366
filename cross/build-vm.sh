#!/bin/bash
# Build (or reuse) the ARM test VM for cross/vm-run:
#   $CACHE/ARCH/rootfs/        Debian bookworm minbase with Python (debootstrap)
#   $CACHE/ARCH/root.img       ext4 image of rootfs (booted with snapshot=on)
#   $CACHE/ARCH/vmlinuz        Debian kernel, zImage/Image as shipped
#   $CACHE/ARCH/initrd.cpio.gz busybox-static + modules to mount root.img
#   $CACHE/ARCH/COMPLETE       written last; its presence means "reuse"
# Each step has its own stamp so an interrupted build resumes; the initramfs
# stamp holds its module list, so a changed MODULES rebuilds only that.
# Needs cross/install-deps.sh (binfmt with F flag for the chroot steps).
set -euo pipefail

usage() { echo "usage: $0 armhf|aarch64" >&2; exit 2; }
[ $# -eq 1 ] || usage
ARCH=$1
case "$ARCH" in
    armhf)   DARCH=armhf; KFLAV=armmp-lpae ;;
    aarch64) DARCH=arm64; KFLAV=arm64 ;;
    *) usage ;;
esac
[ "$(id -u)" = 0 ] || { echo "build-vm.sh: must run as root" >&2; exit 1; }

MIRROR=${USERCR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
D=${USERCR_CROSS_CACHE:-/var/cache/usercr-cross}/$ARCH
# Bump when the recipe changes so old caches get rebuilt.
RECIPE=3
# python3-ply must be listed or debootstrap leaves a broken rootfs;
# libpython3.11-dev gives the target headers for cross-built cffi modules.
INCLUDE=python3,python3-cffi,python3-ply,python3-pycparser,python3-pyelftools,python3-click,python3-pytest,python3-pip,libpython3.11-dev,busybox-static
# unix_diag, inet_diag, tcp_diag: sock_diag for ckpt's Unix and TCP sockets.
MODULES="virtio_mmio virtio_blk crc32c_generic ext4 unix_diag inet_diag tcp_diag"

log() { echo "build-vm.sh[$ARCH]: $*" >&2; }

cached() { [ "$(cat "$D/COMPLETE" 2>/dev/null)" = "$RECIPE" ] && [ "$(cat "$D/initrd.ok" 2>/dev/null)" = "$MODULES" ]; }
if cached; then
    log "cached in $D"
    exit 0
fi

mkdir -p "$D"
# Serialise concurrent builders of the same ARCH (bounded wait).
exec 9>"$D/.lock"
flock -w 1800 9 || { log "timed out waiting for lock $D/.lock"; exit 1; }
if cached; then
    log "cached in $D"
    exit 0
fi
if [ "$(cat "$D/RECIPE" 2>/dev/null)" != "$RECIPE" ]; then
    log "recipe changed or new cache: starting from scratch"
    rm -rf "$D/rootfs" "$D/rootfs.tmp" "$D"/*.ok "$D/kpkg" "$D/initrd" \
           "$D/root.img" "$D/vmlinuz" "$D/initrd.cpio.gz" "$D/COMPLETE"
    echo "$RECIPE" > "$D/RECIPE"
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-$([ "$ARCH" = armhf ] && echo arm || echo aarch64) ] \
    || { log "binfmt not registered: run cross/install-deps.sh"; exit 1; }

T0=$(date +%s)
step_t=$T0
step_done() {
    local now; now=$(date +%s)
    log "$1 done in $((now - step_t)) s"
    echo "$1 $((now - step_t))s" >> "$D/timings"
    step_t=$now
}

R=$D/rootfs
# 1. rootfs
if [ ! -e "$D/rootfs.ok" ]; then
    rm -rf "$D/rootfs.tmp" "$R"
    log "debootstrap (several minutes under emulation)"
    timeout 1500 debootstrap --arch="$DARCH" --variant=minbase \
        --include="$INCLUDE" bookworm "$D/rootfs.tmp" "$MIRROR" \
        > "$D/debootstrap.log" 2>&1 \
        || { log "debootstrap failed, tail of $D/debootstrap.log:"; tail -n 30 "$D/debootstrap.log" >&2; exit 1; }
    mv "$D/rootfs.tmp" "$R"
    touch "$D/rootfs.ok"
    step_done debootstrap
fi

# 2. kernel package, downloaded from inside the chroot (the host's apt has
#    no foreign architecture, and adding one breaks apt-get update here).
if [ ! -e "$D/kernel.ok" ]; then
    cp /etc/resolv.conf "$R/etc/resolv.conf"
    rm -rf "$D/kpkg"; mkdir -p "$D/kpkg"
    # debootstrap leaves bookworm's Packages index in the rootfs; only
    # refresh when it is missing.
    if ! chroot "$R" apt-cache show "linux-image-$KFLAV" >/dev/null 2>&1; then
        timeout 600 chroot "$R" apt-get update -q >&2
    fi
    # Meta package linux-image-FLAVOUR depends on the exact ABI package.
    KPKG=$(chroot "$R" apt-cache depends "linux-image-$KFLAV" \
           | sed -n "s/^ *Depends: \(linux-image-[0-9.]*-[0-9]*-$KFLAV\)\$/\1/p" | head -n1)
    [ -n "$KPKG" ] || { log "cannot resolve linux-image-$KFLAV"; exit 1; }
    log "kernel package $KPKG"
    # world-writable so apt's _apt user can write there (else a warning)
    mkdir -p -m 777 "$R/tmp/kdl"
    timeout 600 chroot "$R" sh -c "cd /tmp/kdl && apt-get download -q $KPKG" >&2
    dpkg-deb -x "$R"/tmp/kdl/"$KPKG"_*.deb "$D/kpkg"
    rm -rf "$R/tmp/kdl"
    touch "$D/kernel.ok"
    step_done kernel
fi
KVER=$(ls "$D/kpkg/lib/modules" | head -n1)

# 3. initramfs: busybox + the modules (with dependencies, in load order).
if [ "$(cat "$D/initrd.ok" 2>/dev/null)" != "$MODULES" ]; then
    cmp -s "$D"/kpkg/boot/vmlinuz-"$KVER" "$D/vmlinuz" || cp "$D"/kpkg/boot/vmlinuz-"$KVER" "$D/vmlinuz"
    depmod -b "$D/kpkg" "$KVER"
    I=$D/initrd
    rm -rf "$I"; mkdir -p "$I"/{bin,dev,proc,sys,newroot,mods}
    cp "$R/bin/busybox" "$I/bin/busybox"
    ln -s busybox "$I/bin/sh"
    MD=$D/kpkg/lib/modules/$KVER
    # modules.dep lines: "kernel/x/a.ko: kernel/y/b.ko ..." (deps of a).
    order=()
    add_mod() {  # add module path $1 after its dependencies
        local m=$1 dep
        for seen in "${order[@]:-}"; do [ "$seen" = "$m" ] && return 0; done
        for dep in $(grep "^$m:" "$MD/modules.dep" | cut -d: -f2); do
            add_mod "$dep"
        done
        order+=("$m")
    }
    for name in $MODULES; do
        path=$(grep -E "(^|/)$name\.ko(\.xz)?:" "$MD/modules.dep" | cut -d: -f1 || true)
        if [ -z "$path" ]; then
            # built in: nothing to load
            grep -qE "/$name\.ko" "$MD/modules.builtin" || { log "module $name not found"; exit 1; }
            continue
        fi
        add_mod "$path"
    done
    : > "$I/mods/order"
    for m in "${order[@]}"; do
        b=$(basename "$m"); b=${b%.xz}
        case "$m" in
            *.xz) xz -dc "$MD/$m" > "$I/mods/$b" ;;
            *)    cp "$MD/$m" "$I/mods/$b" ;;
        esac
        echo "$b" >> "$I/mods/order"
    done
    mknod -m 600 "$I/dev/console" c 5 1
    cp "$(dirname "$0")/vm-init.sh" "$I/init"
    cp "$(dirname "$0")/vm-stage2.sh" "$I/stage2.sh"
    chmod 755 "$I/init" "$I/stage2.sh"
    # renamed into place: a VM booting meanwhile reads the old one or the new one whole
    (cd "$I" && find . | cpio -o -H newc --quiet | gzip -1) > "$D/initrd.cpio.gz.tmp"
    mv "$D/initrd.cpio.gz.tmp" "$D/initrd.cpio.gz"
    echo "$MODULES" > "$D/initrd.ok"
    step_done initramfs
    log "modules: $(tr '\n' ' ' < "$I/mods/order")"
fi

# 4. root disk image.  Booted with snapshot=on, so it never changes.
if [ ! -e "$D/image.ok" ]; then
    # Make the rootfs friendly for tests: pip may install system-wide,
    # no apt caches in the image.
    rm -f "$R"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/cache/apt/*.bin
    echo "usercr-$ARCH" > "$R/etc/hostname"
    mkdir -p "$R/root"
    size_mb=$(( $(du -sm "$R" | cut -f1) + 768 ))
    rm -f "$D/root.img"
    mke2fs -q -F -t ext4 -L usercr-root -d "$R" "$D/root.img" "${size_mb}M" >&2
    touch "$D/image.ok"
    step_done image
fi

echo "$RECIPE" > "$D/COMPLETE"
log "complete in $(( $(date +%s) - T0 )) s: $(du -sh "$D/root.img" | cut -f1) image ($(du -sh --apparent-size "$D/root.img" | cut -f1) apparent), kernel $KVER"
