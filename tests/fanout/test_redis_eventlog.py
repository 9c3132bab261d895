"""RedisEventLog against a real Redis: ids, history bounds, gaps, replay seam entries."""

from __future__ import annotations

import time

import pytest
import redis

from rtstream import keys, streams
from rtstream.adapters.redis_eventlog import AsyncRedisEventLog, RedisEventLog
from rtstream.errors import BackendUnavailable, ReplayGap
from rtstream.fanout import decode_entry
from rtstream.models import Event, Filters, Subscription, parse_event_id
from rtstream.settings import Settings

TX = {"transactionId": "t1", "amount": 5, "merchant": "Cafe"}


def partition_events(client, settings, entity):
    part = keys.fanout_stream(keys.partition_of(entity, settings)).name
    return [decode_entry(i, f) for i, f in client.xrange(part)]


def test_append_records_history_and_queues_the_same_event(redis_client):
    settings = Settings()
    log = RedisEventLog(redis_client, settings)
    a = log.append("e1", "transactions.new", TX, "sdk")
    b = log.append("e1", "transactions.new", {**TX, "amount": 7}, "sdk")
    assert parse_event_id(a.id) < parse_event_id(b.id)
    queued = partition_events(redis_client, settings, "e1")
    assert queued == [a, b]
    hist = keys.history("e1", settings)
    ttl = redis_client.pttl(hist.name)
    assert 0 < ttl <= settings.history_ttl_seconds * 1000
    assert [e.id for e in log.replay("e1", a.id)] == [b.id]
    assert log.replay("e1", a.id)[0].data["amount"] == 7


def test_history_is_bounded_and_older_cursors_are_gaps(redis_client):
    settings = Settings().replace(history_maxlen=10)
    log = RedisEventLog(redis_client, settings)
    ids = [log.append("e1", "transactions.new", TX, "sdk").id for _ in range(400)]
    length = redis_client.xlen(keys.history("e1", settings).name)
    assert 10 <= length <= 11  # trimmed in small batches
    with pytest.raises(ReplayGap):
        log.replay("e1", ids[0])
    oldest_kept = redis_client.xrange(keys.history("e1", settings).name, count=1)[0][0].decode()
    tail = log.replay("e1", oldest_kept)
    assert [e.id for e in tail] == ids[ids.index(oldest_kept) + 1 :]


def test_expired_history_is_a_gap_even_after_new_events(redis_client):
    settings = Settings().replace(history_ttl_seconds=1)
    log = RedisEventLog(redis_client, settings)
    old = log.append("e1", "transactions.new", TX, "sdk").id
    # the horizon lives and expires with its stream
    assert abs(redis_client.pttl(keys.history_horizon("e1", settings).name) - redis_client.pttl(keys.history("e1", settings).name)) < 50
    # what the TTL does: both keys go together
    redis_client.delete(keys.history("e1", settings).name, keys.history_horizon("e1", settings).name)
    with pytest.raises(ReplayGap):
        log.replay("e1", old)
    time.sleep(0.002)  # a real TTL expiry is seconds later, never in the same ms
    new = log.append("e1", "transactions.new", TX, "sdk").id
    with pytest.raises(ReplayGap):
        log.replay("e1", old)
    assert log.replay("e1", new) == []


def test_replay_until_bounds_the_range(redis_client):
    log = RedisEventLog(redis_client, Settings())
    ids = [log.append("e1", "transactions.new", TX, "sdk").id for _ in range(5)]
    assert [e.id for e in log.replay("e1", ids[0], ids[2])] == ids[1:3]
    assert log.replay("e1", ids[3], ids[3]) == []


def test_request_replay_reads_until_atomically(redis_client):
    settings = Settings()
    log = RedisEventLog(redis_client, settings)
    a = log.append("e1", "transactions.new", TX, "sdk")
    sub = Subscription("c1", "e1", "*", "u1", Filters(types=("transactions.new",)), pending_replay="m-1")
    log.request_replay(sub, "1-0")
    log.notify_changed("e1", ["balance.updated", "*"], "c2")
    fresh = Subscription("c3", "e9", "*", "u1", pending_replay="m-2")
    log.request_replay(fresh, "1-0")
    entries = partition_events(redis_client, settings, "e1")
    assert entries == [a, streams.SubscriptionsChanged("e1", ("balance.updated", "*"), "c2")]
    # replay requests travel on the partition's replay lane
    replays = [streams.decode(f) for _, f in redis_client.xrange(keys.replay_stream(keys.partition_of("e1", settings)).name)]
    assert streams.ReplayRequest("m-1", "c1", "e1", "*", Filters(types=("transactions.new",)), "1-0", a.id) in replays
    e9 = [streams.decode(f) for _, f in redis_client.xrange(keys.replay_stream(keys.partition_of("e9", settings)).name)]
    assert [r.until for r in e9 if r.entity_id == "e9"] == [""]


def test_identical_appends_are_two_events(redis_client):
    """No content-hash dedup (issue 11): two identical publishes are two events."""
    log = RedisEventLog(redis_client, Settings())
    a = log.append("e1", "transactions.new", TX, "redis")
    b = log.append("e1", "transactions.new", TX, "redis")
    assert a.id != b.id
    assert redis_client.xlen(keys.history("e1", Settings()).name) == 2
    assert [e.id for e in log.replay("e1", "0-0")] == [a.id, b.id]


def test_idempotency_key_is_one_event_per_entity_within_the_window(redis_client):
    settings = Settings().replace(idempotency_window_seconds=120)
    log = RedisEventLog(redis_client, settings)
    first = log.append_idempotent("e1", "transactions.new", TX, "sdk", "order-17")
    again = log.append_idempotent("e1", "transactions.new", {**TX, "amount": 99}, "sdk", "order-17")
    assert not first.duplicate and again.duplicate
    assert again.event.id == first.event.id
    assert [e.data["amount"] for e in log.replay("e1", "0-0")] == [5]
    assert len(partition_events(redis_client, settings, "e1")) == 1  # nothing queued for fan-out either
    # the key belongs to the entity: another entity's same key is its own event
    other = log.append_idempotent("e2", "transactions.new", TX, "sdk", "order-17")
    assert not other.duplicate
    # keys.idempotency owns the TTL: the window
    ttl = redis_client.ttl(keys.idempotency("e1", "order-17", settings).name)
    assert 110 < ttl <= 120
    # after the window the key is free again
    redis_client.delete(keys.idempotency("e1", "order-17", settings).name)
    later = log.append_idempotent("e1", "transactions.new", TX, "sdk", "order-17")
    assert not later.duplicate and later.event.id != first.event.id


async def test_concurrent_repeats_of_one_key_append_once(redis_url):
    """Atomic in the script: 20 racing publishers with one key make one event."""
    import concurrent.futures

    settings = Settings()
    clients = [redis.Redis.from_url(redis_url) for _ in range(4)]
    logs = [RedisEventLog(c, settings) for c in clients]
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: logs[i % 4].append_idempotent("race", "transactions.new", TX, "sdk", "k-1"), range(20)))
        assert len({r.event.id for r in results}) == 1
        assert sum(not r.duplicate for r in results) == 1
        assert clients[0].xlen(keys.history("race", settings).name) == 1
    finally:
        for c in clients:
            c.close()


def test_unrecorded_events_take_the_work_stream_id(redis_client):
    settings = Settings()
    log = RedisEventLog(redis_client, settings)
    ev = log.append("e1", "presence", {"userId": "u", "state": "online", "connections": 1, "transports": ["websocket"]}, "system", record_history=False)
    assert not redis_client.exists(keys.history("e1", settings).name)
    [queued] = partition_events(redis_client, settings, "e1")
    assert isinstance(queued, Event) and queued.id == ev.id and queued.topic == "presence"


def test_redis_down_is_backend_unavailable():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    log = RedisEventLog(client, Settings())
    with pytest.raises(BackendUnavailable):
        log.append("e1", "transactions.new", TX, "sdk")
    with pytest.raises(BackendUnavailable):
        log.replay("e1", "1-0")


async def test_async_log_shares_scripts_and_rule(redis_url, redis_client):
    import redis.asyncio as aioredis

    settings = Settings().replace(history_maxlen=5)
    client = aioredis.Redis.from_url(redis_url)
    try:
        log = AsyncRedisEventLog(client, settings)
        ids = [(await log.append("e2", "transactions.new", TX, "sdk")).id for _ in range(3)]
        assert [e.id for e in await log.replay("e2", ids[0])] == ids[1:]
        await client.delete(keys.history("e2", settings).name)
        with pytest.raises(ReplayGap):
            await log.replay("e2", ids[0])
    finally:
        await client.aclose()


def test_scripts_run_on_the_embedded_fakeredis_too():
    """`rtstream dev` falls back to fakeredis without a redis-server: same scripts, same rule."""
    import fakeredis

    settings = Settings().replace(history_maxlen=3)
    log = RedisEventLog(fakeredis.FakeRedis(), settings)
    ids = [log.append("e1", "transactions.new", TX, "sdk").id for _ in range(8)]
    assert [e.id for e in log.replay("e1", ids[-3])] == ids[-2:]
    with pytest.raises(ReplayGap):
        log.replay("e1", ids[0])
    sub = Subscription("c1", "e1", "*", "u1", pending_replay="m")
    assert log.request_replay(sub, ids[-1])
    assert not log.append_idempotent("e1", "transactions.new", TX, "redis", "k").duplicate
    assert log.append_idempotent("e1", "transactions.new", TX, "redis", "k").duplicate


def test_last_id_is_the_newest_history_id_of_that_entity_only(redis_client):
    log = RedisEventLog(redis_client, Settings())
    assert log.last_id("e1") == ""
    log.append("e1", "transactions.new", TX, "sdk")
    newest = log.append("e1", "transactions.new", TX, "sdk")
    log.append("e2", "transactions.new", TX, "sdk")
    assert log.last_id("e1") == newest.id
