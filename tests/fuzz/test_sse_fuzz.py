"""Fuzz of the SSE server (issue 11): at least 1,000 hostile requests against the
real app (``python -m rtstream_sse``: uvicorn, a real Redis), from a seeded
generator so a failure replays exactly.

Hostile: random and malformed query strings (topics, filters, rewind, cursors,
tokens, repeated and oversized parameters, control characters, non-ASCII),
hostile headers (Authorization, Last-Event-ID, Origin), forged and malformed
tokens (including agents asking for presence), odd paths and methods.

Asserted: no 5xx, every non-2xx answer is a coded JSON body ``{code, message}``,
a 200 on ``/events`` is an event stream, no traceback in the server's log, and
the server still answers (health, a normal stream) afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
import uuid

import httpx
import jwt
import pytest

from bad_ids import BAD_EVENT_IDS, MAX_PART
from sse.support import start_server

SEED = 1105
REQUESTS = 1200
CONCURRENCY = 8
SECRET = "sse-fuzz-secret-0123456789abcdef-0123456789abcdef"


@pytest.fixture(scope="module")
def server(redis_url, tmp_path_factory):
    srv = start_server(redis_url, SECRET, tmp_path_factory.mktemp("sse-fuzz"), RTSTREAM_SSE_HEARTBEAT_SECONDS="1",
                       RTSTREAM_ALLOWED_ORIGINS="https://dash.example")
    yield srv
    srv.stop()


def _token(rng: random.Random) -> str:
    now = int(time.time())
    entity = rng.choice(["fz-a", "fz-b", "fz-c"])
    claims = {"sub": f"u{rng.randrange(50)}", "entity_id": entity, "role": rng.choice(["user", "agent"]), "exp": now + 600}
    kind = rng.randrange(12)
    if kind < 5:
        return jwt.encode(claims, SECRET, algorithm="HS256")  # valid
    if kind == 5:
        return jwt.encode({**claims, "exp": now - 10}, SECRET, algorithm="HS256")
    if kind == 6:
        return jwt.encode(claims, None, algorithm="none")
    if kind == 7:
        return jwt.encode({**claims, "entity_id": rng.choice(["a:b", "x" * 500, "", "e#1", "\u00e9", 7, None])}, SECRET, algorithm="HS256")
    if kind == 8:
        return jwt.encode({**claims, "role": rng.choice(["root", "", "ADMIN", ["agent"]])}, SECRET, algorithm="HS256")
    if kind == 9:
        return jwt.encode(claims, "another-secret-0123456789abcdef-0123456789", algorithm="HS256")
    if kind == 10:
        return base64.urlsafe_b64encode(rng.randbytes(rng.randrange(1, 3000))).decode()
    return "x" * rng.choice([1, 100, 4000])


def _hostile_text(rng: random.Random) -> str:
    return rng.choice([
        "", " ", ",", ",,", "*", "presence", "transactions.new", "transactions.new,presence", "transactions.new,,sync.completed",
        "nope", "\x00", "\u202e", "\u0661", "%00", "a" * rng.choice([200, 2049, 6000]), "1e400", "nan", "-1", "-0", "0x10",
        "inf", "1" * 400, "🙂", "\ud7ff", "<script>", "' OR 1=1 --", "../../etc/passwd", "\r\n", "\t", "true", "null", "[]", "{}",
    ] + BAD_EVENT_IDS + ["0-0", f"{MAX_PART}-{MAX_PART}"])


PARAMS = ["topics", "types", "sources", "minAmount", "lastEventId", "access_token", "token", "rewind", "filters", "since", "x"]
PATHS = ["/events"] * 12 + ["/presence"] * 3 + ["/healthz", "/metrics", "/dashboard/config", "/", "/static/rtstream.js",
                                                "/static/..%2f..%2fsecret", "/static/" + "a" * 300, "/nope", "/events/", "//events"]
METHODS = ["GET"] * 14 + ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"]


def _request(rng: random.Random, i: int) -> dict:
    params: list[tuple[str, str]] = []
    for _ in range(rng.randrange(0, 5)):
        name = rng.choice(PARAMS)
        value = _token(rng) if name in ("access_token", "token") else _hostile_text(rng)
        params.append((name, value))
        if rng.random() < 0.1:
            params.append((name, _hostile_text(rng)))  # repeated parameter
    headers: dict[str, str] = {}
    if rng.random() < 0.8:
        scheme = rng.choice(["Bearer ", "Bearer ", "Bearer ", "bearer ", "Basic ", "", "Bearer  "])
        headers["authorization"] = scheme + _token(rng)
    if rng.random() < 0.4:
        # header values: latin-1, no CR/LF (httpx refuses those; HTTP has no way to carry them)
        value = _hostile_text(rng)
        headers["last-event-id"] = value
    if rng.random() < 0.2:
        headers["origin"] = rng.choice(["https://dash.example", "https://evil.example", "null", "x" * 1000])
    if rng.random() < 0.05:
        headers["x-padding"] = "p" * 6000
    return {"method": rng.choice(METHODS), "path": rng.choice(PATHS), "params": params, "headers": {k: _header_safe(v) for k, v in headers.items()}, "i": i}


def _header_safe(value: str) -> str:
    """What HTTP can carry in a header value (latin-1, no controls, no surrounding
    whitespace); anything else is the client library's refusal, not a request."""
    value = "".join(c for c in value if 0x20 <= ord(c) < 0x7F or 0xA0 <= ord(c) <= 0xFF).strip()
    return value or "x"


async def _send(http: httpx.AsyncClient, base: str, req: dict) -> tuple[dict, int, str, bytes]:
    async with http.stream(req["method"], base + req["path"], params=req["params"], headers=req["headers"]) as r:
        ctype = r.headers.get("content-type", "")
        if r.status_code == 200 and ctype.startswith("text/event-stream"):
            first = b""
            async for chunk in r.aiter_raw():  # the stream starts (retry: ...), then we leave
                first += chunk
                break
            return req, r.status_code, ctype, first
        return req, r.status_code, ctype, await r.aread()


async def test_thousand_hostile_requests_no_crash_and_every_refusal_coded(server):
    rng = random.Random(SEED)
    requests = [_request(rng, i) for i in range(REQUESTS)]
    results = []
    semaphore = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10)) as http:

        async def one(req):
            async with semaphore:
                results.append(await _send(http, server.url, req))

        await asyncio.gather(*(one(r) for r in requests))
    assert len(results) == REQUESTS
    statuses: dict[int, int] = {}
    for req, status, ctype, body in results:
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (req, status, body[:300])
        if 200 <= status < 300 or req["method"] == "HEAD" or status == 304:
            continue
        assert ctype.startswith("application/json"), (req, status, ctype, body[:200])
        doc = json.loads(body)
        assert isinstance(doc.get("code"), str) and doc["code"] and isinstance(doc.get("message"), str), (req, status, doc)
    for req, status, ctype, body in results:
        if req["path"] == "/events" and req["method"] == "GET" and status == 200:
            assert ctype.startswith("text/event-stream") and body.startswith(b"retry:"), (req, body[:100])
    print(f"SSE fuzz: {REQUESTS} requests, statuses {dict(sorted(statuses.items()))}")
    # the mix really exercised the refusals and the streams
    assert statuses.get(200, 0) > 20 and statuses.get(400, 0) > 50 and statuses.get(401, 0) > 100, statuses
    assert statuses.get(403, 0) > 0, statuses  # agents asking for presence

    # still serving: health, and a normal stream that receives an event
    async with httpx.AsyncClient(timeout=httpx.Timeout(10)) as http:
        health = await http.get(server.url + "/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        entity = f"fz-ok-{uuid.uuid4().hex[:6]}"
        token = jwt.encode({"sub": "u-ok", "entity_id": entity, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
        async with http.stream("GET", server.url + "/events", headers={"authorization": f"Bearer {token}"}) as r:
            assert r.status_code == 200
    log = server.log_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert server.proc.poll() is None
