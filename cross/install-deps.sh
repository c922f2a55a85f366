#!/bin/bash
# Install the host packages the ARM test vehicle needs and register
# binfmt_misc for qemu-arm/qemu-aarch64 (with the F flag, so chroot into a
# foreign rootfs works).  Idempotent: a second run changes nothing.
# Never adds foreign dpkg architectures: that breaks apt-get update here.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "install-deps.sh: must run as root" >&2; exit 1; }

# --no-install-recommends leaves the cross compilers without their C library
# and kernel headers (asm/unistd.h): name those packages too.
PKGS=(gcc gcc-arm-linux-gnueabihf gcc-aarch64-linux-gnu
      libc6-dev-armhf-cross libc6-dev-arm64-cross
      linux-libc-dev-armhf-cross linux-libc-dev-arm64-cross
      qemu-user-static binfmt-support qemu-system-arm
      debootstrap cpio kmod e2fsprogs busybox-static
      ca-certificates)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update
    timeout 1200 apt-get install -y --no-install-recommends "${missing[@]}"
fi

# binfmt_misc: mount if needed, then make sure each entry exists with F.
BM=/proc/sys/fs/binfmt_misc
if [ ! -e "$BM/register" ]; then
    mount -t binfmt_misc binfmt_misc "$BM"
fi
for a in arm aarch64; do
    conf=/usr/lib/binfmt.d/qemu-$a.conf
    [ -r "$conf" ] || { echo "install-deps.sh: $conf missing" >&2; exit 1; }
    line=$(grep -v '^#' "$conf" | grep -v '^$' | head -n1)
    flags=${line##*:}
    case "$flags" in *F*) ;; *) line="$line"F ;; esac
    entry=$BM/qemu-$a
    if [ -e "$entry" ]; then
        if grep -q '^flags:.*F' "$entry" && grep -q '^enabled' "$entry"; then
            continue
        fi
        echo -1 > "$entry"      # wrong flags or disabled: re-register
    fi
    echo "$line" > "$BM/register"
done

for a in arm aarch64; do
    grep -q '^flags:.*F' "$BM/qemu-$a" \
        || { echo "install-deps.sh: qemu-$a not registered with F" >&2; exit 1; }
done
echo "install-deps.sh: ok"
