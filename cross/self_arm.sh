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
if [ "$mode" = qemu ]; then
    # no ptrace, no clone3: the single-threaded program dumps itself, rstr
    # restores it by fork (a new PID); three cycles, each restored copy goes on
    no=$([ "$yes" = 1 ] && echo 0 || echo False)
    if [ "$yes" = 1 ]; then
        # the C program with its second thread: refused in one line, and it goes on counting
        "$@" "$d/img-mt" "$d/log-mt" 2 1 > "$d/out-mt" 2>&1 &
        pid=$!
        if wait_for "$d/log-mt" "^error 2 .*multithreaded" 120 && wait_for "$d/log-mt" "^tick 4 " 60; then
            seen=" mt-refused"
        else
            seen=" mt-not-refused:$(tail -n 2 "$d/log-mt" | tr '\n' ' ')"
        fi
        kill -9 $pid
        wait $pid 2>/dev/null
    fi
    "$@" "$d/img" "$d/log" 5 0 > "$d/out" 2>&1 &
    pid=$!
    for cycle in 1 2 3; do
        n=$((cycle * 5))
        if ! wait_for "$d/log" "^ckpt $n $no\$" 180; then
            echo "RESULT $name FAIL no checkpoint $n: $(tail -n 3 "$d/log" "$d/out" | tr '\n' ' ')"
            kill -9 $pid
            exit 0
        fi
        kill -9 $pid
        wait $pid 2>/dev/null
        if ! rstr -i "$d/img" -W --pidfile "$d/pid" 2> "$d/rstr.err"; then
            echo "RESULT $name FAIL rstr: $(cat "$d/rstr.err")"
            exit 0
        fi
        cat "$d/rstr.err" >> "$d/notes"
        pid=$(cat "$d/pid")
        if ! wait_for "$d/log" "^ckpt $n $yes\$" 120; then
            echo "RESULT $name FAIL restored copy $n: $(tail -n 3 "$d/log" "$d/out" | tr '\n' ' ')"
            kill -9 $pid
            exit 0
        fi
        i=0
        until after=$(awk -v y="ckpt $n $yes" 'f && /^tick/ {print; exit} $0 == y {f = 1}' "$d/log") && [ -n "$after" ]; do
            i=$((i + 1)); [ $i -gt 600 ] && break; sleep 0.1
        done
        seen="$seen $n:${after:-none}"
    done
    kill -9 $pid
    echo "RESULT $name PASS$seen $(sort -u "$d/notes" | tr '\n' ' ')"
    exit 0
fi
"$@" "$d/img" "$d/log" 5 > "$d/out" 2>&1 &
pid=$!
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
