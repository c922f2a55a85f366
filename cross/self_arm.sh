#!/bin/sh
# Self-checkpoint on ARM, run inside the VM (cross/vm-run) or under qemu-user
# (cross/qemu-run) by cross/test_self_arm.py; usercr is installed there.
#   self_arm.sh vm|qemu NAME YES PROG [ARGS...]
# PROG IMAGE LOG EVERY is a counter_self (tests/selfckpt); YES is what its log
# says for "restored". One RESULT line per case.
mode=$1 name=$2 yes=$3
shift 3
d=/tmp/$name
mkdir -p "$d"
wait_for() {  # FILE REGEX SECONDS
    i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1))
        [ $i -gt $(($3 * 10)) ] && return 1
        sleep 0.1
    done
}
"$@" "$d/img" "$d/log" 5 > "$d/out" 2>&1 &
pid=$!
if [ "$mode" = qemu ]; then
    # no ptrace under qemu-user: the call must fail in one line and the program go on
    wait_for "$d/log" "^error 5 \|^ckpt 5 " 120
    wait_for "$d/log" "^tick 7 " 60
    kill -9 $pid
    echo "RESULT $name $(grep -q '^tick 7 ' "$d/log" && echo PASS || echo FAIL) $(grep '^error 5 \|^ckpt 5 ' "$d/log")"
    exit 0
fi
if ! wait_for "$d/log" "^ckpt 5 " 120; then
    echo "RESULT $name FAIL no checkpoint: $(tail -n 3 "$d/log" "$d/out" | tr '\n' ' ')"
    kill -9 $pid
    exit 0
fi
kill -9 $pid
wait $pid 2>/dev/null
if ! rstr -i "$d/img" -W --pidfile "$d/pid" 2> "$d/rstr.err"; then
    echo "RESULT $name FAIL rstr: $(cat "$d/rstr.err")"
    exit 0
fi
wait_for "$d/log" "^ckpt [0-9]* $yes\$" 60
n=$(grep "^ckpt [0-9]* $yes\$" "$d/log" | head -n 1 | cut -d' ' -f2)
# ticks after the restored copy's answer: it must go on from tick n
i=0
while [ "$(awk -v y="ckpt $n $yes" 'f && /^tick/ {c++} $0 == y {f = 1} END {print c + 0}' "$d/log")" -lt 3 ]; do
    i=$((i + 1)); [ $i -gt 600 ] && break; sleep 0.1
done
after=$(awk -v y="ckpt $n $yes" 'f && /^tick/ {print; exit} $0 == y {f = 1}' "$d/log")
kill -9 "$(cat "$d/pid")" 2>/dev/null
echo "RESULT $name $([ -n "$n" ] && [ "${after%% *}" = tick ] && echo PASS || echo FAIL) restored at ckpt ${n:-none}, then: $after"
