#!/bin/sh
# /init of the vehicle's initramfs (busybox sh).  cross/vm-run appends a
# cpio with /job/{token,cmd,env,manifest,put/N/...}.  We load the modules,
# mount the ext4 root (a qemu snapshot, so writes are thrown away), copy the
# --put files in, switch_root and run /job/cmd there as PID 1's child.  The
# result goes out as marker lines on the serial console; then poweroff -f.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys

TOKEN=$(cat /job/token 2>/dev/null || echo notoken)
fail() {
    echo "@@USERCR-FAIL $TOKEN $*"
    poweroff -f
    sleep 60
}

[ -f /job/cmd ] || fail "no /job/cmd in initramfs"
for m in $(cat /mods/order); do
    insmod "/mods/$m" || fail "insmod $m"
done
i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ $i -gt 300 ] && fail "no /dev/vda after 30 s"
    sleep 0.1
done
mount -t ext4 /dev/vda /newroot || fail "mount root"

# --put: manifest lines "N DEST"; /job/put/N holds exactly one entry.
if [ -f /job/manifest ]; then
    while read -r n dest; do
        src=/job/put/$n/$(ls -A "/job/put/$n")
        case "$dest" in
            */) mkdir -p "/newroot$dest" && cp -a "$src" "/newroot$dest" ;;
            *)  if [ -d "/newroot$dest" ]; then
                    cp -a "$src" "/newroot$dest/"
                else
                    mkdir -p "/newroot$(dirname "$dest")" && cp -a "$src" "/newroot$dest"
                fi ;;
        esac || fail "put $dest"
    done < /job/manifest
fi

mount -t tmpfs -o mode=755 run /newroot/run || fail "mount /run"
mkdir -p /newroot/run/usercr
cp /bin/busybox /job/cmd /job/env /job/token /stage2.sh /newroot/run/usercr/
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /run/usercr/busybox sh /run/usercr/stage2.sh
fail "switch_root"
