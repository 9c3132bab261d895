"""The whole local system against a three-master Redis Cluster: `rtstream dev`'s
LocalSystem given a cluster node's URL (nothing else), the API Gateway emulator
running the template's handlers, DynamoDB in moto, the fan-out worker and the
SSE server as child processes. Entities are picked so that their partitions
live on every master."""

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

from rtstream import keys
from rtstream.adapters import lambda_runtime as rt
from rtstream.adapters.redis_client import async_client, clustered, is_cluster, sync_client
from rtstream.auth import issue_dev_token
from rtstream.models import Principal
from rtstream.publishing import publish

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "cluster-e2e-secret-0123456789abcdef0123456789"
PRESENCE_TTL = 2
RATE, BURST = 5, 20
SETTINGS = {
    "RTSTREAM_PRESENCE_TTL_SECONDS": str(PRESENCE_TTL),
    "RTSTREAM_RATE_PER_SECOND": str(RATE),
    "RTSTREAM_RATE_BURST": str(BURST),
}
TX = {"transactionId": "t", "amount": 5, "merchant": "Cafe"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(cluster_url, tmp_path_factory):
    from rtstream_cli.dev import LocalSystem

    local = LocalSystem(redis_url=cluster_url, jwt_secret=SECRET, settings_overrides=SETTINGS, with_worker=True, with_sse=True,
                        with_eventbridge=False, write_state_file=False, log_dir=tmp_path_factory.mktemp("cluster-e2e"),
                        housekeeping_interval=0)  # run by the test itself
    await local.start()
    yield local
    await local.stop()


@pytest.fixture(scope="module")
def cluster(system):
    client = sync_client(system.redis_url)
    yield client
    client.close()


def entities_on_every_master(system, cluster, n: int = 1) -> list[str]:
    """``n`` fresh entities per master (by where their history key lives)."""
    per_node: dict[str, list[str]] = {}
    masters = {node.name for node in cluster.get_primaries()}
    while not all(len(per_node.get(m, [])) >= n for m in masters):
        e = f"ent-{uuid.uuid4().hex[:10]}"
        node = cluster.get_node_from_key(keys.history(e, system.settings).name).name
        per_node.setdefault(node, []).append(e)
    return [e for m in sorted(masters) for e in per_node[m][:n]]


def token(entity_id: str, user: str = "u1") -> str:
    return issue_dev_token(SECRET, user_id=user, entity_id=entity_id)


async def connect(system, entity_id: str, user: str = "u1"):
    return await websockets.connect(f"{system.ws_url}?token={token(entity_id, user)}", open_timeout=10, ping_interval=None)


async def recv(ws, timeout: float = 10.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def ask(ws, frame: dict, timeout: float = 10.0) -> dict:
    await ws.send(json.dumps(frame))
    return await recv(ws, timeout)


async def next_event(ws, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - time.monotonic()))
        if frame.get("type") == "event":
            return frame


def sdk_publish(system, cluster, entity_id: str, n: int = 1, **options) -> list[str]:
    return [publish(entity_id, "transactions.new", {**TX, "transactionId": f"t{i}"}, client=cluster, settings=system.settings, **options)
            for i in range(n)]


async def test_cluster_mode_is_detected_from_any_node(system, cluster, redis_url):
    ports = [node.port for node in cluster.get_primaries()]
    assert len(ports) == 3
    for port in ports:
        assert is_cluster(f"redis://127.0.0.1:{port}/0")
    assert clustered(cluster) and clustered(async_client(system.redis_url))
    # a single server stays a plain client
    assert not is_cluster(redis_url) and not clustered(sync_client(redis_url))
    # the partitions of the system are spread over all three masters
    nodes = {cluster.get_node_from_key(keys.fanout_stream(p).name).name for p in range(system.settings.fanout_partitions)}
    assert len(nodes) == 3


async def test_ws_delivery_of_sdk_and_raw_publishes_on_every_master(system, cluster):
    ents = entities_on_every_master(system, cluster)
    sockets = [await connect(system, e) for e in ents]
    try:
        for ws in sockets:
            assert (await ask(ws, {"type": "subscribe", "topic": "*"}))["type"] == "subscribed"
        masters = cluster.get_primaries()
        for i, (e, ws) in enumerate(zip(ents, sockets)):
            [sdk_id] = await asyncio.to_thread(sdk_publish, system, cluster, e)
            frame = await next_event(ws)
            assert frame["id"] == sdk_id and frame["topic"] == "transactions.new"
            # the seed's raw PUBLISH, sent to a master that does not hold the entity's keys
            node = masters[(i + 1) % len(masters)]
            raw = redis.Redis(host=node.host, port=node.port)
            assert raw.publish(keys.raw_channel("transactions.new", e), json.dumps({**TX, "transactionId": f"raw-{i}"})) >= 0
            raw.close()
            frame = await next_event(ws)
            assert frame["topic"] == "transactions.new" and frame["data"]["transactionId"] == f"raw-{i}"
            assert [eid.decode() for eid, _ in cluster.xrange(keys.history(e, system.settings).name)][-1] == frame["id"]
    finally:
        for ws in sockets:
            await ws.close()


async def test_ws_resume_with_since_replays_exactly_what_was_missed(system, cluster):
    for e in entities_on_every_master(system, cluster):
        async with await connect(system, e) as ws:
            cursor = (await ask(ws, {"type": "subscribe", "topic": "*"}))["cursor"]
        missed = await asyncio.to_thread(sdk_publish, system, cluster, e, 3)
        async with await connect(system, e) as ws:
            assert (await ask(ws, {"type": "subscribe", "topic": "*", "since": cursor}))["type"] == "subscribed"
            assert [(await next_event(ws))["id"] for _ in range(3)] == missed
            [live] = await asyncio.to_thread(sdk_publish, system, cluster, e)
            assert (await next_event(ws))["id"] == live


async def _sse_frames(http, system, e, count, headers=None):
    out = []
    async with http.stream("GET", system.sse_url, headers={"authorization": f"Bearer {token(e)}", **(headers or {})}) as r:
        assert r.status_code == 200, await r.aread()
        buf = b""
        async for chunk in r.aiter_raw():
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                fields = dict(line.partition(": ")[::2] for line in block.decode().split("\n") if line and not line.startswith(":"))
                if "data" in fields and fields.get("event") != "cursor":
                    out.append(fields)
                    if len(out) == count:
                        return out
    return out


async def test_sse_delivery_and_last_event_id_resume_on_every_master(system, cluster):
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=15)) as http:
        for e in entities_on_every_master(system, cluster):
            live = asyncio.create_task(_sse_frames(http, system, e, 2))
            await asyncio.sleep(0.5)  # the stream is open (the cursor frame comes first)
            published = await asyncio.to_thread(sdk_publish, system, cluster, e, 2)
            frames = await asyncio.wait_for(live, 15)
            assert [f["id"] for f in frames] == published
            later = await asyncio.to_thread(sdk_publish, system, cluster, e, 2)
            resumed = await _sse_frames(http, system, e, 2, headers={"last-event-id": published[-1]})
            assert [f["id"] for f in resumed] == later


async def test_idempotency_key_publishes_once(system, cluster):
    for e in entities_on_every_master(system, cluster):
        [first] = await asyncio.to_thread(sdk_publish, system, cluster, e, 1, idempotency_key="order-1")
        [again] = await asyncio.to_thread(sdk_publish, system, cluster, e, 1, idempotency_key="order-1")
        assert again == first
        assert cluster.xlen(keys.history(e, system.settings).name) == 1


async def test_rate_limit_refuses_beyond_the_burst(system, cluster):
    [e, *_] = entities_on_every_master(system, cluster)
    async with await connect(system, e, user="flooder") as ws:
        codes = [(await ask(ws, {"type": "ping"})).get("code", "pong") for _ in range(BURST + 1)]
        assert codes[:BURST] == ["pong"] * BURST and codes[-1] == "rate_limited"


async def reply_of(ws, frame: dict, reply_type: str, seen: list[dict]) -> dict:
    """Send ``frame``; the first reply of ``reply_type`` (events meanwhile go to ``seen``)."""
    await ws.send(json.dumps(frame))
    while True:
        got = await recv(ws)
        if got.get("type") == reply_type or got.get("type") == "error":
            return got
        seen.append(got)


async def test_presence_and_housekeeping_sweep_on_every_master(system, cluster):
    runtime = rt.LambdaRuntime(env=system.handler_env)
    ents = entities_on_every_master(system, cluster)
    watchers, seen = [], []
    try:
        for i, e in enumerate(ents):
            ws = await connect(system, e, user="walt")  # never pings again: expires too
            watchers.append(ws)
            seen.append([])
            assert (await reply_of(ws, {"type": "subscribe", "topic": "presence"}, "subscribed", seen[i]))["type"] == "subscribed"
            runtime.service().connect(Principal("dave", e, "user"), f"lost-dave-{i}")  # no $disconnect will come
            online = (await reply_of(ws, {"type": "presence"}, "presence", seen[i]))["users"]
            assert "dave" in {u["userId"] for u in online}
        await asyncio.sleep(PRESENCE_TTL + 0.5)  # nobody beats: everyone expires
        report = runtime.housekeeping().run()
        assert not report.errors and report.presence_expired >= len(ents)  # the sweep SCANs every master
        for ws, frames in zip(watchers, seen):
            def offline() -> set[str]:
                return {f["data"]["userId"] for f in frames
                        if f.get("type") == "event" and f["topic"] == "presence" and f["data"]["state"] == "offline"}

            deadline = time.monotonic() + 10
            while "dave" not in offline() and time.monotonic() < deadline:
                frames.append(await next_event(ws, max(0.1, deadline - time.monotonic())))
            assert "dave" in offline()
        assert runtime.housekeeping().run().presence_expired == 0  # announced once
    finally:
        for ws in watchers:
            await ws.close()


async def test_batched_scripts_span_every_master(system, cluster):
    """The SSE server's batches (presence joins, presence events) cover entities on
    all masters in one call; each script stays atomic in its slot."""
    from rtstream.adapters.redis_eventlog import RedisEventLog
    from rtstream.adapters.redis_limits import RedisPresence

    ents = entities_on_every_master(system, cluster, n=2)
    log = RedisEventLog(cluster, system.settings)
    events = log.append_many([(e, "transactions.new", {**TX, "transactionId": e}, "batch", True) for e in ents])
    for e, event in zip(ents, events):
        assert [x.id for x in log.replay(e, "0-0")] == [event.id]
    presence = RedisPresence(cluster, system.settings)
    changes = presence.apply_many([("beat", e, "ann", f"c-{e}", "sse") for e in ents])
    assert changes == [[{"userId": "ann", "state": "online", "connections": 1, "transports": ["sse"]}]] * len(ents)
    assert all([u["userId"] for u in presence.online(e)] == ["ann"] for e in ents)
