"""Real servers with their clients in the same tree, each checkpointed with
--kill and restored three times: Node.js (an HTTP server and a client on
setInterval), `python3 -m http.server` with a client loop checking a file's
hash, and a Java ServerSocket with a client thread. Each goes on where it
was: the numbers it logs run on with no gap or repeat.

A client that has just connected (not yet accepted) or just been answered
(the server's end closed, its own not yet) cannot be checkpointed, and ckpt
refuses in one line and leaves the tree running; the clients pause between
requests, and a checkpoint that met one of those moments is taken again."""
import hashlib
import shutil
import subprocess
import sys
import time

import pytest

from conftest import assert_one_line_error, lines, rstr, run, tool, wait_until
from test_tree import tree

CYCLES = 3
TRANSIENT = ("waiting to be accepted", "waits to be accepted", "was closed at the other end", "whose connection is closed",
             "in state SYN_SENT", "in state CLOSE_WAIT", "in state FIN_WAIT", "in state LAST_ACK")
ATTEMPTS = 20


def checkpoint_killed(procs, pid, img):
    """ckpt --kill, taken again while it meets a connection being set up or torn down."""
    for _ in range(ATTEMPTS):
        r = run([tool("ckpt"), str(pid), "-o", str(img), "--kill"])
        if r.returncode == 0:
            procs.kill(pid)
            return
        err = assert_one_line_error(r)
        assert any(t in err for t in TRANSIENT), err
        print(f"checkpoint taken again: {err}")
        time.sleep(0.05)
    pytest.fail(f"no checkpoint in {ATTEMPTS} attempts: {err}")


def numbers(out, tag):
    got = [int(line.split()[1]) for line in lines(out) if line.startswith(tag + " ")]
    assert got == list(range(len(got))), f"{tag}: {got}"
    return len(got)


def cycles(procs, tmp_path, pid, out, tags):
    for k in range(CYCLES):
        seen = {t: numbers(out, t) for t in tags}
        wait_until(lambda: all(numbers(out, t) >= seen[t] + 3 for t in tags), 30, f"{tags} to go on")
        img = tmp_path / f"img{k}"
        checkpoint_killed(procs, pid, img)
        pid = rstr(procs, img)
    for child, _ in tree(pid):  # killed by PID at the end, as the root is
        procs.track(child)
    seen = {t: numbers(out, t) for t in tags}
    wait_until(lambda: all(numbers(out, t) >= seen[t] + 3 for t in tags), 30, f"{tags} to go on after the last")
    assert not any("error" in line.lower() for line in lines(out)), lines(out)
    return pid


NODE = r"""
const http = require("http"), fs = require("fs");
const out = process.argv[2];
const log = (s) => fs.appendFileSync(out, s + "\n");
let served = 0, ticks = 0, asked = 0;
const server = http.createServer((req, res) => {
  res.end(`answer ${served++} to ${req.url}`);
});
server.listen(0, "127.0.0.1", () => {
  const port = server.address().port;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  setInterval(() => log(`tick ${ticks++}`), 50);
  const ask = () => {
    const n = asked;
    http.get({ host: "127.0.0.1", port, path: `/q${n}`, agent }, (res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => {
        if (body !== `answer ${n} to /q${n}`) log(`error ${body}`);
        log(`got ${n}`);
        asked++;
        setTimeout(ask, 30);
      });
    }).on("error", (e) => log(`error ${e}`));
  };
  ask();
});
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_http_server(procs, tmp_path):
    """Node.js: an HTTP server, and a keep-alive client on setTimeout, with a setInterval tick."""
    out = tmp_path / "out"
    script = tmp_path / "server.js"
    script.write_text(NODE)
    pid = procs.start(["node", str(script), str(out)]).pid
    cycles(procs, tmp_path, pid, out, ("tick", "got"))


HTTP_CLIENT = r"""
import hashlib, os, subprocess, sys, time, urllib.request
out, root, port = open(sys.argv[1], "a", buffering=1), sys.argv[2], sys.argv[3]
want = hashlib.sha256(open(os.path.join(root, "data.bin"), "rb").read()).hexdigest()
server = subprocess.Popen([sys.executable, "-m", "http.server", "-b", "127.0.0.1", "-d", root, port],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
n = 0
while True:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/data.bin", timeout=30).read()
    except OSError as e:
        if n == 0:   # the server is not listening yet
            time.sleep(0.05)
            continue
        out.write(f"error {e!r}\n")
        raise
    if hashlib.sha256(body).hexdigest() != want:
        out.write("error: wrong hash\n")
    out.write(f"fetched {n}\n")
    n += 1
    time.sleep(0.1)
"""


def test_python_http_server(procs, tmp_path):
    """`python3 -m http.server` serving a directory, with a client loop in the tree fetching a file and
    checking its hash."""
    from test_inet import free_port
    out, root = tmp_path / "out", tmp_path / "www"
    root.mkdir()
    (root / "data.bin").write_bytes(hashlib.sha256(b"seed").digest() * 20000)  # 640 KB
    pid = procs.start([sys.executable, "-c", HTTP_CLIENT, str(out), str(root), str(free_port())]).pid
    cycles(procs, tmp_path, pid, out, ("fetched",))


JAVA = r"""
import java.io.*;
import java.net.*;

public class Echo {
    public static void main(String[] args) throws Exception {
        PrintStream out = new PrintStream(new FileOutputStream(args[0], true), true);
        ServerSocket server = new ServerSocket(0, 8, InetAddress.getLoopbackAddress());
        int port = server.getLocalPort();
        Thread client = new Thread(() -> {
            try (Socket s = new Socket(InetAddress.getLoopbackAddress(), port)) {
                BufferedReader in = new BufferedReader(new InputStreamReader(s.getInputStream()));
                PrintWriter w = new PrintWriter(s.getOutputStream(), true);
                for (int n = 0; ; n++) {
                    w.println("q" + n);
                    String line = in.readLine();
                    if (!("echo q" + n).equals(line)) out.println("error " + line);
                    out.println("echo " + n);
                    Thread.sleep(30);
                }
            } catch (Exception e) { out.println("error " + e); }
        });
        client.start();
        Socket c = server.accept();
        BufferedReader in = new BufferedReader(new InputStreamReader(c.getInputStream()));
        PrintWriter w = new PrintWriter(c.getOutputStream(), true);
        String line;
        while ((line = in.readLine()) != null) w.println("echo " + line);
    }
}
"""


@pytest.mark.skipif(shutil.which("javac") is None, reason="javac is not installed")
def test_java_server_socket(procs, tmp_path):
    """Java: a ServerSocket and a client thread echoing numbered lines."""
    out, classes = tmp_path / "out", tmp_path / "classes"
    classes.mkdir()
    (classes / "Echo.java").write_text(JAVA)
    subprocess.run(["javac", "-d", str(classes), str(classes / "Echo.java")], check=True, timeout=120)
    pid = procs.start(["java", "-Xmx64m", "-XX:+UseSerialGC", "-cp", str(classes), "Echo", str(out)]).pid
    cycles(procs, tmp_path, pid, out, ("echo",))
