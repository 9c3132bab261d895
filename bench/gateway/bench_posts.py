"""Benchmark of the emulator's fan-out path: @connections POSTs delivered as
WebSocket frames to N connections (not a pytest test; run it directly):

    flock /tmp/rtstream-bench.lock .venv/bin/python bench/gateway/bench_posts.py --n 1000 --rounds 30

The emulator runs in its own process (uvloop, like `rtstream dev`) on the
fixture API; this process holds N lean raw WebSocket clients and posts through
a few keep-alive connections with pipelining, as the fan-out worker's pooled
poster does. Prints the figures and appends a dated section to bench/RESULTS.md.
Every wait is bounded; the server process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "tests" / "gateway" / "fixture_api" / "template.yaml"

SERVER = """
import asyncio, sys
from rtstream_gateway import GatewayEmulator
async def main():
    gw = GatewayEmulator(sys.argv[1], port=int(sys.argv[2]), env={"GATEWAY_TEST_RECORD": "/dev/null"})
    await gw.start()
    print("ready", flush=True)
    await asyncio.sleep(float(sys.argv[3]))
    await gw.stop()
try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


class LeanWsClient(asyncio.Protocol):
    """Handshake, learn the connection id (echo route), then count frames."""

    def __init__(self, stage: str):
        loop = asyncio.get_running_loop()
        self.stage = stage
        self.buf = b""
        self.opened = loop.create_future()
        self.connection_id = loop.create_future()
        self.handshaken = False
        self.frames = 0
        self.target = 0
        self.done: asyncio.Future | None = None

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(f"GET /{self.stage}?token=allow-bench HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())

    def data_received(self, data):
        self.buf += data
        if not self.handshaken:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.handshaken = True
            self.buf = self.buf[end + 4:]
            self.opened.set_result(None)
        while len(self.buf) >= 2:
            length, offset = self.buf[1] & 0x7F, 2
            if length == 126:
                if len(self.buf) < 4:
                    return
                length, offset = int.from_bytes(self.buf[2:4], "big"), 4
            if len(self.buf) < offset + length:
                return
            payload, self.buf = self.buf[offset:offset + length], self.buf[offset + length:]
            if not self.connection_id.done():
                self.connection_id.set_result(json.loads(payload)["event"]["requestContext"]["connectionId"])
                continue
            self.frames += 1
            if self.done is not None and self.frames >= self.target and not self.done.done():
                self.done.set_result(None)

    def send_text(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        header = bytes([0x81, 0x80 | len(data)]) if len(data) < 126 else bytes([0x81, 0x80 | 126]) + len(data).to_bytes(2, "big")
        self.transport.write(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


class PipelinedPoster(asyncio.Protocol):
    def __init__(self):
        self.ok = 0
        self.want = 0
        self.waiter: asyncio.Future | None = None
        self.tail = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        chunk = self.tail + data
        self.ok += chunk.count(b"HTTP/1.1 200 ")
        self.tail = chunk[-12:]
        if self.waiter is not None and self.ok >= self.want and not self.waiter.done():
            self.waiter.set_result(None)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args) -> dict:
    loop = asyncio.get_running_loop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(TEMPLATE), str(port), "300"], stdout=subprocess.PIPE, text=True)
    try:
        ready = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 30)
        assert ready.strip() == "ready", ready
        stage = "test"
        clients: list[LeanWsClient] = []
        started = time.monotonic()
        for first in range(0, args.n, 100):
            batch = [(await loop.create_connection(lambda: LeanWsClient(stage), "127.0.0.1", port))[1]
                     for _ in range(min(100, args.n - first))]
            await asyncio.wait_for(asyncio.gather(*(c.opened for c in batch)), 30)
            for c in batch:
                c.send_text('{"type":"echo","show_event":true}')
            await asyncio.wait_for(asyncio.gather(*(c.connection_id for c in batch)), 30)
            clients += batch
        connect_seconds = time.monotonic() - started
        posters = [(await loop.create_connection(PipelinedPoster, "127.0.0.1", port))[1] for _ in range(args.connections)]
        payload = json.dumps({"type": "event", "topic": "transactions.new", "id": "1764090000000-0",
                              "data": {"transactionId": "t1", "amount": 42.5, "merchant": "Cafe"},
                              "source": "bench", "timestamp": "2026-11-25T12:00:00.000Z"}).encode()
        requests = [f"POST /{stage}/@connections/{c.connection_id.result()} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload
                    for c in clients]
        shards = [b"".join(requests[k::args.connections]) for k in range(args.connections)]
        counts = [len(requests[k::args.connections]) for k in range(args.connections)]
        for c in clients:
            c.target, c.done = args.rounds, loop.create_future()
        cpu_before = cpu_seconds(server.pid)
        started = time.monotonic()
        for _ in range(args.rounds):
            for poster, shard, count in zip(posters, shards, counts):
                poster.want += count
                poster.waiter = loop.create_future()
                poster.transport.write(shard)
            await asyncio.wait_for(asyncio.gather(*(p.waiter for p in posters)), 60)
        await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), 60)
        elapsed = time.monotonic() - started
        server_cpu = cpu_seconds(server.pid) - cpu_before
        posts = args.n * args.rounds
        return {"n": args.n, "rounds": args.rounds, "posts": posts, "elapsed_s": round(elapsed, 3),
                "posts_per_s": round(posts / elapsed), "server_cpu_us_per_post": round(server_cpu / posts * 1e6, 1),
                "connect_s": round(connect_seconds, 2), "poster_connections": args.connections,
                "load_before": os.getloadavg()[0]}
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--no-results", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result))
    if not args.no_results:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as fh:
            fh.write(f"\n## Gateway emulator @connections fan-out path ({stamp})\n\n"
                     f"`bench/gateway/bench_posts.py`: emulator in its own process (uvloop), {args.n} WebSocket "
                     f"connections, {args.rounds} rounds of one POST per connection through {args.connections} pipelined "
                     f"keep-alive connections, 2 CPUs shared with other jobs (load {result['load_before']:.1f} before).\n\n"
                     f"| posts | elapsed s | delivered posts/s | server CPU µs/post |\n| ---: | ---: | ---: | ---: |\n"
                     f"| {result['posts']} | {result['elapsed_s']} | {result['posts_per_s']} | {result['server_cpu_us_per_post']} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
