"""ckptinfo on a real image, and the format document kept true."""
import json
import os
import subprocess
import sys

from conftest import ckpt, lines, run, tool, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ckptinfo_views(procs, workloads, tmp_path):
    out, img = tmp_path / "out", tmp_path / "img"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="counter")
    ckpt(p.pid, img)
    r = run([tool("ckptinfo"), "-v", "-p", "--show-arch-regs", "-e", str(img)])
    assert r.returncode == 0, r.stderr
    assert f"pid {p.pid}" in r.stdout and "rip" in r.stdout and "TAIL" in r.stdout and "[vdso]" in r.stdout
    data = json.loads(run([tool("ckptinfo"), "--json", str(img)]).stdout)
    assert data["schema"] == 1 and data["arch"] == "x86_64" and data["processes"][0]["pid"] == p.pid
    assert [r["type"] for r in data["records"]][0] == "HEADER" and data["records"][-1]["type"] == "TAIL"
    with open(img, "rb") as f:
        r = subprocess.run([tool("ckptinfo")], stdin=f, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "counter" in r.stdout


def test_format_document_matches_records():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_format_doc.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_json_owners_and_no_padding(procs, workloads, tmp_path):
    """ckptinfo --json (schema 1, docs/api.md): every process with its threads
    (the registers of each), mappings and fds, each naming its owner; no
    record field is padding."""
    out, img = tmp_path / "out", tmp_path / "img"
    p = procs.start([workloads["threads"]], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="threads")
    ckpt(p.pid, img)
    data = json.loads(run([tool("ckptinfo"), "--json", str(img)]).stdout)
    tids = sorted(int(t) for t in os.listdir(f"/proc/{p.pid}/task"))
    proc = data["processes"][0]
    assert sorted(t["tid"] for t in proc["threads"]) == tids
    for t in proc["threads"]:
        assert t["pid"] == p.pid and set(t["registers"]) >= {"rip", "rsp", "fs_base"}
    assert len({t["registers"]["rsp"] for t in proc["threads"]}) == len(tids), "each thread's own registers"
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{p.pid}/fd"))
    assert sorted(f["fd"] for f in proc["files"]) == fds and all(f["pid"] == p.pid for f in proc["files"])
    assert all(m["pid"] == p.pid for m in proc["mappings"]) and len(proc["mappings"]) == data["mappings"]
    assert proc["pages"] == data["pages"] > 0
    fields = [k for r in data["records"] for k in r["fields"]]
    assert "magic" in fields and not [k for k in fields if k.startswith("pad")]
