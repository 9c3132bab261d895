"""Churn clients + publisher for bench/churn (a child process of run.py).

One entity. ``--ws`` WebSocket and ``--sse`` SSE clients each live 0.7-2 s per
connection (``--churn``; 0 = never reconnect), then reconnect resuming from the
last id they received (WebSocket ``since``, SSE ``Last-Event-ID``). Every client
starts resuming from the warm-up event, so it must receive exactly every event
published after it. A steady WebSocket observer never reconnects and measures
publish -> receive latency. The publisher appends ``--rate`` events/s for
``--duration`` s through the event log (the SDK's path); then every client stops
churning, resumes one last time and waits (bounded) for the tail.

Prints one JSON line: per client lost/duplicated, resume -> ``subscribed``
(WebSocket) / first frame (SSE) latencies, the observer's percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

import httpx
import websockets

from rtstream.adapters.redis_eventlog import AsyncRedisEventLog
from rtstream.settings import Settings


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))], 2)


class Client:
    def __init__(self, name: str, since: str):
        self.name = name
        self.last = since
        self.ids: list[str] = []
        self.seen: set[str] = set()
        self.dups = 0
        self.resume_ms: list[float] = []
        self.latency_ms: list[float] = []
        self.connections = 0
        self.drops = 0  # connections the server ended (no-churn run)
        self.accept_ms: list[float] = []  # SSE: request -> 200 headers
        self.errors: list[str] = []

    def got(self, frame: dict) -> None:
        eid = frame["id"]
        if eid in self.seen:
            self.dups += 1
        else:
            self.seen.add(eid)
            self.ids.append(eid)
        self.last = eid
        t = frame.get("data", {}).get("t")
        if t:
            self.latency_ms.append((time.time_ns() - t) / 1e6)


async def ws_session(c: Client, url: str, token: str, lifetime: float | None, stop: asyncio.Event) -> None:
    async with websockets.connect(f"{url}?token={token}", max_size=2**20, open_timeout=10) as ws:
        c.connections += 1
        t0 = time.monotonic()
        await ws.send(json.dumps({"type": "subscribe", "topic": "*", "since": c.last}))
        end = None if lifetime is None else t0 + lifetime
        subscribed = False
        while True:
            timeout = 0.5 if end is None else max(0.0, end - time.monotonic())
            if end is not None and timeout <= 0:
                return
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout)
            except asyncio.TimeoutError:
                if end is None and stop.is_set():
                    return
                continue
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "subscribed" and not subscribed:
                subscribed = True
                c.resume_ms.append((time.monotonic() - t0) * 1000)
            elif kind == "event":
                c.got(frame)
            elif kind == "error":
                c.errors.append(frame.get("code", "?"))


CONTROL_EVENTS = {"cursor", "error", "presence"}


async def sse_session(c: Client, http: httpx.AsyncClient, url: str, token: str, lifetime: float | None, stop: asyncio.Event) -> None:
    t0 = time.monotonic()
    headers = {"authorization": f"Bearer {token}", "Last-Event-ID": c.last}
    end = None if lifetime is None else t0 + lifetime
    async with http.stream("GET", url, params={"topics": "*"}, headers=headers) as response:
        if response.status_code != 200:
            c.errors.append(str(response.status_code))
            await asyncio.sleep(0.2)
            return
        c.connections += 1
        c.accept_ms.append((time.monotonic() - t0) * 1000)
        first = False
        buf = b""
        chunks = response.aiter_raw()
        pending: asyncio.Future | None = None  # a read in progress survives a timeout (cancelling it would end the stream)
        while True:
            timeout = 0.5 if end is None else max(0.0, end - time.monotonic())
            if end is not None and timeout <= 0:
                if pending is not None:
                    pending.cancel()
                return
            if pending is None:
                pending = asyncio.ensure_future(chunks.__anext__())
            done, _ = await asyncio.wait([pending], timeout=timeout)
            if not done:
                if end is None and stop.is_set():
                    pending.cancel()
                    return
                continue
            read, pending = pending, None
            try:
                chunk = read.result()
            except (StopAsyncIteration, httpx.HTTPError):
                return
            if not first:
                first = True
                c.resume_ms.append((time.monotonic() - t0) * 1000)
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                # SSE per the contract: id: the event id, event: the topic, data: the payload
                lines = block.split(b"\n")
                data = [ln[5:].strip() for ln in lines if ln.startswith(b"data:")]
                ids = [ln[3:].strip().decode() for ln in lines if ln.startswith(b"id:")]
                names = [ln[6:].strip().decode() for ln in lines if ln.startswith(b"event:")]
                if not data or not ids or not names or names[-1] in CONTROL_EVENTS:
                    continue
                try:
                    payload = json.loads(b"\n".join(data))
                except ValueError:
                    continue
                c.got({"id": ids[-1], "topic": names[-1], "data": payload})


async def churner(c: Client, kind: str, args, token: str, publishing_done: asyncio.Event, stop: asyncio.Event, http) -> None:
    rng = random.Random(c.name)

    async def session(lifetime: float | None) -> bool:
        """One connection (``lifetime`` None: until the run stops); False if it failed."""
        try:
            if kind == "ws":
                await ws_session(c, args.ws_url, token, lifetime, stop)
            else:
                await sse_session(c, http, args.sse_url, token, lifetime, stop)
            return True
        except Exception as exc:  # noqa: BLE001 - counted; the client reconnects as a real one would
            c.errors.append(type(exc).__name__)
            return False

    if not args.churn:
        # one connection for the whole run; if the server ends it, resume (counted)
        while not stop.is_set():
            await session(None)
            if not stop.is_set():
                c.drops += 1
                await asyncio.sleep(0.1)
        return
    while not publishing_done.is_set():
        if not await session(rng.uniform(0.7, 2.0)):
            await asyncio.sleep(0.1)
    # the tail: one last resume, until everything arrived or the bound
    await session(None)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ws-url", required=True)
    ap.add_argument("--sse-url", required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--entity", required=True)
    ap.add_argument("--ws", type=int, default=8)
    ap.add_argument("--sse", type=int, default=8)
    ap.add_argument("--rate", type=float, default=80)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--churn", type=int, default=1)
    ap.add_argument("--tail-s", type=float, default=20)
    args = ap.parse_args()
    tokens = [t.strip() for t in open(args.tokens) if t.strip()]
    import redis.asyncio as aioredis

    settings = Settings.from_env(dict(os.environ))
    rc = aioredis.Redis.from_url(args.redis_url)
    log = AsyncRedisEventLog(rc, settings)
    warm = await log.append(args.entity, "transactions.new", {"transactionId": "warm", "amount": 1, "merchant": "bench"}, "bench")
    published: list[str] = []
    publishing_done = asyncio.Event()
    stop = asyncio.Event()
    observer = Client("observer", warm.id)
    clients = [(Client(f"ws{i}", warm.id), "ws") for i in range(args.ws)] + [(Client(f"sse{i}", warm.id), "sse") for i in range(args.sse)]
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None), limits=httpx.Limits(max_connections=1000)) as http:
        obs_task = asyncio.create_task(ws_session(observer, args.ws_url, tokens[0], None, stop))
        tasks = [asyncio.create_task(churner(c, kind, args, tokens[(i + 1) % len(tokens)], publishing_done, stop, http)) for i, (c, kind) in enumerate(clients)]
        await asyncio.sleep(1.5)  # everyone connected once
        start = time.monotonic()
        n = int(args.rate * args.duration)
        for i in range(n):
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            e = await log.append(args.entity, "transactions.new", {"transactionId": f"c{i}", "amount": 1, "merchant": "bench", "seq": i, "t": time.time_ns()}, "bench")
            published.append(e.id)
        publish_s = time.monotonic() - start
        publishing_done.set()
        want = set(published)
        deadline = time.monotonic() + args.tail_s
        everyone = [observer] + [c for c, _ in clients]
        while time.monotonic() < deadline and not all(want <= c.seen for c in everyone):
            await asyncio.sleep(0.1)
        tail_s = round(args.tail_s - (deadline - time.monotonic()), 2)
        stop.set()
        await asyncio.wait(tasks + [obs_task], timeout=10)
    want = set(published)
    per_client = []
    for c, kind in clients:
        per_client.append({
            "name": c.name, "kind": kind, "connections": c.connections,
            "lost": len(want - c.seen), "duplicated": c.dups, "unexpected": len(c.seen - want),
            "in_order": [i for i in c.ids if i in want] == [i for i in published if i in c.seen],
            "resume_ms_p50": pct(c.resume_ms, 50), "resume_ms_max": round(max(c.resume_ms), 1) if c.resume_ms else None,
            "resumes_over_1s": sum(1 for x in c.resume_ms if x > 1000), "errors": c.errors[:5], "drops": c.drops,
            "accept_ms_max": round(max(c.accept_ms), 1) if c.accept_ms else None,
        })
    resume_all = [x for c, _ in clients for x in c.resume_ms]
    ws_resume = [x for c, kind in clients if kind == "ws" for x in c.resume_ms]
    sse_first = [x for c, kind in clients if kind == "sse" for x in c.resume_ms]
    sse_accept = [x for c, kind in clients if kind == "sse" for x in c.accept_ms]
    print(json.dumps({
        "published": len(published), "publish_s": round(publish_s, 2), "tail_s": tail_s,
        "observer": {"lost": len(want - observer.seen), "duplicated": observer.dups,
                     "p50_ms": pct(observer.latency_ms, 50), "p99_ms": pct(observer.latency_ms, 99), "max_ms": pct(observer.latency_ms, 100)},
        "clients": per_client,
        "reconnects": sum(c.connections for c, _ in clients),
        "resume_ms_p50": pct(resume_all, 50), "resume_ms_p99": pct(resume_all, 99), "resume_ms_max": pct(resume_all, 100),
        "resumes_over_1s": sum(1 for x in resume_all if x > 1000),
        "ws_subscribed_ms": {"p50": pct(ws_resume, 50), "p99": pct(ws_resume, 99), "max": pct(ws_resume, 100), "over_1s": sum(1 for x in ws_resume if x > 1000)},
        "sse_accepted_ms": {"p50": pct(sse_accept, 50), "p99": pct(sse_accept, 99), "max": pct(sse_accept, 100), "over_1s": sum(1 for x in sse_accept if x > 1000)},
        "sse_first_frame_ms": {"p50": pct(sse_first, 50), "p99": pct(sse_first, 99), "max": pct(sse_first, 100)},
        "drops": sum(c.drops for c, _ in clients),
        "lost_total": sum(p["lost"] for p in per_client), "duplicated_total": sum(p["duplicated"] for p in per_client),
    }), flush=True)
    await rc.aclose()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 300))
