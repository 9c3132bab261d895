"""End to end: real WebSocket clients -> gateway emulator (real handlers) ->
DynamoDB (moto) / Redis -> fan-out worker subprocesses -> @connections -> clients.

One local system per module (``LocalSystem(with_worker=False)``); the tests start
their own ``python -m rtstream_fanout`` children so they can kill one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import pytest_asyncio
import redis
import websockets

from rtstream import keys
from rtstream.auth import issue_dev_token
from rtstream.models import parse_event_id
from rtstream.adapters.publishing import publish
from helpers import free_port  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "fanout-e2e-secret-0123456789abcdef0123456789"
LEASE_MS = 1500
_ids = itertools.count()


def tx(amount, source_tag=""):
    return {"transactionId": f"t{next(_ids)}", "amount": amount, "merchant": f"Cafe{source_tag}"}


async def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")



class Worker:
    """A ``python -m rtstream_fanout`` child process."""

    def __init__(self, system, name: str):
        self.name = name
        self.log_path = Path(system.log_dir) / f"fanout-{name}.log"
        self.metrics_port = free_port()
        env = {**system.child_env, "RTSTREAM_WORKER_ID": name, "RTSTREAM_FANOUT_LEASE_MS": str(LEASE_MS), "RTSTREAM_EMF_INTERVAL_S": "0",
               "RTSTREAM_WORKER_METRICS_PORT": str(self.metrics_port)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "rtstream_fanout"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str) -> float:
        """One value from the worker's Prometheus /metrics."""
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


class Client:
    def __init__(self, system, entity: str, user: str = "u1"):
        self.system = system
        self.entity = entity
        self.token = issue_dev_token(SECRET, user_id=user, entity_id=entity)
        self.frames: list[dict] = []
        self.ws = None
        self._reader = None

    async def open(self) -> "Client":
        self.ws = await websockets.connect(f"{self.system.ws_url}?token={self.token}", compression=None)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self):
        try:
            async for message in self.ws:
                self.frames.append(json.loads(message))
        except websockets.ConnectionClosed:
            pass

    async def send(self, frame: dict):
        await self.ws.send(json.dumps(frame))

    async def subscribe(self, topic="*", **extra):
        n = len(self.frames)
        await self.send({"type": "subscribe", "topic": topic, **extra})
        await wait_for(lambda: any(f.get("type") in ("subscribed", "error") for f in self.frames[n:]), what=f"subscribed {topic}")
        reply = next(f for f in self.frames[n:] if f.get("type") in ("subscribed", "error"))
        # a fresh subscribe names its resume cursor ("0-0" when the entity has no events yet)
        assert reply == {"type": "subscribed", "topic": topic, **({"cursor": reply["cursor"]} if "since" not in extra else {})}, reply

    def event_ids(self):
        return [f["id"] for f in self.frames if f.get("type") == "event"]

    def events(self):
        return [f for f in self.frames if f.get("type") == "event"]

    async def close(self):
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(tmp_path_factory):
    from rtstream_cli.dev import LocalSystem

    sys_ = LocalSystem(ws_port=0, jwt_secret=SECRET, with_worker=False, with_sse=False, with_eventbridge=True,
                       write_state_file=False, log_dir=tmp_path_factory.mktemp("fanout-e2e"))
    await sys_.start()
    yield sys_
    await sys_.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(system):
    w = Worker(system, "main")
    r = redis.Redis.from_url(system.redis_url)
    try:
        await wait_for(lambda: sum(int(c.get("psub", 0)) for c in r.client_list()) >= 1 or w.proc.poll() is not None, timeout=20, what="worker up")
        assert w.proc.poll() is None, w.log()
        yield w
    finally:
        w.stop()
        r.close()


@pytest.fixture
def rclient(system):
    r = redis.Redis.from_url(system.redis_url)
    yield r
    r.close()


async def clients(system, *entities):
    return [await Client(system, e, user=f"u{i}").open() for i, e in enumerate(entities)]


async def test_raw_sdk_and_eventbridge_publishes_reach_the_right_clients_only(system, worker, rclient):
    a, a2, other = await clients(system, "ent-a", "ent-a", "ent-b")
    await a.subscribe("*")
    await a2.subscribe("transactions.new")
    await other.subscribe("*")
    try:
        rclient.publish("transactions.new:entity:ent-a", json.dumps({**tx(10), "timestamp": "2026-11-25T12:00:00Z"}))
        sdk_id = await asyncio.to_thread(publish, "ent-a", "balance.updated", {"accountId": "acc", "newBalance": 5, "change": -5},
                                         source="ledger", client=rclient, settings=system.settings)
        events_client = boto3.client("events", endpoint_url=system.aws_endpoint, region_name=system.region)
        await asyncio.to_thread(publish, "ent-a", "transactions.new", tx(30), source="data_pool", via="eventbridge", events_client=events_client)
        await wait_for(lambda: len(a.events()) == 3, timeout=15, what="three events")
        # the three paths race each other; each entity's events arrive in id order
        got = {e["source"]: e for e in a.events()}
        assert sorted(got) == ["data_pool", "ledger", "redis"]
        assert got["redis"]["topic"] == got["data_pool"]["topic"] == "transactions.new"
        assert got["ledger"]["id"] == sdk_id and got["ledger"]["data"]["change"] == -5
        ids = [parse_event_id(e["id"]) for e in a.events()]
        assert ids == sorted(ids)
        await wait_for(lambda: len(a2.events()) == 2, what="topic subscriber")
        assert sorted(e["data"]["amount"] for e in a2.events()) == [10, 30]
        await asyncio.sleep(0.3)
        assert other.events() == []
    finally:
        for c in (a, a2, other):
            await c.close()


async def test_filters_hold_and_unsubscribe_stops_delivery(system, worker, rclient):
    big, pos, control = await clients(system, "ent-f", "ent-f", "ent-f")
    await big.subscribe("*", filters={"minAmount": 100})
    await pos.subscribe("*", filters={"sources": ["pos"], "types": ["transactions.new"]})
    await control.subscribe("*")
    try:
        log = lambda data, topic="transactions.new", source="pos": publish("ent-f", topic, data, source=source, client=rclient, settings=system.settings)  # noqa: E731
        small_pos = log(tx(5))
        big_bank = log(tx(-500), source="bank")
        big_balance = log({"accountId": "a", "newBalance": 1, "change": 250}, topic="balance.updated")
        await wait_for(lambda: len(control.events()) == 3, what="control")
        await asyncio.sleep(0.2)
        assert big.event_ids() == [big_bank, big_balance]
        assert pos.event_ids() == [small_pos]
        n = len(pos.frames)
        await pos.send({"type": "unsubscribe", "topic": "*"})
        await wait_for(lambda: {"type": "unsubscribed", "topic": "*"} in pos.frames[n:], what="unsubscribed")
        after = log(tx(7))
        await wait_for(lambda: after in control.event_ids(), what="event after unsubscribe")
        await asyncio.sleep(0.2)
        assert pos.event_ids() == [small_pos]
    finally:
        for c in (big, pos, control):
            await c.close()


async def test_stale_connection_is_pruned(system, worker, rclient):
    from rtstream.adapters.dynamodb import DynamoDBRegistry
    from rtstream.models import Connection, Principal, Subscription

    registry = DynamoDBRegistry(boto3.client("dynamodb", endpoint_url=system.aws_endpoint, region_name=system.region),
                                connections_table=system.connections_table, subscriptions_table=system.subscriptions_table)
    expires = int(time.time()) + 3600
    # a record whose socket is long gone (its $disconnect never ran): the gateway answers 410
    registry.add_connection(Connection("ghost0000000=", Principal("u9", "ent-s"), expires_at=expires))
    registry.put_subscription(Subscription("ghost0000000=", "ent-s", "*", "u9", expires_at=expires))
    [live] = await clients(system, "ent-s")
    await live.subscribe("*")
    try:
        first = publish("ent-s", "transactions.new", tx(1), client=rclient, settings=system.settings)
        await wait_for(lambda: live.event_ids() == [first], what="delivery")
        subscribed = lambda: {s.connection_id for s in registry.subscribers("ent-s", "*")}  # noqa: E731
        await wait_for(lambda: registry.get_connection("ghost0000000=") is None and "ghost0000000=" not in subscribed(), what="prune")
        assert len(subscribed()) == 1
        again = publish("ent-s", "transactions.new", tx(2), client=rclient, settings=system.settings)
        await wait_for(lambda: live.event_ids() == [first, again], what="delivery after prune")
    finally:
        await live.close()


async def test_replay_after_a_disconnect_delivers_exactly_the_missed_events(system, worker, rclient):
    pub = lambda amount: publish("ent-r", "transactions.new", tx(amount), client=rclient, settings=system.settings)  # noqa: E731
    [first] = await clients(system, "ent-r")
    await first.subscribe("*")
    seen = [pub(1), pub(2)]
    await wait_for(lambda: first.event_ids() == seen, what="before disconnect")
    await first.close()
    missed = [pub(3), pub(4), pub(5)]
    back = await Client(system, "ent-r").open()
    try:
        stop = asyncio.Event()

        async def keep_publishing():  # live events race the replay: the seam must hold
            out = []
            while not stop.is_set() and len(out) < 20:
                out.append(await asyncio.to_thread(pub, 6 + len(out)))
                await asyncio.sleep(0.01)
            return out

        racing = asyncio.create_task(keep_publishing())
        await back.send({"type": "subscribe", "topic": "*", "since": seen[-1]})
        await asyncio.sleep(0.3)
        stop.set()
        live = await racing
        await wait_for(lambda: len(back.event_ids()) >= len(missed) + len(live), timeout=15, what="replay + live")
        await asyncio.sleep(0.2)
        assert back.frames[0] == {"type": "subscribed", "topic": "*"}
        assert back.event_ids() == missed + live  # in order, nothing missing, no duplicate
    finally:
        await back.close()


async def test_rewinding_subscribes_under_concurrent_publishing_get_the_last_n_then_every_later_event_once(system, worker, rclient):
    """Several WebSocket subscribes with ``rewind`` while a backend keeps
    publishing: each gets ``subscribed`` (its cursor), the last N matching events
    up to that cursor, oldest first, then every later matching event exactly
    once, in order."""
    published: list[tuple[str, int]] = []

    def pub(amount):
        published.append((publish("ent-w", "transactions.new", tx(amount), client=rclient, settings=system.settings), amount))

    for i in range(15):
        pub(i * 10)
    plans = [(3, {}), (10, {}), (100, {}), (2, {"minAmount": 60}), (100, {"minAmount": 60})]
    cs = await clients(system, *["ent-w"] * len(plans))
    stop = asyncio.Event()

    async def keep_publishing():  # live events race the rewinds: the seam must hold
        n = 0
        while not stop.is_set() and n < 40:
            await asyncio.to_thread(pub, (n * 37) % 100)
            n += 1
            await asyncio.sleep(0.005)

    racing = asyncio.create_task(keep_publishing())
    try:
        await asyncio.sleep(0.05)
        for c, (n, filters) in zip(cs, plans):
            await c.send({"type": "subscribe", "topic": "*", "rewind": n, **({"filters": filters} if filters else {})})
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        stop.set()
        await racing
        pub(99)  # after every rewind finished: the registry path
        for c, (n, filters) in zip(cs, plans):
            wanted = [i for i, amount in published if amount >= filters.get("minAmount", 0)]
            await wait_for(lambda c=c, last=wanted[-1]: last in c.event_ids(), timeout=15, what="rewind + live")
        await asyncio.sleep(0.2)  # a duplicate would arrive by now
        ids = [i for i, _ in published]
        for c, (n, filters) in zip(cs, plans):
            first = c.frames[0]
            assert first["type"] == "subscribed" and first["topic"] == "*" and first["cursor"] in ids, first
            upto = ids.index(first["cursor"]) + 1
            keep = lambda amount: amount >= filters.get("minAmount", 0)  # noqa: E731
            expected = [i for i, a in published[:upto] if keep(a)][-n:] + [i for i, a in published[upto:] if keep(a)]
            assert c.event_ids() == expected, (n, filters)
            assert [f["type"] for f in c.frames].count("error") == 0
        # the subscribes were spread over the publishing: the cursors differ
        assert len({c.frames[0]["cursor"] for c in cs}) > 1
    finally:
        stop.set()
        for c in cs:
            await c.close()


async def test_rewind_out_of_range_or_with_since_is_invalid_message_and_the_connection_stays_usable(system, worker, rclient):
    [c] = await clients(system, "ent-w2")
    try:
        for bad in ({"rewind": 0}, {"rewind": 101}, {"rewind": 2.5}, {"rewind": True}, {"rewind": "5"}, {"rewind": 5, "since": "1-0"}):
            n = len(c.frames)
            await c.send({"type": "subscribe", "topic": "*", **bad})
            await wait_for(lambda: len(c.frames) > n, what="error frame")
            assert c.frames[n]["type"] == "error" and c.frames[n]["code"] == "invalid_message", (bad, c.frames[n])
        await c.subscribe("*")
    finally:
        await c.close()


async def test_replay_gap_when_since_is_older_than_history(system, worker, rclient):
    [c] = await clients(system, "ent-g")
    try:
        await c.send({"type": "subscribe", "topic": "*", "since": "1000-0"})
        await wait_for(lambda: len(c.frames) >= 2, what="gap frames")
        assert c.frames[0] == {"type": "subscribed", "topic": "*"}
        assert c.frames[1]["type"] == "error" and c.frames[1]["code"] == "replay_gap"
        live = publish("ent-g", "transactions.new", tx(1), client=rclient, settings=system.settings)
        await wait_for(lambda: c.event_ids() == [live], what="live after gap")
    finally:
        await c.close()


async def test_throttled_management_api_is_retried_until_delivered(system, worker, rclient):
    cs = await clients(system, *["ent-t"] * 10)
    for c in cs:
        await c.subscribe("*")
    system.gateway.set_post_behaviour(throttle=20)  # posts/s: most of each 10-post event answers 429
    try:
        sent = [publish("ent-t", "transactions.new", tx(i), client=rclient, settings=system.settings) for i in range(5)]
        await wait_for(lambda: all(len(c.event_ids()) >= 5 for c in cs), timeout=30, what="throttled deliveries")
        for c in cs:
            assert c.event_ids() == sent  # every event, once, in order
        assert await asyncio.to_thread(worker.metric, "realtime_streaming_delivery_retries_total") > 0
        assert await asyncio.to_thread(worker.metric, "realtime_streaming_delivery_errors_total") == 0
    finally:
        system.gateway.set_post_behaviour()
        for c in cs:
            await c.close()


async def test_two_workers_never_deliver_twice_and_killing_one_loses_nothing(system, worker, rclient):
    entities = [f"ent-k{i}" for i in range(6)]
    cs = await clients(system, *entities)
    for c in cs:
        await c.subscribe("*")
    second = Worker(system, "second")
    try:
        sent = {e: [] for e in entities}
        await asyncio.sleep(1.0)  # the second worker is up and polling for leases

        async def publish_rounds(n):
            for i in range(n):
                for e in entities:
                    sent[e].append(await asyncio.to_thread(publish, e, "transactions.new", tx(i), client=rclient, settings=system.settings))
                await asyncio.sleep(0.01)

        await publish_rounds(10)
        # kill the owner of (at least) some partitions mid-stream, as kill -9 would
        worker.kill()
        await publish_rounds(15)
        await wait_for(lambda: all(len(set(c.event_ids())) == len(sent[c.entity]) for c in cs), timeout=20, what="all events after takeover")
        for c in cs:
            ids = c.event_ids()
            firsts = list(dict.fromkeys(ids))
            assert firsts == sent[c.entity]  # nothing lost, in order
            # at-least-once only for the batch in flight at the kill
            assert len(ids) - len(firsts) <= 2, ids
        assert second.proc.poll() is None, second.log()
        # SIGTERM: finish in flight, release the leases, exit 0
        await wait_for(lambda: any(rclient.get(keys.fanout_lease(p).name) == b"second" for p in range(system.settings.fanout_partitions)),
                       what="second owns partitions")
        await asyncio.to_thread(second.stop)
        assert second.proc.returncode == 0, second.log()
        assert all(rclient.get(keys.fanout_lease(p).name) is None for p in range(system.settings.fanout_partitions))
    finally:
        second.stop()
        for c in cs:
            await c.close()


async def test_api_gateway_pusher_over_the_emulators_management_api(system):
    from rtstream.adapters.management_api import ApiGatewayPusher
    from rtstream.errors import ConnectionGone

    client = boto3.client("apigatewaymanagementapi", endpoint_url=system.management_endpoint, region_name=system.region)
    pusher = ApiGatewayPusher(client)
    before = set(system.gateway.connection_ids)
    [c] = await clients(system, "ent-p")
    try:
        await c.subscribe("*")
        await wait_for(lambda: len(set(system.gateway.connection_ids) - before) == 1, what="registered")
        [cid] = set(system.gateway.connection_ids) - before
        await asyncio.to_thread(pusher.post, cid, b'{"type":"hello"}')
        await wait_for(lambda: {"type": "hello"} in c.frames, what="posted frame")
        with pytest.raises(ConnectionGone):
            await asyncio.to_thread(pusher.post, "unknownConn0=", b"{}")
        await asyncio.to_thread(pusher.delete, cid)
        await wait_for(lambda: c._reader.done(), what="closed by DELETE")
        with pytest.raises(ConnectionGone):
            await asyncio.to_thread(pusher.post, cid, b"{}")
    finally:
        await c.close()
