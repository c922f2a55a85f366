"""Namespaces: a tree in network and UTS namespaces of its own comes back in
new ones set up as they were; one in a namespace that cannot be saved (or
with a network interface other than loopback) is refused at checkpoint and
keeps running; never is a tree silently moved into rstr's namespaces."""
import json
import os
import socket

import pytest

from conftest import alive, assert_one_line_error, ckpt, lines, rstr, run, tool, wait_until

# lo up with an extra IPv4 and IPv6 address, next to the ones the kernel gives it.
NET_SETUP = ("hostname box1; domainname dom1; ip link set lo up; ip addr add 10.1.2.3/32 dev lo; "
             "ip -6 addr add fd00::5/64 dev lo")
LO_ADDRS = {"127.0.0.1/8", "10.1.2.3/32", "::1/128", "fd00::5/64"}


def ints(path):
    return [int(x) for x in lines(path) if x.isdigit()]


def last_int(path):
    got = ints(path)
    return got[-1] if got else None


def ns(pid, kind):
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def inside(pid, flag, *cmd):
    """cmd run by nsenter in pid's namespace (-u UTS, -n network)."""
    r = run(["nsenter", "-t", str(pid), flag, *cmd])
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def lo(pid):
    """(up, mtu, addresses) of the loopback interface of pid's network namespace."""
    link = inside(pid, "-n", "ip", "-o", "link", "show", "dev", "lo")
    flags = link.split("<", 1)[1].split(">", 1)[0].split(",")
    mtu = int(link.split(" mtu ", 1)[1].split()[0])
    addrs = {line.split()[3] for line in inside(pid, "-n", "ip", "-o", "addr", "show", "dev", "lo").splitlines()}
    return "UP" in flags, mtu, addrs


def start(procs, workloads, out, setup, *unshare):
    """The counter, started by `unshare` after a shell ran setup inside the new namespaces."""
    p = procs.start(["unshare", *unshare, "sh", "-c", f"{setup}; exec {workloads['counter']} 20"], stdout=out)
    wait_until(lambda: (last_int(out) or 0) >= 3, what="the counter")
    return p.pid


def test_net_and_uts_three_cycles(procs, workloads, tmp_path):
    out = tmp_path / "out"
    host = (socket.gethostname(), ns("self", "net"), ns("self", "uts"))
    pid = start(procs, workloads, out, NET_SETUP, "--net", "--uts")
    assert lo(pid) == (True, 65536, LO_ADDRS)
    for cycle in range(3):
        before = last_int(out)
        img = tmp_path / f"img{cycle}"
        ckpt(pid, img, "--kill")
        procs.kill(pid)
        pid = rstr(procs, img)
        assert ns(pid, "net") != host[1] and ns(pid, "uts") != host[2], "restored into the host's namespaces"
        assert inside(pid, "-u", "hostname") == "box1"
        assert inside(pid, "-u", "domainname") == "dom1"
        assert lo(pid) == (True, 65536, LO_ADDRS)
        wait_until(lambda: last_int(out) >= before + 5, what=f"the counter after restart {cycle + 1}")
    values = ints(out)
    assert values == list(range(len(values))), "the counter must go on from the saved value"
    assert (socket.gethostname(), ns("self", "net"), ns("self", "uts")) == host, "rstr must not change the host's"
    info = json.loads(run([tool("ckptinfo"), "--json", str(img)]).stdout)["namespaces"]
    assert info["own"] == ["uts", "net"] and info["hostname"] == "box1"
    assert set(info["interfaces"][0]["addresses"]) == LO_ADDRS


def test_loopback_exactly_as_it_was(procs, workloads, tmp_path):
    """A changed MTU, and an address the kernel gave lo that was removed, come back so."""
    out, img = tmp_path / "out", tmp_path / "img"
    pid = start(procs, workloads, out, "ip link set lo mtu 1500 up; ip addr del 127.0.0.1/8 dev lo", "--net")
    ckpt(pid, img, "--kill")
    procs.kill(pid)
    pid = rstr(procs, img)
    assert lo(pid) == (True, 1500, {"::1/128"})


def test_loopback_down(procs, workloads, tmp_path):
    out, img = tmp_path / "out", tmp_path / "img"
    pid = start(procs, workloads, out, "true", "--net")
    ckpt(pid, img, "--kill")
    procs.kill(pid)
    before = last_int(out)
    pid = rstr(procs, img)
    assert ns(pid, "net") != ns("self", "net")
    assert lo(pid) == (False, 65536, set())
    wait_until(lambda: last_int(out) >= before + 3, what="the restored counter")


def test_empty_ipc_namespace_stays_its_own(procs, workloads, tmp_path):
    """An IPC namespace of its own without objects is recreated too."""
    out, img = tmp_path / "out", tmp_path / "img"
    pid = start(procs, workloads, out, "true", "--ipc")
    ckpt(pid, img, "--kill")
    procs.kill(pid)
    pid = rstr(procs, img)
    assert ns(pid, "ipc") != ns("self", "ipc")


def test_copies_each_in_new_namespaces(procs, workloads, tmp_path):
    out, img = tmp_path / "out", tmp_path / "img"
    pid = start(procs, workloads, out, NET_SETUP, "--net", "--uts")
    ckpt(pid, img, "--kill")
    procs.kill(pid)
    pidfile = tmp_path / "pids"
    r = run([tool("rstr"), "-i", str(img), "-W", "--copies", "2", "--pidfile", str(pidfile)])
    roots = [procs.track(int(x)) for x in pidfile.read_text().split()] if pidfile.exists() else []
    assert r.returncode == 0, r.stderr
    assert len({ns(root, "net") for root in roots}) == 2, "each copy needs its own network namespace"
    for root in roots:
        assert inside(root, "-u", "hostname") == "box1"
        assert lo(root) == (True, 65536, LO_ADDRS)


def assert_untraced(pid):
    """Running, neither traced nor stopped."""
    assert alive(pid)
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    assert int(status["TracerPid"]) == 0 and not status["State"].strip().startswith("t"), status["State"]


def assert_unharmed(pid, out):
    """Untraced, and counting."""
    assert_untraced(pid)
    before = last_int(out)
    wait_until(lambda: last_int(out) >= before + 3, what="the counter to go on after the refused checkpoint")


@pytest.mark.parametrize("unshare,setup,expect", [
    (["--net"], "ip link add veth0 type veth peer name veth1", "interface veth"),
    (["--net"], "ip link set lo up; ip route add 10.9.0.0/16 dev lo", "route 10.9.0.0/16"),
    (["--mount", "--propagation", "unchanged"], "true", "mount namespace"),
    (["--user"], "true", "user namespace"),
], ids=["veth", "route", "mount", "user"])
def test_refused_and_left_running(procs, workloads, tmp_path, unshare, setup, expect):
    if unshare == ["--user"] and run(["unshare", "--user", "true"]).returncode != 0:
        pytest.skip("this environment cannot create user namespaces (a chroot cannot)")
    out, img = tmp_path / "out", tmp_path / "img"
    pid = start(procs, workloads, out, setup, *unshare)
    r = run([tool("ckpt"), str(pid), "-o", str(img), "--kill"])
    err = assert_one_line_error(r)
    assert expect in err and str(pid) in err, err
    assert_unharmed(pid, out)


def test_child_in_another_network_namespace(procs, workloads, tmp_path):
    out, img = tmp_path / "out", tmp_path / "img"
    counter = workloads["counter"]
    p = procs.start(["sh", "-c", f"unshare --net {counter} 20 & exec {counter} 1000 >/dev/null"], stdout=out)
    child = wait_until(lambda: [int(c) for c in open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
                                if ns(c, "net") != ns("self", "net")], what="the child in its own namespace")[0]
    procs.track(child)
    wait_until(lambda: os.readlink(f"/proc/{p.pid}/exe") == counter, what="the root to exec the counter")
    r = run([tool("ckpt"), str(p.pid), "-o", str(img), "--kill"])
    err = assert_one_line_error(r)
    assert f"process {child} is in another network namespace" in err, err
    assert_untraced(p.pid)
    assert_unharmed(child, out)


def test_thread_in_another_network_namespace(procs, tmp_path):
    """unshare(CLONE_NEWNET) in a thread moves that thread alone."""
    from usercr.arch import current
    out, img = tmp_path / "out", tmp_path / "img"
    script = ("import ctypes, threading, time\n"
              "def moved():\n"
              f"    assert ctypes.CDLL(None).unshare({current().C['CLONE_NEWNET']}) == 0\n"
              "    print('ready', flush=True)\n"
              "    time.sleep(600)\n"
              "threading.Thread(target=moved, daemon=True).start()\n"
              "while True:\n"
              "    time.sleep(0.05)\n")
    p = procs.start(["python3", "-c", script], stdout=out)
    wait_until(lambda: "ready" in lines(out), what="the thread to leave the network namespace")
    r = run([tool("ckpt"), str(p.pid), "-o", str(img)])
    err = assert_one_line_error(r)
    assert f"of process {p.pid} is in another network namespace" in err, err
    assert_untraced(p.pid)
