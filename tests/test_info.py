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
    assert data["arch"] == "x86_64" and data["tasks"][0]["pid"] == p.pid
    assert [r["type"] for r in data["records"]][0] == "HEADER" and data["records"][-1]["type"] == "TAIL"
    with open(img, "rb") as f:
        r = subprocess.run([tool("ckptinfo")], stdin=f, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "counter" in r.stdout


def test_format_document_matches_records():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_format_doc.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
