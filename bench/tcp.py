"""TCP benchmarks (not tests): ckpt --kill and rstr of a Python asyncio echo
server with four client tasks on 127.0.0.1, and of a process holding 0 and
1,000 established loopback connections (both ends, 2,000 sockets, a few
bytes unread in each direction of each). Images on tmpfs, median of 5, each
run on a fresh program (its ports are free again once the killed one's
sockets, closed in repair mode, are gone). Prints seconds and, from the 0
and 1,000 runs of the same invocation, the cost of one connection and its
ratio to the whole no-connection dump or restore.
Run alone (python bench/tcp.py) or as part of bench/run.py."""
import statistics
import sys
import tempfile

from run import RUNS, TMPFS, measure

CONNS = r"""
import resource, socket, time
n = {n}
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * n + 64)), hard))
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(128)
pairs = []
for i in range(n):
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    c.sendall(b"to server %d" % i); a.sendall(b"to client %d" % i)
    pairs.append((c, a))
print("ready", flush=True)
while True:
    time.sleep(1)
"""

ASYNCIO = r"""
import asyncio

async def handle(reader, writer):
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()

async def client(port, tag):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    while True:
        writer.write(b"%s %d\n" % (tag, n))
        await writer.drain()
        await reader.readline()
        n += 1
        await asyncio.sleep(0.01)

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tasks = [asyncio.create_task(client(port, b"c%d" % i)) for i in range(4)]
    await asyncio.sleep(0.2)
    print("ready", flush=True)
    await asyncio.gather(server.serve_forever(), *tasks)

asyncio.run(main())
"""


def figures(name, code, tmp):
    """(median dump s, median restore s, image bytes)."""
    res = measure(name, code, tmp)
    return res.med("dump"), res.med("restore"), res.size


def main(tmp=None):
    if tmp is None:
        with tempfile.TemporaryDirectory(dir=TMPFS) as tmp:
            return main(tmp)
    d, r, size = figures("asyncio", ASYNCIO, tmp)
    print(f"tcp asyncio (5 connections, listener) dump {d:.3f} s  restore {r:.3f} s  image {size / 2**20:.1f} MiB",
          flush=True)
    got = {}
    for n in (0, 1000):
        d, r, size = got[n] = figures(f"conns{n}", CONNS.format(n=n), tmp)
        print(f"tcp {n:4} connections  dump {d:.3f} s  restore {r:.3f} s  image {size / 2**20:.1f} MiB", flush=True)
    (d0, r0, _), (d1, r1, _) = got[0], got[1000]
    dc, rc = (d1 - d0) / 1000, (r1 - r0) / 1000
    print(f"tcp per connection (2 sockets): dump {dc * 1000:.2f} ms = {dc / d0:.4f} x the no-connection dump;  "
          f"restore {rc * 1000:.2f} ms = {rc / r0:.4f} x the no-connection restore  (median of {RUNS})", flush=True)
    return statistics.mean((dc / d0, rc / r0))


if __name__ == "__main__":
    main()
    sys.exit(0)
