"""Lean WebSocket clients for the fan-out benchmark (one process, asyncio).

Raw asyncio protocols (no websockets client objects: client and server share
the machine's cores), modelled on ../shared/peers/leanclient.py, plus what the
gateway needs: a token per connection in the query string and a masked
``subscribe`` frame after the handshake.

Every event frame's ``data`` carries ``seq`` and ``t`` (publisher wall clock,
ns, taken just before the publish call); the client records
``receive time - t`` per seq.

stdin -> stdout control, one line each:
    (start)            -> "READY <subscribed> <failed>" once every connection is subscribed or failed
    STAT               -> {"open": n, "events": n}
    DUMP <path>        -> writes {"seq": [[latency_ms...], first_recv_ns, last_recv_ns]} as JSON, replies "DUMPED"
    EXIT               -> closes everything and exits
Also exits on stdin EOF and after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from urllib.parse import urlsplit

now_ns = time.time_ns


class Recorder:
    def __init__(self) -> None:
        self.lat: dict[int, list[float]] = {}
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.events = 0
        self.open = 0
        self.errors: list[str] = []

    def add(self, seq: int, t_pub: int, now: int) -> None:
        lst = self.lat.get(seq)
        if lst is None:
            lst = self.lat[seq] = []
            self.first[seq] = now
        lst.append((now - t_pub) / 1e6)
        self.last[seq] = now
        self.events += 1


def _int_after(buf: bytes | bytearray, key: bytes, start: int, end: int) -> int:
    i = buf.find(key, start, end)
    if i < 0:
        return -1
    i += len(key)
    j = i
    while j < end and 48 <= buf[j] <= 57:
        j += 1
    return int(buf[i:j]) if j > i else -1


def masked(payload: bytes, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + body


class WSProto(asyncio.Protocol):
    def __init__(self, rec: Recorder, request: bytes, subscribe: bytes, ready: asyncio.Future):
        self.rec = rec
        self.request = request
        self.subscribe = subscribe
        self.ready = ready
        self.buf = bytearray()
        self.hs = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc):
        if self.hs:
            self.rec.open -= 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before subscribed"))

    def data_received(self, data):
        now = now_ns()
        buf = self.buf
        buf += data
        if not self.hs:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if b" 101 " not in status:
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(status.decode("latin1")))
                self.transport.close()
                return
            del buf[: i + 4]
            self.hs = True
            self.rec.open += 1
            self.transport.write(self.subscribe)
        n = len(buf)
        pos = 0
        rec = self.rec
        while n - pos >= 2:
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            hdr = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            start = pos + hdr
            end = start + ln
            if end > n:
                break
            op = b0 & 0x0F
            if op == 1:
                if buf.find(b'"type":"event"', start, end) >= 0:
                    seq = _int_after(buf, b'"seq":', start, end)
                    t = _int_after(buf, b'"t":', start, end)
                    if seq >= 0 and t > 0:
                        rec.add(seq, t, now)
                elif not self.ready.done():
                    if buf.find(b'"subscribed"', start, end) >= 0:
                        self.ready.set_result(True)
                    else:
                        self.ready.set_exception(ConnectionError(bytes(buf[start:end]).decode(errors="replace")[:200]))
            elif op == 9:
                self.transport.write(masked(bytes(buf[start:end]), opcode=10))
            elif op == 8:
                self.transport.close()
            pos = end
        if pos:
            del buf[:pos]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="ws://host:port/stage")
    ap.add_argument("--tokens", required=True, help="file with one JWT per line (one connection each)")
    ap.add_argument("--topic", default="*")
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--max-seconds", type=float, default=600)
    args = ap.parse_args()
    parts = urlsplit(args.url)
    host, port, path = parts.hostname, parts.port or 80, parts.path or "/"
    tokens = [t.strip() for t in open(args.tokens) if t.strip()]
    rec = Recorder()
    loop = asyncio.get_running_loop()
    sub = masked(json.dumps({"type": "subscribe", "topic": args.topic}).encode())
    transports = []
    sem = asyncio.Semaphore(args.concurrency)
    failed = 0

    async def open_one(token: str) -> None:
        nonlocal failed
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET {path}?token={token} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        async with sem:
            ready = loop.create_future()
            try:
                tr, _ = await loop.create_connection(lambda: WSProto(rec, req, sub, ready), host, port)
                transports.append(tr)
                await asyncio.wait_for(ready, 30)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failed += 1
                if len(rec.errors) < 5:
                    rec.errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(open_one(t) for t in tokens))
    print(f"READY {len(tokens) - failed} {failed} {json.dumps(rec.errors)}", flush=True)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    deadline = time.monotonic() + args.max_seconds
    while time.monotonic() < deadline:
        try:
            line = await asyncio.wait_for(reader.readline(), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            break
        if not line:
            break
        cmd = line.decode().strip().split(" ", 1)
        if cmd[0] == "STAT":
            print(json.dumps({"open": rec.open, "events": rec.events}), flush=True)
        elif cmd[0] == "DUMP":
            with open(cmd[1], "w") as fh:
                json.dump({str(s): [rec.lat[s], rec.first[s], rec.last[s]] for s in rec.lat}, fh)
            print("DUMPED", flush=True)
        elif cmd[0] == "EXIT":
            break
    for tr in transports:
        tr.close()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
