"""Lean SSE load client for bench/sse (after ../shared/peers/leanclient.py).

One process holds N ``GET /events`` streams on loopback (raw asyncio protocols,
chunked decoding, no HTTP client objects) and records, for every event, receive
time minus the publish stamp carried in the event (CLOCK_MONOTONIC, same host).

The stamp rides in ``data.transactionId`` = ``<phase:1><seq:9> <t_pub_ns:20>``
(the harness payload format), so the client finds it without parsing JSON.

Control on stdin (same as the peers' client): STAT, DUMP <dir> <tag>, EXIT.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.environ.get("PEERS_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "peers"))
from leanclient import Recorder  # noqa: E402  (the peers' recorder: same statistics)

mono = time.monotonic_ns
MARK = b'"transactionId":"'


class SSEProto(asyncio.Protocol):
    def __init__(self, rec, req, ready):
        self.rec = rec
        self.req = req
        self.ready = ready
        self.buf = bytearray()
        self.body = bytearray()
        self.hs = False
        self.chunked = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.req)

    def connection_lost(self, exc):
        if self.hs:
            self.rec.open -= 1
            self.rec.closed += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before headers"))

    def data_received(self, data):
        now = mono()
        buf = self.buf
        buf += data
        if not self.hs:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(buf[:i]).lower()
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(head[:120].decode("latin1")))
                self.transport.close()
                return
            self.chunked = b"transfer-encoding: chunked" in head
            del buf[: i + 4]
            self.hs = True
            self.rec.open += 1
            self.ready.set_result(True)
        body = self.body
        if self.chunked:
            pos = 0
            n = len(buf)
            while True:
                j = buf.find(b"\r\n", pos)
                if j < 0:
                    break
                size = int(buf[pos:j].split(b";", 1)[0], 16)
                start = j + 2
                if start + size + 2 > n:
                    break
                body += buf[start : start + size]
                pos = start + size + 2
                if size == 0:
                    self.transport.close()
                    break
            if pos:
                del buf[:pos]
        else:
            body += buf
            del buf[:]
        p = 0
        rec = self.rec
        while True:
            j = body.find(b"\n\n", p)
            if j < 0:
                break
            s = body.find(MARK, p, j)
            if s >= 0:
                s += len(MARK)
                rec.add(body[s], int(body[s + 11 : s + 31]), now)
            p = j + 2
        if p:
            del body[:p]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", required=True, help="request path; with --paths-file, ignored")
    ap.add_argument("--paths-file", default=None, help="one request path per line, used round-robin (one token per user)")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--max-seconds", type=float, default=600)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.n + 1024)), hard))

    loop = asyncio.get_running_loop()
    loop.call_later(args.max_seconds, lambda: os._exit(3))
    rec = Recorder()
    paths = [args.path]
    if args.paths_file:
        with open(args.paths_file) as fh:
            paths = [line.strip() for line in fh if line.strip()]
    requests = [
        f"GET {path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n".encode()
        for path in paths
    ]
    transports = []
    failures = 0
    errors = {}
    sem = asyncio.Semaphore(args.concurrency)

    async def one(i):
        nonlocal failures
        req = requests[i % len(requests)]
        async with sem:
            ready = loop.create_future()
            try:
                tr, _ = await asyncio.wait_for(loop.create_connection(lambda: SSEProto(rec, req, ready), args.host, args.port), 30)
                transports.append(tr)
                await asyncio.wait_for(ready, 30)
            except Exception as exc:
                failures += 1
                key = str(exc)[:80]
                errors[key] = errors.get(key, 0) + 1

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(args.n)))
    dt = time.monotonic() - t0
    print("READY " + json.dumps({"open": rec.open, "failed": failures, "connect_s": dt, "errors": errors}), flush=True)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        parts = line.decode().split()
        if not parts:
            continue
        if parts[0] == "STAT":
            print(json.dumps({"counts": rec.counts(), "open": rec.open, "closed": rec.closed}), flush=True)
        elif parts[0] == "DUMP":
            print(json.dumps({"phases": rec.dump(parts[1], parts[2]), "open": rec.open, "closed": rec.closed}), flush=True)
        elif parts[0] == "EXIT":
            break
    for tr in transports:
        tr.abort()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
