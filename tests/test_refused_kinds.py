"""Kinds of file descriptor usercr does not save: a program holding one is
refused at checkpoint in one line naming the fd, the PID and the kind, and
runs on. Each is created by the workload itself with its raw syscall."""
import os
import sys

import pytest

from conftest import alive, assert_one_line_error, lines, run, tool, wait_until

HOLDER = r"""
import ctypes, os, platform, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
NR = {"x86_64": dict(io_uring_setup=425, perf_event_open=298, bpf=321, fanotify_init=300, userfaultfd=323,
                     memfd_secret=447),
      "aarch64": dict(io_uring_setup=425, perf_event_open=241, bpf=280, fanotify_init=262, userfaultfd=282,
                      memfd_secret=447)}[platform.machine()]
kind = sys.argv[1]
keep = None
if kind == "netlink":
    keep = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); fd = keep.fileno()
elif kind == "packet":
    keep = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0); fd = keep.fileno()
elif kind == "io_uring":
    fd = libc.syscall(NR["io_uring_setup"], 4, ctypes.create_string_buffer(120))
elif kind == "perf_event":   # PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, on this process
    attr = ctypes.create_string_buffer((1).to_bytes(4, "little") + (128).to_bytes(4, "little") + bytes(120))
    fd = libc.syscall(NR["perf_event_open"], attr, 0, -1, -1, 0)
elif kind == "bpf":          # BPF_MAP_CREATE of a one-entry array
    attr = ctypes.create_string_buffer(b"".join(v.to_bytes(4, "little") for v in (2, 4, 4, 1)) + bytes(112))
    fd = libc.syscall(NR["bpf"], 0, attr, 128)
elif kind == "fanotify":
    fd = libc.syscall(NR["fanotify_init"], 0, 0)
elif kind == "userfaultfd":
    fd = libc.syscall(NR["userfaultfd"], 0)
elif kind == "pidfd":
    fd = os.pidfd_open(os.getpid())
elif kind == "memfd_secret":
    fd = libc.syscall(NR["memfd_secret"], 0)
out = open(sys.argv[2], "a", buffering=1)
out.write(f"fd {fd} errno {ctypes.get_errno()}\n")
n = 0
while True:
    out.write(f"{n}\n"); n += 1
    time.sleep(0.02)
"""

# kind -> what the refusal calls it
KINDS = {"netlink": "netlink socket", "packet": "packet socket", "io_uring": "io_uring",
         "perf_event": "perf_event", "bpf": "bpf-map", "fanotify": "fanotify", "userfaultfd": "userfaultfd",
         "pidfd": "pidfd", "memfd_secret": "memfd_secret"}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_refused_in_one_line(procs, tmp_path, kind):
    out = tmp_path / "out"
    pid = procs.start([sys.executable, "-c", HOLDER, kind, str(out)]).pid
    wait_until(lambda: len(lines(out)) >= 3, what="the workload")
    fd = int(lines(out)[0].split()[1])
    assert fd >= 0, f"this kernel refused to create a {kind}: {lines(out)[0]}"
    r = run([tool("ckpt"), str(pid), "-o", str(tmp_path / "img"), "--kill"])
    err = assert_one_line_error(r)
    assert f"fd {fd} " in err and f"process {pid}" in err and KINDS[kind] in err, err
    assert not os.path.exists(tmp_path / "img")
    n = len(lines(out))
    wait_until(lambda: len(lines(out)) >= n + 3, what="the workload to run on")
    assert alive(pid)
