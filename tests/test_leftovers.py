"""No leftovers: after a restart no mapping of usercr (the restorer region)
remains in any process of the restored tree, so checkpoint/restart cycles
keep a program's layout and image size as they were. Where ptrace is
forbidden the region stays; a clean-up that fails kills the tree."""
import json
import os
import signal
import subprocess

import pytest

from conftest import alive, assert_one_line_error, ckpt, lines, run, tool, wait_until
from test_tree import family, recycle, start, ticked, ticks, tree

PTRACE_GET_SYSCALL_INFO = 0x420E
EPERM, EIO = 1, 5

# Runs a command with ptrace (or only one ptrace request) failing with an errno.
DENY_PTRACE = r"""
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

int main(int argc, char **argv)
{
    long request = atol(argv[1]);  /* -1: every request */
    unsigned err = (unsigned)atoi(argv[2]);
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_ptrace, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)request, 0, request < 0 ? 0 : 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
        return 126;
    execv(argv[3], argv + 3);
    return 127;
}
"""


def layout(pid):
    """Every mapping of pid: (start, end, perms, name)."""
    out = []
    for line in lines(f"/proc/{pid}/maps"):
        parts = line.split(None, 5)
        lo, hi = parts[0].split("-")
        out.append((int(lo, 16), int(hi, 16), parts[1], parts[5] if len(parts) > 5 else ""))
    return out


def inner_pid(pid):
    with open(f"/proc/{pid}/status") as f:
        return int([x for x in f if x.startswith("NSpid:")][0].split()[-1])


def layouts(root, same_pids=True):
    """{PID as its namespace sees it (else the place in the tree): layout}
    of every live process of the tree."""
    live = [pid for pid, _ in tree(root) if alive(pid)]
    return {inner_pid(pid) if same_pids else k: layout(pid) for k, pid in enumerate(live)}


def merged(maps):
    """maps with adjacent anonymous mappings of the same protection as one,
    as the kernel merges them when the restorer maps them one after the
    other (a program may have them apart: glibc's thread stacks)."""
    out = []
    for m in maps:
        if out and out[-1][1] == m[0] and out[-1][2:] == m[2:] and not m[3]:
            out[-1] = (out[-1][0], m[1], m[2], m[3])
        else:
            out.append(m)
    return out


def assert_same_layouts(before, after, merge=False):
    """The same mappings (no region, nothing else new), process by process."""
    assert sorted(after) == sorted(before)
    for pid, maps in before.items():
        now = merged(after[pid]) if merge else after[pid]
        maps = merged(maps) if merge else maps
        assert not [m for m in now if m not in maps], f"process {pid} has mappings it did not have"
        assert len(now) == len(maps), f"process {pid}: {len(now)} mappings, was {len(maps)}"


def count_on(out, past):
    wait_until(lambda: len(lines(out)) > past + 3, 20, "the counter to go on")
    got = [int(x) for x in lines(out)[past:] if x.isdigit()]
    assert got == list(range(got[0], got[0] + len(got)))


def image_size(img):
    """Bytes of the image but its PIPE records: the data buffered in pipes is
    the program's own, and changes from one checkpoint to the next."""
    r = run([tool("ckptinfo"), "--json", "-v", str(img)])
    assert r.returncode == 0, r.stderr
    return sum(rec["length"] for rec in json.loads(r.stdout)["records"] if rec["type"] != "PIPE")


def cycle(procs, tmp_path, root, k, how):
    """ckpt --kill, kill the tree, rstr; returns (restored root, image size)."""
    img = tmp_path / f"img{k}"
    root = recycle(procs, root, img, *how)
    size = image_size(img)
    img.unlink()
    return root, size


@pytest.mark.parametrize("how", [(), ("--pids", "--pidns")], ids=["default", "pids-pidns"])
def test_counter_ten_cycles(procs, workloads, tmp_path, how):
    out = tmp_path / "out"
    root = procs.start([workloads["counter"], "5"], stdout=out).pid
    wait_until(lambda: len(lines(out)) > 3, 20, "the counter to count")
    same_pids = bool(how)
    before, sizes = layouts(root, same_pids), []
    for k in range(10):
        past = len(lines(out))
        root, size = cycle(procs, tmp_path, root, k, how)
        sizes.append(size)
        count_on(out, past)
        assert_same_layouts(before, layouts(root, same_pids))
    assert sizes[1:] == sizes[:1] * 9, "images of a counter must not grow from cycle to cycle"


@pytest.mark.parametrize("name", ["threads", "multitask"])
def test_tree_three_cycles(procs, workloads, tmp_path, name):
    """Every process of the tree (and every thread: they share its maps).
    The first restore may merge adjacent anonymous mappings; from then on
    the layout stays exactly as it is."""
    out = tmp_path / "out"
    root = start(procs, workloads[name], out)
    before, sizes = layouts(root), []
    assert len(before) == (1 if name == "threads" else 7)
    for k in range(3):
        last = ticks(out)[-1]
        root, size = cycle(procs, tmp_path, root, k, ("--pids", "--pidns"))
        sizes.append(size)
        ticked(out, last + 5)
        now = layouts(root)
        assert_same_layouts(before, now, merge=True)
        if k == 0:
            first = now
        assert_same_layouts(first, now)
    # Merged mappings make the later images smaller by their VMA (and maybe a
    # PAGES) record each; beyond that the images do not change.
    joined = sum(len(maps) - len(merged(maps)) for maps in before.values())
    assert sizes[2] == sizes[1] and 0 <= sizes[0] - sizes[1] <= 128 * joined, (sizes, joined)


def test_sigstop_during_release(procs, workloads, tmp_path):
    """SIGSTOP, the one signal the restorer cannot block, sent as soon as the
    pidfile names the root (the release is then under way): rstr succeeds,
    the program ends up stopped, with no region, and goes on after SIGCONT."""
    out, img = tmp_path / "out", tmp_path / "img"
    root = procs.start([workloads["counter"], "5"], stdout=out).pid
    wait_until(lambda: len(lines(out)) > 3, 20, "the counter to count")
    before = layout(root)
    ckpt(root, img, "--kill")
    procs.kill(root)
    for k in range(5):
        pidfile = tmp_path / f"pid{k}"
        r = subprocess.Popen([tool("rstr"), "-i", str(img), "-W", "--pidfile", str(pidfile)],
                             stderr=subprocess.PIPE, text=True)
        pid = procs.track(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() and
                                     int(pidfile.read_text()), 20, "the pidfile"))
        os.kill(pid, signal.SIGSTOP)
        assert r.wait(timeout=30) == 0, r.stderr.read()
        r.stderr.close()
        wait_until(lambda: state(pid) == "T", 10, "the program to be stopped")
        assert layout(pid) == before
        past = len(lines(out))
        os.kill(pid, signal.SIGCONT)
        count_on(out, past)
        procs.kill(pid)


def state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture(scope="module")
def deny_ptrace(tmp_path_factory):
    d = tmp_path_factory.mktemp("deny")
    src, exe = d / "deny.c", d / "deny"
    src.write_text(DENY_PTRACE)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return str(exe)


def test_without_ptrace_the_region_stays(procs, workloads, tmp_path, deny_ptrace):
    out, img, pidfile = tmp_path / "out", tmp_path / "img", tmp_path / "pid"
    root = procs.start([workloads["counter"], "5"], stdout=out).pid
    wait_until(lambda: len(lines(out)) > 3, 20, "the counter to count")
    before = layout(root)
    ckpt(root, img, "--kill")
    procs.kill(root)
    past = len(lines(out))
    r = run([deny_ptrace, "-1", str(EPERM), tool("rstr"), "-i", str(img), "-W", "--pidfile", str(pidfile)])
    assert r.returncode == 0, r.stderr
    root = procs.track(int(pidfile.read_text()))
    count_on(out, past)
    extra = [m for m in layout(root) if m not in before]
    assert extra and all(m[0] >= 1 << 30 for m in extra), extra


def test_check_says_when_the_region_stays(deny_ptrace):
    ok = run([tool("usercr"), "check"])
    assert "ok       restorer unmapped after restart" in ok.stdout.splitlines(), ok.stdout
    r = run([deny_ptrace, "-1", str(EPERM), tool("usercr"), "check"])
    row = [x for x in r.stdout.splitlines() if "restorer unmapped after restart" in x]
    assert row and row[0].startswith("absent") and "leaves its restorer region mapped" in row[0], r.stdout


def named(comm):
    """Live processes called comm."""
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == comm and alive(int(p)):
                    out.append(int(p))
        except OSError:
            pass
    return out


def test_failed_cleanup_kills_the_tree(procs, workloads, tmp_path, deny_ptrace):
    """A clean-up that fails (here: PTRACE_GET_SYSCALL_INFO refused) kills
    every restored process; rstr says so in one line."""
    out, img, pidfile = tmp_path / "out", tmp_path / "img", tmp_path / "pid"
    root = start(procs, workloads["multitask"], out)
    ckpt(root, img, "--kill")
    for pid in family(root):
        procs.kill(pid)
    assert not named("multitask")
    r = run([deny_ptrace, str(PTRACE_GET_SYSCALL_INFO), str(EIO), tool("rstr"), "-i", str(img), "-W",
             "--pidfile", str(pidfile)])
    err = assert_one_line_error(r)
    assert "restored process" in err and os.strerror(EIO) in err, err
    procs.track(int(pidfile.read_text()))
    wait_until(lambda: not named("multitask"), 10, "every restored process to die")
