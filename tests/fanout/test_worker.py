"""The fan-out worker against a real Redis and a real HTTP management endpoint."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time

import pytest
import redis

from rtstream import keys
from rtstream.adapters.redis_eventlog import RedisEventLog
from rtstream.inmemory.registry import InMemoryRegistry
from rtstream.models import Connection, Filters, Principal, Subscription
from rtstream.settings import Settings
from rtstream_fanout.poster import ManagementPoster
from rtstream_fanout.worker import FanoutWorker
from helpers import free_port, wait_for_port  # noqa: E402

TX = {"transactionId": "t1", "amount": 42.5, "merchant": "Cafe"}


async def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")



def psubscribers(client) -> int:
    return sum(int(c.get("psub", 0)) for c in client.client_list())


def tx(i):
    return {"transactionId": f"t{i}", "amount": i, "merchant": "Cafe"}


class Rig:
    def __init__(self, redis_url, stub, **settings):
        self.settings = Settings().replace(redis_url=redis_url, fanout_partitions=4, **settings)
        self.stub = stub
        self.registry = InMemoryRegistry()
        self.client = redis.Redis.from_url(redis_url)
        self.log = RedisEventLog(self.client, self.settings)
        self.workers: list[FanoutWorker] = []

    def connect(self, cid, entity, topic="*", filters=Filters(), since=None, open_=True):
        self.registry.add_connection(Connection(cid, Principal("u", entity)))
        if open_:
            self.stub.open.add(cid)
        marker = f"m-{cid}" if since else None
        sub = Subscription(cid, entity, topic, "u", filters, pending_replay=marker)
        self.registry.put_subscription(sub)
        if since:
            self.log.request_replay(sub, since)
        else:
            self.log.notify_changed(entity, [topic], cid)

    async def worker(self, **kw) -> FanoutWorker:
        w = FanoutWorker(self.settings, registry=self.registry, poster=ManagementPoster(self.stub.endpoint), **kw)
        await w.start()
        self.workers.append(w)
        return w

    def publish(self, entity, data, topic="transactions.new", source="sdk"):
        return self.log.append(entity, topic, data, source).id

    async def close(self):
        for w in self.workers:
            await w.stop(timeout_s=5)
        self.client.close()


@pytest.fixture
async def rig(redis_url, redis_client, management_stub):
    r = Rig(redis_url, management_stub)
    yield r
    await r.close()


async def test_delivers_to_subscribers_of_the_entity_only(rig):
    rig.connect("a", "e1", "transactions.new")
    rig.connect("b", "e1", "*", Filters(min_amount=10))
    rig.connect("c", "e2", "*")
    await rig.worker()
    ids = [rig.publish("e1", tx(i)) for i in (5, 50)]
    await wait_for(lambda: len(rig.stub.event_ids("a")) == 2 and len(rig.stub.event_ids("b")) == 1, what="deliveries")
    assert rig.stub.event_ids("a") == ids
    assert rig.stub.event_ids("b") == ids[1:]
    assert rig.stub.received["c"] == []
    frame = rig.stub.frames("a")[0]
    assert frame["type"] == "event" and frame["topic"] == "transactions.new" and frame["data"]["amount"] == 5


async def test_raw_publish_is_ingested_by_the_lease_holder_once_and_identical_publishes_stay_two(rig):
    rig.connect("a", "e1")
    w1 = await rig.worker()
    w2 = await rig.worker()  # two workers, one ingest lease: each publish is recorded once
    await wait_for(lambda: psubscribers(rig.client) >= 1, what="psubscribe")
    await asyncio.sleep(0.5)  # both had several chances to take the ingest lease
    assert psubscribers(rig.client) == 1
    assert rig.client.get(keys.ingest_lease().name).decode() in (w1.worker_id, w2.worker_id)
    rig.client.publish("transactions.new:entity:e1", "{broken")
    rig.client.publish("nope.topic:entity:e1", json.dumps(TX))
    same = json.dumps({**TX, "timestamp": "2026-11-25T12:00:00Z"})
    rig.client.publish("transactions.new:entity:e1", same)
    rig.client.publish("transactions.new:entity:e1", same)  # legitimately the same twice: two events
    await wait_for(lambda: len(rig.stub.event_ids("a")) == 2, what="raw delivery")
    await asyncio.sleep(0.3)
    assert len(rig.stub.event_ids("a")) == 2 and len(set(rig.stub.event_ids("a"))) == 2
    assert rig.client.xlen(keys.history("e1", rig.settings).name) == 2
    assert w1.metrics.counts["invalid_events"] + w2.metrics.counts["invalid_events"] == 2
    assert w1.metrics.counts["ingested"] + w2.metrics.counts["ingested"] == 2
    assert rig.stub.frames("a")[0]["source"] == "redis"


async def test_gone_connections_are_pruned_and_throttling_is_retried(rig):
    rig.connect("ok", "e1")
    rig.connect("stale", "e1", open_=False)  # the gateway answers 410
    rig.connect("busy", "e1")
    rig.stub.script["busy"].extend([429, 500])
    w = await rig.worker()
    first = rig.publish("e1", tx(1))
    await wait_for(lambda: rig.stub.event_ids("busy") == [first] and rig.registry.get_connection("stale") is None, what="retry and prune")
    assert rig.registry.subscribers("e1", "*") and all(s.connection_id != "stale" for s in rig.registry.subscribers("e1", "*"))
    second = rig.publish("e1", tx(2))
    await wait_for(lambda: rig.stub.event_ids("ok") == [first, second], what="second event")
    assert w.metrics.counts["pruned"] == 1 and w.metrics.counts["retries"] == 2
    assert w.metrics.counts["deliveries"] == 4
    assert w.metrics.latency.count == 4
    text = w.metrics.prometheus()
    assert "realtime_streaming_message_latency_ms_count 4.0" in text and "realtime_streaming_connections_pruned_total 1.0" in text


async def test_unsubscribe_stops_delivery(rig):
    rig.connect("a", "e1", "transactions.new")
    await rig.worker()
    first = rig.publish("e1", tx(1))
    await wait_for(lambda: rig.stub.event_ids("a") == [first])
    rig.registry.remove_subscription("a", "e1", "transactions.new")
    rig.log.notify_changed("e1", ["transactions.new"], "a")
    rig.publish("e1", tx(2))
    rig.connect("b", "e1", "transactions.new")  # a later subscriber proves the worker moved on
    third = rig.publish("e1", tx(3))
    await wait_for(lambda: third in rig.stub.event_ids("b"))
    assert rig.stub.event_ids("a") == [first]


async def test_replay_on_subscribe_is_exact_at_the_seam(rig):
    rig.connect("live", "e1")
    await rig.worker()
    before = [rig.publish("e1", tx(i)) for i in range(1, 5)]
    await wait_for(lambda: len(rig.stub.event_ids("live")) == 4)
    rig.connect("back", "e1", "*", Filters(min_amount=2), since=before[0])
    after = [rig.publish("e1", tx(i)) for i in range(5, 8)]
    await wait_for(lambda: len(rig.stub.event_ids("back")) == 6, what="replay + live")
    frames = rig.stub.frames("back")
    assert frames[0] == {"type": "subscribed", "topic": "*"}
    assert rig.stub.event_ids("back") == before[1:] + after
    assert rig.registry.subscribers("e1", "*")[-1].pending_replay is None


async def test_replay_gap_is_an_error_frame(redis_url, redis_client, management_stub):
    rig = Rig(redis_url, management_stub, history_maxlen=5)
    try:
        await rig.worker()
        ids = [rig.publish("e1", tx(i)) for i in range(1, 30)]
        rig.connect("back", "e1", "*", since=ids[0])
        live = rig.publish("e1", tx(99))
        await wait_for(lambda: rig.stub.event_ids("back") == [live])
        frames = rig.stub.frames("back")
        assert [f["type"] for f in frames] == ["subscribed", "error", "event"]
        assert frames[1]["code"] == "replay_gap"
    finally:
        await rig.close()


async def test_two_workers_share_partitions_and_never_deliver_twice(rig):
    entities = [f"ent{i}" for i in range(8)]
    for e in entities:
        rig.connect(f"c-{e}", e)
    w1 = await rig.worker()
    w2 = await rig.worker()
    sent = {e: [rig.publish(e, tx(i)) for i in range(25)] for e in entities}
    await wait_for(lambda: all(len(rig.stub.event_ids(f"c-{e}")) >= 25 for e in entities), what="all deliveries")
    await asyncio.sleep(0.3)
    for e in entities:
        assert rig.stub.event_ids(f"c-{e}") == sent[e]  # once each, in order
    assert len(w1.leases) + len(w2.leases) == 4 and not (set(w1.leases) & set(w2.leases))


async def test_survivor_takes_over_a_dead_workers_partitions(redis_url, redis_client, management_stub):
    rig = Rig(redis_url, management_stub)
    try:
        rig.connect("a", "e1")
        dead = await rig.worker(lease_ms=2000)
        first = rig.publish("e1", tx(1))
        await wait_for(lambda: rig.stub.event_ids("a") == [first])
        part = keys.fanout_stream(keys.partition_of("e1", rig.settings)).name
        await wait_for(lambda: rig.client.xpending(part, keys.FANOUT_GROUP)["pending"] == 0, what="first acked")
        # die without releasing anything (as kill -9 would)
        for task in dead._tasks + [t for l in dead.leases.values() for t in l.tasks()]:
            task.cancel()
        await asyncio.sleep(0.05)
        rig.workers.remove(dead)
        missed = [rig.publish("e1", tx(i)) for i in range(2, 12)]
        started = time.monotonic()
        survivor = await rig.worker(lease_ms=2000)
        await wait_for(lambda: rig.stub.event_ids("a") == [first] + missed, timeout=15, what="takeover")
        # lease 2 s: a few seconds at most, even on a loaded machine
        assert time.monotonic() - started < 8, time.monotonic() - started
        await wait_for(lambda: len(survivor.leases) == 4, what="all partitions owned")
        await dead.poster.close()
        await dead.redis.aclose()
    finally:
        await rig.close()


async def test_stop_releases_leases_for_an_immediate_takeover(rig):
    w1 = await rig.worker()
    await wait_for(lambda: len(w1.leases) == 4)
    await w1.stop()
    rig.workers.remove(w1)
    assert all(rig.client.get(keys.fanout_lease(p).name) is None for p in range(4))
    w2 = await rig.worker()
    await wait_for(lambda: len(w2.leases) == 4, timeout=3)


async def test_worker_reconnects_after_redis_restarts(management_stub, tmp_path):
    binary = shutil.which("redis-server")
    port = free_port()

    def start_redis():
        p = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", port)
        return p

    proc = start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    rig = Rig(url, management_stub)
    try:
        rig.connect("a", "e1")
        w = await rig.worker()
        first = rig.publish("e1", tx(1))
        await wait_for(lambda: rig.stub.event_ids("a") == [first])
        proc.terminate()
        proc.wait(timeout=10)
        await asyncio.sleep(0.5)
        proc = start_redis()  # empty: the worker must rebuild its group and leases itself
        rig.connect("a", "e1")
        await wait_for(lambda: psubscribers(rig.client) >= 1, timeout=10, what="resubscribe")
        rig.client.publish("transactions.new:entity:e1", json.dumps(tx(2)))
        await wait_for(lambda: len(rig.stub.event_ids("a")) == 2, timeout=10, what="delivery after restart")
        assert w.metrics.counts["redis_reconnects"] >= 1
    finally:
        await rig.close()
        proc.terminate()
        proc.wait(timeout=10)


async def test_undecodable_and_poison_entries_are_skipped_and_the_partition_keeps_moving(rig):
    class Buggy(InMemoryRegistry):
        def subscribers(self, entity_id, topic):
            if entity_id == "bad":
                raise RuntimeError("a bug, not a backend outage")
            return super().subscribers(entity_id, topic)

    rig.registry = Buggy()
    # "bad" and "good" share a partition so the poison entry is in the way
    good = next(e for e in (f"g{i}" for i in range(100)) if keys.partition_of(e, rig.settings) == keys.partition_of("bad", rig.settings))
    rig.connect("a", good)
    part = keys.fanout_stream(keys.partition_of(good, rig.settings)).name
    rig.client.xadd(part, {"kind": "event", "id": "1-0", "entity": good, "topic": "transactions.new", "data": "{not json"})
    w = await rig.worker()
    rig.publish("bad", tx(1))
    after = rig.publish(good, tx(2))
    await wait_for(lambda: rig.stub.event_ids("a") == [after], timeout=20, what="delivery past the poison entry")
    # both went to the dead-letter stream at once, with their reason and entity
    await wait_for(lambda: w.metrics.counts["dead_letters"] == 2, what="dead letters")
    letters = [{k.decode(): v.decode() for k, v in f.items()} for _, f in rig.client.xrange(keys.dead_letter_stream().name)]
    assert sorted(l["entity"] for l in letters) == sorted(["bad", good])
    assert any(l["reason"].startswith("undecodable") and l["f.data"] == "{not json" for l in letters)
    assert any(l["reason"].startswith("poison: RuntimeError") for l in letters)


async def test_a_replay_with_an_id_redis_rejects_stalls_no_other_entity(rig):
    """Regression (issue 11): `since` "1-0\\n" made the partition retry one entry
    forever; every entity of the partition stopped receiving events."""
    victims = [e for e in (f"v{i}" for i in range(200)) if keys.partition_of(e, rig.settings) == keys.partition_of("attacker-e", rig.settings)][:4]
    for e in victims:
        rig.connect(f"c-{e}", e)
    rig.publish("attacker-e", tx(1))  # the attacker's entity has history
    w = await rig.worker()
    for bad in ("1-0\n", "18446744073709551616-0"):
        # written as the gateway would have before ids were checked strictly
        rig.connect(f"attacker-{len(bad)}", "attacker-e", since=bad)
    started = time.monotonic()
    sent = {e: [rig.publish(e, tx(i)) for i in range(5)] for e in victims}
    await wait_for(lambda: all(rig.stub.event_ids(f"c-{e}") == sent[e] for e in victims), timeout=5, what="victims' events")
    assert time.monotonic() - started < 5
    await wait_for(lambda: rig.client.xlen(keys.dead_letter_stream().name) == 2, what="dead letters")
    letters = [{k.decode(): v.decode() for k, v in f.items()} for _, f in rig.client.xrange(keys.dead_letter_stream().name)]
    assert sorted(l["f.since"] for l in letters) == sorted(["1-0\n", "18446744073709551616-0"])
    assert all(l["entity"] == "attacker-e" and l["lane"] == "replay" and l["reason"].startswith("invalid_message") for l in letters)
    assert w.metrics.counts["dead_letters"] == 2 and "realtime_streaming_dead_letters_total 2.0" in w.metrics.prometheus()
    # the attacker is told, and nothing stays pending in the replay lane
    assert rig.stub.frames("attacker-4")[0]["code"] == "invalid_message"
    p = keys.partition_of("attacker-e", rig.settings)
    await wait_for(lambda: rig.client.xpending(keys.replay_stream(p).name, keys.FANOUT_GROUP)["pending"] == 0, what="replay entries acked")
    # a restarted worker finds nothing left to retry
    await w.stop()
    rig.workers.remove(w)
    w2 = await rig.worker()
    later = rig.publish(victims[0], tx(9))
    await wait_for(lambda: rig.stub.event_ids(f"c-{victims[0]}")[-1:] == [later], what="delivery after restart")
    assert w2.metrics.counts["dead_letters"] == 0


async def test_seam_is_exact_for_several_resuming_connections_under_concurrent_publishing(rig):
    rig.connect("steady", "e1")
    await rig.worker()
    history = [rig.publish("e1", tx(i)) for i in range(30)]
    stop = asyncio.Event()
    published = list(history)

    async def publisher():
        i = 100
        while not stop.is_set():
            published.append(await asyncio.to_thread(rig.publish, "e1", tx(i)))
            i += 1
            await asyncio.sleep(0.002)

    task = asyncio.create_task(publisher())
    resumes = {}
    for n in range(6):
        await asyncio.sleep(0.05)
        since = published[len(published) // 2 - n]
        resumes[f"r{n}"] = since
        rig.connect(f"r{n}", "e1", since=since)
    await asyncio.sleep(0.3)
    stop.set()
    await task
    await wait_for(lambda: rig.stub.event_ids("steady") == published, what="steady observer")
    for cid, since in resumes.items():
        expected = published[published.index(since) + 1 :]
        await wait_for(lambda: len(rig.stub.event_ids(cid)) >= len(expected), what=f"{cid} caught up")
        await asyncio.sleep(0.05)
        assert rig.stub.event_ids(cid) == expected, cid  # no gap, no duplicate, in order
        assert rig.stub.frames(cid)[0]["type"] == "subscribed"


async def test_replay_to_a_gone_connection_stops_at_the_first_410(rig):
    ids = [rig.publish("e1", tx(i)) for i in range(200)]
    rig.connect("gone", "e1", since=ids[0], open_=False)
    w = await rig.worker()
    await wait_for(lambda: w.metrics.counts["replays_abandoned"] == 1, what="abandoned replay")
    before = rig.stub.requests
    assert before == 1  # only `subscribed` was posted, not 199 events
    assert rig.registry.get_connection("gone") is None


async def test_healthz_reports_redis_and_partition_progress(rig):
    """200 while Redis answers and partitions move; 503 naming the stream when an
    owned partition holds work without progress (here: a registry that hangs)."""
    import threading

    from rtstream.adapters.prometheus import serve_prometheus

    release = threading.Event()

    class Hanging(InMemoryRegistry):
        def subscribers(self, entity_id, topic):
            if entity_id == "stuck-e":
                release.wait(20)
            return super().subscribers(entity_id, topic)

    rig.registry = Hanging()
    w = await rig.worker(stall_s=1.5, lease_ms=2000)
    server = await serve_prometheus(w.metrics.registry, 0, health=w.health)
    port = server.sockets[0].getsockname()[1]

    async def get():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    try:
        await wait_for(lambda: len(w.leases) == 4 and w.health()[0], what="healthy")
        status, body = await get()
        assert status == 200 and body["status"] == "ok" and body["partitions"] == [0, 1, 2, 3]
        rig.connect("c", "stuck-e")
        rig.publish("stuck-e", tx(1))
        stream = keys.fanout_stream(keys.partition_of("stuck-e", rig.settings)).name
        await wait_for(lambda: not w.health()[0], timeout=10, what="unhealthy")
        status, body = await get()
        assert status == 503 and body["status"] == "unhealthy" and any(stream in r for r in body["reasons"])
        release.set()
        await wait_for(lambda: w.health()[0], timeout=10, what="healthy again")
        assert (await get())[0] == 200
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_ingest_moves_to_another_worker_when_its_owner_stops(rig):
    rig.connect("a", "e1")
    w1 = await rig.worker(lease_ms=2000)
    await wait_for(lambda: psubscribers(rig.client) == 1, what="first ingest owner")
    w2 = await rig.worker(lease_ms=2000)
    owner, other = (w1, w2) if rig.client.get(keys.ingest_lease().name).decode() == w1.worker_id else (w2, w1)
    await owner.stop()
    rig.workers.remove(owner)
    # released on stop: the other worker takes ingest at its next lease round
    await wait_for(lambda: (rig.client.get(keys.ingest_lease().name) or b"").decode() == other.worker_id and psubscribers(rig.client) == 1,
                   what="ingest taken over")
    rig.client.publish("transactions.new:entity:e1", json.dumps(TX))
    await wait_for(lambda: len(rig.stub.event_ids("a")) == 1, what="raw publish after the hand-over")
    assert other.metrics.counts["ingested"] == 1
