#!/bin/sh
# PID 1 after switch_root into the Debian root (run by busybox sh; the
# rootfs has no init system, so busybox also does the poweroff).
U=/run/usercr
BB=$U/busybox
TOKEN=$(cat $U/token)
$BB mount -t tmpfs -o mode=1777 tmp /tmp
$BB mkdir -p /dev/pts /dev/shm
$BB mount -t devpts devpts /dev/pts
$BB mount -t tmpfs -o mode=1777 shm /dev/shm
$BB hostname -F /etc/hostname 2>/dev/null
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb PYTHONDONTWRITEBYTECODE=1
. $U/env
cd /root

# stderr is tagged line by line so vm-run can send it to its own stderr.
$BB mkfifo $U/err
$BB sed "s/^/@@E@@$TOKEN /" < $U/err &
reader=$!
echo "@@USERCR-START $TOKEN"
/bin/sh $U/cmd < /dev/null 2> $U/err
rc=$?
# The reader ends when every writer closed the fifo; bound the wait in
# case a leftover background process still holds it.
( $BB sleep 2; $BB kill $reader ) 2>/dev/null &
wait $reader
$BB sync
echo "@@USERCR-EXIT $TOKEN $rc"
$BB poweroff -f
$BB sleep 60
