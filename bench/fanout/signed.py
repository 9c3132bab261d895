"""Signed fan-out: what SigV4 costs the worker per delivery.

Run (under the shared benchmark lock):

    flock /tmp/rtstream-bench.lock .venv/bin/python bench/fanout/signed.py [--n 1000] [--events 100]

On AWS every ``@connections`` POST is SigV4-signed. This measures the worker's
HTTP client (``rtstream_fanout.poster.ManagementPoster``, where signing
happens) posting one event to ``--n`` connection ids, ``--events`` times, to a
lean HTTP/1.1 server in a child process (so only the client's CPU is counted):

1. building requests only (µs per request): unsigned; signed by
   ``rtstream_fanout.sigv4`` (cached key, batch form); signed by botocore's
   ``SigV4Auth`` per request (what the poster did before), for the same inputs;
2. end to end, CPU µs per delivery of the posting process: unsigned pipelined
   (the emulator default), signed without pipelining (the AWS default), signed
   pipelined, unsigned without pipelining, and botocore-signed pipelined.

The peer ``floor_ws`` (../shared/peers, in a writable copy, as bench/fanout/run.py
runs it) runs in the same invocation: its server's CPU per delivery is the
reference for "what one delivery costs" in plain asyncio. Figures are printed
and appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra"))
sys.path.insert(0, str(ROOT / "layers" / "core"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import RESULTS, free_port, run_peer  # noqa: E402  (the fan-out bench's peer runner)

from rtstream_fanout.poster import ManagementPoster  # noqa: E402
from rtstream_fanout.sigv4 import StaticCredentials  # noqa: E402

REGION = "eu-west-1"
# a session token as long as a task role's (they are ~1 KB): it is hashed in every canonical request
CREDS = ("ASIAEXAMPLEEXAMPLE00", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjE" + "x" * 1000)


# ---- the server child: answers 200 to every request, pipelined or not
async def serve(port: int) -> None:
    import httptools

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.out = 0

        def data_received(self, data):
            self.out = 0
            self.parser.feed_data(data)
            if self.out:
                self.transport.write(ok * self.out)

        def on_message_complete(self):
            self.out += 1

    server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", port)
    print("READY", flush=True)
    async with server:
        await asyncio.sleep(3600)


class BotocorePoster(ManagementPoster):
    """The poster's previous signed path: botocore's SigV4Auth per request."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from botocore.credentials import Credentials

        self._botocore_creds = Credentials(*CREDS)

    def _requests(self, method, connection_ids, data):
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        out = []
        for cid in connection_ids:
            path = self._path(cid)
            request = AWSRequest(method=method, url=f"https://{self.host_header}{path}", data=data)
            SigV4Auth(self._botocore_creds.get_frozen_credentials(), "execute-api", REGION).add_auth(request)
            extra = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items()
                            if k.lower() in ("authorization", "x-amz-date", "x-amz-security-token"))
            head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host_header}\r\nContent-Length: {len(data)}\r\n"
                    f"Content-Type: application/octet-stream\r\n{extra}\r\n")
            out.append(head.encode("latin-1") + data)
        return out


def make_poster(endpoint: str, mode: str) -> ManagementPoster:
    creds = StaticCredentials(*CREDS)
    if mode == "unsigned":
        return ManagementPoster(endpoint)
    if mode == "unsigned, no pipelining":
        return ManagementPoster(endpoint, pipelining=False)
    if mode == "signed (sigv4), no pipelining":
        return ManagementPoster(endpoint, sign=True, region=REGION, credentials=creds)
    if mode == "signed (sigv4), pipelined":
        return ManagementPoster(endpoint, sign=True, region=REGION, credentials=creds, pipelining=True)
    if mode == "signed (botocore), pipelined":
        return BotocorePoster(endpoint, sign=True, region=REGION, credentials=creds, pipelining=True)
    raise ValueError(mode)


MODES = ["unsigned", "signed (sigv4), no pipelining", "signed (sigv4), pipelined", "unsigned, no pipelining",
         "signed (botocore), pipelined"]


def build_cost(endpoint: str, ids: list[str], payload: bytes, rounds: int) -> dict[str, float]:
    """µs of CPU per request to build (and sign) the requests of one batch."""
    out = {}
    for name, mode in [("unsigned", "unsigned"), ("sigv4", "signed (sigv4), pipelined"), ("botocore", "signed (botocore), pipelined")]:
        poster = make_poster(endpoint, mode)
        poster._requests("POST", ids, payload)  # warm the id caches
        r = rounds if name != "botocore" else max(1, rounds // 10)
        start = time.process_time()
        for _ in range(r):
            poster._requests("POST", ids, payload)
        out[name] = round((time.process_time() - start) * 1e6 / (r * len(ids)), 2)
    return out


async def post_cost(endpoint: str, ids: list[str], payload: bytes, events: int) -> dict[str, dict]:
    out = {}
    for mode in MODES:
        poster = make_poster(endpoint, mode)
        n_events = events if "botocore" not in mode else max(1, events // 4)
        try:
            assert set(await poster.post_many(ids, payload)) == {200}  # connections open, caches warm
            wall, cpu = time.monotonic(), time.process_time()
            for _ in range(n_events):
                statuses = await poster.post_many(ids, payload)
                assert statuses.count(200) == len(ids), set(statuses)
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        finally:
            await poster.close()
        deliveries = n_events * len(ids)
        out[mode] = {"deliveries": deliveries, "cpu_us_per_delivery": round(cpu * 1e6 / deliveries, 2),
                     "deliveries_per_s": round(deliveries / wall)}
        print(f"[ours] {mode}: {out[mode]}", flush=True)
    return out


def append_results(args, build: dict, posts: dict, peer: dict | None) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## fanout signed — {now}\n",
        f"`flock /tmp/rtstream-bench.lock .venv/bin/python bench/fanout/signed.py --n {args.n} --events {args.events}` on "
        f"{platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()}). The worker's HTTP client "
        f"(`ManagementPoster`) posts one {len(args.payload)}-byte event to {args.n} connection ids, to a lean HTTP/1.1 "
        "server in a child process; CPU of the posting process only. Credentials with a 1 KB session token (as a task role's).\n",
        f"Building one request: unsigned {build['unsigned']} µs; SigV4 by `rtstream_fanout.sigv4` (cached key) "
        f"{build['sigv4']} µs; botocore `SigV4Auth` per request {build['botocore']} µs "
        f"(x{build['botocore'] / build['sigv4']:.1f} ours).\n",
        "| mode | deliveries | CPU µs per delivery | deliveries/s |",
        "|---|---|---|---|",
        *[f"| {mode} | {r['deliveries']} | {r['cpu_us_per_delivery']} | {r['deliveries_per_s']} |" for mode, r in posts.items()],
    ]
    unsigned = posts["unsigned"]["cpu_us_per_delivery"]
    signed = posts["signed (sigv4), pipelined"]["cpu_us_per_delivery"]
    lines += ["", f"Signed/unsigned CPU per delivery (both pipelined): x{signed / unsigned:.2f}; signing adds "
                  f"{signed - unsigned:.1f} µs per delivery (botocore: "
                  f"{posts['signed (botocore), pipelined']['cpu_us_per_delivery'] - unsigned:.1f} µs)."]
    if peer:
        st = peer.get("steady") or {}
        cpu = st.get("cpu") or {}
        if st.get("received") and cpu.get("server_core_pct") is not None:
            peer_us = cpu["server_core_pct"] / 100 * cpu["wall_s"] * 1e6 / st["received"]
            lines += ["", f"Peer in the same run: `floor_ws.py --n {args.n} --rate {args.rates[0]:g} --duration {args.duration:g}` "
                          f"(websockets.broadcast from one Redis subscription): server CPU {peer_us:.1f} µs per delivery in its "
                          f"steady phase. Ratio of our signed poster's CPU per delivery (default: no pipelining) to the peer's "
                          f"whole server: x{posts['signed (sigv4), no pipelining']['cpu_us_per_delivery'] / peer_us:.2f}."]
    text = "\n".join(lines) + "\n"
    with open(RESULTS, "a") as fh:
        fh.write(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--build-rounds", type=int, default=20)
    ap.add_argument("--peer-python", default=str(ROOT / ".venv" / "bin" / "python"),
                    help="a Python with ../shared/peers/requirements.txt (this venv has them)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    args.rates, args.duration = [5.0], 10.0  # what run_peer runs floor_ws with
    args.payload = json.dumps({"type": "event", "topic": "transactions.new", "id": "1764090000000-0",
                               "data": {"amount": 12.5, "currency": "EUR", "source": "bench"}}).encode()
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        endpoint = f"http://127.0.0.1:{port}/bench"
        ids = [f"Bench{i:010d}=" for i in range(args.n)]
        build = build_cost(endpoint, ids, args.payload, args.build_rounds)
        print(f"[ours] µs per request built: {build}", flush=True)
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            posts = runner.run(post_cost(endpoint, ids, args.payload, args.events))
    finally:
        server.terminate()
        server.wait(timeout=10)
    peer = None if args.no_peer else run_peer(args)
    if peer:
        print("[peer] " + json.dumps(peer.get("steady")), flush=True)
    if not args.no_write:
        print(append_results(args, build, posts, peer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
