"""Issue 11, through the real system (`rtstream dev`'s LocalSystem: the API
Gateway emulator running the template's handlers, DynamoDB in moto, a real
Redis, the fan-out worker and the SSE server on uvicorn as child processes):

- malformed event ids are refused at once on both transports (WebSocket
  ``invalid_message``, SSE 400 with a coded JSON body), and one of them can no
  longer stall the fan-out partition of other entities;
- ``subscribed.cursor`` / the SSE cursor frame is ``"0-0"`` for an entity without
  events, and resuming from it returns exactly what was published since;
- agents are refused presence on every route, counted and logged as security
  events; a client that keeps sending refused messages gets a coded reason, then
  is closed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
import pytest_asyncio
import redis
import websockets

from bad_ids import BAD_EVENT_IDS, MAX_PART
from rtstream import keys
from rtstream.adapters.redis_eventlog import RedisEventLog
from rtstream.auth import issue_dev_token

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "ids-e2e-secret-0123456789abcdef0123456789abcdef"
VIOLATIONS = 4
SETTINGS = {
    # generous message rate: these tests send many frames quickly on purpose
    "RTSTREAM_RATE_PER_SECOND": "1000",
    "RTSTREAM_RATE_BURST": "1000",
    "RTSTREAM_RATE_VIOLATIONS_BEFORE_CLOSE": str(VIOLATIONS),
}
TX = {"transactionId": "t", "amount": 5, "merchant": "Cafe"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(tmp_path_factory):
    from rtstream_cli.dev import LocalSystem

    local = LocalSystem(jwt_secret=SECRET, settings_overrides=SETTINGS, with_worker=True, with_sse=True, with_eventbridge=False,
                        write_state_file=False, log_dir=tmp_path_factory.mktemp("ids-e2e"), housekeeping_interval=0)
    await local.start()
    yield local
    await local.stop()


@pytest.fixture(scope="module")
def event_log(system):
    client = redis.Redis.from_url(system.redis_url)
    yield RedisEventLog(client, system.settings)
    client.close()


def entity() -> str:
    return f"ent-{uuid.uuid4().hex[:10]}"


def token(entity_id: str, user: str = "u1", role: str = "user") -> str:
    return issue_dev_token(SECRET, user_id=user, entity_id=entity_id, role=role)


def sse_base(system) -> str:
    return system.sse_url[: -len("/events")]


async def connect(system, entity_id: str, role: str = "user"):
    return await websockets.connect(f"{system.ws_url}?token={token(entity_id, role=role)}", open_timeout=10, ping_interval=None)


async def ask(ws, frame, timeout: float = 5.0) -> dict:
    await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv(ws, timeout: float = 10.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def publish(event_log, entity_id: str, n: int) -> list[str]:
    return [event_log.append(entity_id, "transactions.new", {**TX, "transactionId": f"t{i}"}, "test").id for i in range(n)]


# ---- 1. strict ids --------------------------------------------------------------------------


async def test_ws_malformed_since_is_refused_at_once_and_the_socket_stays_usable(system, event_log):
    e = entity()
    await asyncio.to_thread(publish, event_log, e, 2)  # an entity with history, as in the report
    async with await connect(system, e) as ws:
        for bad in BAD_EVENT_IDS:
            started = time.monotonic()
            reply = await ask(ws, {"type": "subscribe", "topic": "*", "since": bad})
            assert reply["type"] == "error" and reply["code"] == "invalid_message", (bad, reply)
            assert time.monotonic() - started < 5
        assert (await ask(ws, {"type": "ping"}))["type"] == "pong"


async def test_ws_malformed_since_no_longer_stalls_other_entities_of_its_partition(system, event_log):
    """Regression: `since: "1-0\\n"` (or a part > 2^64-1) was accepted, and the
    worker retried the failing replay forever: every entity of that partition
    stopped receiving events."""
    settings = system.settings
    attacker = entity()
    partition = keys.partition_of(attacker, settings)
    victims = []
    while len(victims) < 3:
        candidate = entity()
        if keys.partition_of(candidate, settings) == partition:
            victims.append(candidate)
    await asyncio.to_thread(publish, event_log, attacker, 1)
    sockets = [await connect(system, v) for v in victims]
    try:
        for ws in sockets:
            assert (await ask(ws, {"type": "subscribe", "topic": "*"}))["type"] == "subscribed"
        async with await connect(system, attacker, role="agent") as evil:
            for bad in ("1-0\n", f"{MAX_PART + 1}-0"):
                reply = await ask(evil, {"type": "subscribe", "topic": "*", "since": bad})
                assert reply["code"] == "invalid_message"
            for victim, ws in zip(victims, sockets):
                [published] = await asyncio.to_thread(publish, event_log, victim, 1)
                frame = await recv(ws)
                assert frame["type"] == "event" and frame["id"] == published
            # and the attacker's own valid resume still works: the worker is not stuck
            reply = await ask(evil, {"type": "subscribe", "topic": "*", "since": "0-0"}, timeout=10)
            assert reply["type"] == "subscribed"
            assert (await recv(evil))["type"] == "event"
    finally:
        for ws in sockets:
            await ws.close()


async def test_ws_largest_id_is_a_valid_cursor(system, event_log):
    e = entity()
    await asyncio.to_thread(publish, event_log, e, 1)
    async with await connect(system, e) as ws:
        reply = await ask(ws, {"type": "subscribe", "topic": "*", "since": f"{MAX_PART}-{MAX_PART}"}, timeout=10)
        assert reply["type"] == "subscribed"
        [live] = await asyncio.to_thread(publish, event_log, e, 1)
        assert (await recv(ws))["id"] == live


@pytest.mark.parametrize("where", ["query", "header"])
async def test_sse_malformed_last_event_id_is_400_at_once(system, event_log, where):
    e = entity()
    await asyncio.to_thread(publish, event_log, e, 1)
    async with httpx.AsyncClient(timeout=5) as http:
        for bad in BAD_EVENT_IDS:
            if where == "header" and (bad != bad.strip() or not bad.isascii() or not bad):
                continue  # not expressible as a header value (HTTP trims it / ASCII only / empty = no id)
            params = {"lastEventId": bad} if where == "query" else {}
            headers = {"authorization": f"Bearer {token(e)}"}
            if where == "header":
                headers["last-event-id"] = bad
            started = time.monotonic()
            r = await http.get(system.sse_url, params=params, headers=headers)
            assert r.status_code == 400, (bad, r.status_code, r.text)  # was 503 for "18446744073709551616-0"
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["code"] == "invalid_message" and r.json()["message"], bad
            assert time.monotonic() - started < 2


async def test_sse_largest_id_is_a_valid_cursor(system, event_log):
    e = entity()
    await asyncio.to_thread(publish, event_log, e, 1)
    async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=None)) as http:
        headers = {"authorization": f"Bearer {token(e)}", "last-event-id": f"{MAX_PART}-{MAX_PART}"}
        async with http.stream("GET", system.sse_url, headers=headers) as r:
            assert r.status_code == 200


# ---- 2. a cursor always ---------------------------------------------------------------------


async def test_ws_cursor_of_an_empty_entity_resumes_exactly_what_was_published_since(system, event_log):
    e = entity()
    async with await connect(system, e) as ws:
        reply = await ask(ws, {"type": "subscribe", "topic": "*"})
        assert reply == {"type": "subscribed", "topic": "*", "cursor": "0-0"}
    published = await asyncio.to_thread(publish, event_log, e, 3)  # while the client is away
    async with await connect(system, e) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "*", "since": reply["cursor"]}))
        assert (await recv(ws))["type"] == "subscribed"
        replayed = [await recv(ws) for _ in range(3)]
        assert [f["id"] for f in replayed] == published
        [live] = await asyncio.to_thread(publish, event_log, e, 1)
        assert (await recv(ws))["id"] == live  # nothing twice, nothing missing


async def test_ws_zero_cursor_on_an_entity_still_without_events(system, event_log):
    e = entity()
    async with await connect(system, e) as ws:
        reply = await ask(ws, {"type": "subscribe", "topic": "*", "since": "0-0"}, timeout=10)
        assert reply["type"] == "subscribed"  # not replay_gap
        [live] = await asyncio.to_thread(publish, event_log, e, 1)
        assert (await recv(ws))["id"] == live


async def _sse_frames(http, system, e, headers=None, params=None, count=1):
    """The first ``count`` data frames of one stream (retry and comments skipped)."""
    out = []
    headers = {"authorization": f"Bearer {token(e)}", **(headers or {})}
    async with http.stream("GET", system.sse_url, headers=headers, params=params) as r:
        assert r.status_code == 200, await r.aread()
        buf = b""
        async for chunk in r.aiter_raw():
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                fields = {}
                for line in block.decode().split("\n"):
                    name, _, value = line.partition(": ")
                    if name in ("id", "event", "data"):
                        fields[name] = value
                if "data" in fields:
                    out.append(fields)
                    if len(out) == count:
                        return out
    return out


@pytest.mark.parametrize("how", ["header", "query"])
async def test_sse_cursor_of_an_empty_entity_resumes_exactly_what_was_published_since(system, event_log, how):
    e = entity()
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=10)) as http:
        [cursor] = await _sse_frames(http, system, e)
        assert cursor["event"] == "cursor" and cursor["id"] == "0-0"
        assert json.loads(cursor["data"]) == {"type": "cursor", "id": "0-0"}
        published = await asyncio.to_thread(publish, event_log, e, 3)
        resume = {"headers": {"last-event-id": cursor["id"]}} if how == "header" else {"params": {"lastEventId": cursor["id"]}}
        replayed = await _sse_frames(http, system, e, count=3, **resume)
        assert [f["id"] for f in replayed] == published


# ---- 4. one agent boundary --------------------------------------------------------------------


async def test_agents_are_refused_presence_on_every_route(system):
    e = entity()
    base = sse_base(system)
    agent = token(e, user="agent-7", role="agent")
    async with await connect(system, e, role="agent") as ws:
        assert (await ask(ws, {"type": "presence"}))["code"] == "forbidden"
        assert (await ask(ws, {"type": "subscribe", "topic": "presence"}))["code"] == "forbidden"
        assert (await ask(ws, {"type": "subscribe", "topic": "*"}))["type"] == "subscribed"  # following events is allowed
    async with httpx.AsyncClient(timeout=5) as http:
        before = await http.get(base + "/metrics")
        refusals = [
            await http.get(base + "/presence", headers={"authorization": f"Bearer {agent}"}),
            await http.get(system.sse_url, params={"topics": "presence"}, headers={"authorization": f"Bearer {agent}"}),
            await http.get(system.sse_url, params={"topics": "transactions.new,presence", "access_token": agent}),
        ]
        for r in refusals:
            assert r.status_code == 403 and r.json()["code"] == "forbidden", r.text
        # a user of the same entity may
        user = await http.get(base + "/presence", headers={"authorization": f"Bearer {token(e)}"})
        assert user.status_code == 200 and user.json()["type"] == "presence"
        after = await http.get(base + "/metrics")

    def security_events(text: str) -> float:
        # (the dev /metrics federates the parts and adds a component label)
        return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
                   if x.startswith("realtime_streaming_security_events_total{") and 'transport="sse"' in x
                   and 'event="agent_forbidden_operation"' in x)

    assert security_events(after.text) - security_events(before.text) == 3
    # the SSE child's log: the security line, never the token
    log = (system.log_dir / "sse.log").read_text(errors="replace")
    assert f"agent agent-7 of entity {e} attempted a forbidden operation" in log and agent not in log


async def test_an_agent_that_keeps_asking_is_told_why_then_closed(system):
    e = entity()
    async with await connect(system, e, role="agent") as ws:
        codes = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            for _ in range(VIOLATIONS + 3):
                codes.append((await ask(ws, {"type": "presence"}))["code"])
        assert codes == ["forbidden"] * (VIOLATIONS - 1) + ["policy_violation"]
        # API Gateway's DELETE @connections closes with 1000 (it cannot send 1008);
        # the policy_violation frame before it carries the reason
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
