"""Connection hygiene: the real count, and stale state swept so the registry and
presence never grow without bound. On the in-memory ports (with a clock moved by
hand), on DynamoDB in moto and on a real Redis."""

from __future__ import annotations

import time
import uuid

import pytest

from rtstream import keys, streams
from rtstream.adapters.dynamodb import DynamoDBRegistry
from rtstream.adapters.redis_eventlog import RedisEventLog
from rtstream.adapters.redis_limits import RedisPresence
from rtstream.hygiene import Housekeeping
from rtstream.inmemory.eventlog import InMemoryEventLog
from rtstream.inmemory.limits import InMemoryPresence, ManualClock
from rtstream.inmemory.registry import InMemoryRegistry
from rtstream.models import Connection, Principal, Subscription
from rtstream.service import RealtimeService
from rtstream.settings import Settings

ALICE = Principal("alice", "entity-a", "user")
BOB = Principal("bob", "entity-a", "user")


def presence_events(event_log: InMemoryEventLog, entity: str) -> list[dict]:
    return [e.data for e in (streams.decode(f) for _, f in event_log.entries_for(entity)) if getattr(e, "topic", None) == "presence"]


# ---- in-memory: the logic ---------------------------------------------------------------


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def settings():
    return Settings(jwt_secret="x", max_connection_seconds=600, presence_ttl_seconds=60, max_connections_per_user=1000, max_connections_per_entity=100_000)


def test_stale_connections_are_swept_with_their_subscriptions(clock, settings):
    registry = InMemoryRegistry(clock)
    event_log = InMemoryEventLog(settings, clock=clock)
    presence = InMemoryPresence(settings.presence_ttl_seconds, clock)
    service = RealtimeService(registry=registry, settings=settings, event_log=event_log, presence=presence, clock=clock)
    housekeeping = Housekeeping(registry=registry, presence=presence, event_log=event_log, clock=clock, batch=3)

    service.connect(ALICE, "lost")  # its $disconnect will never arrive
    service.handle("lost", ALICE, '{"type":"subscribe","topic":"*"}')
    service.handle("lost", ALICE, '{"type":"subscribe","topic":"presence"}')
    report = housekeeping.run()
    assert report.active == {"websocket": 1, "sse": 0}
    assert (report.connections_swept, report.subscriptions_swept, report.presence_expired) == (0, 0, 0)

    clock.advance(settings.presence_ttl_seconds + 1)  # presence heartbeats stopped
    assert service.presence.online("entity-a") == []
    report = housekeeping.run()
    assert report.presence_expired == 1
    assert presence_events(event_log, "entity-a")[-1] == {"userId": "alice", "state": "offline", "connections": 0, "transports": []}
    service.connect(BOB, "live")

    clock.advance(settings.max_connection_seconds + 300)  # past the registry TTL of both
    report = housekeeping.run()
    assert report.connections_swept == 2 and report.active == {"websocket": 0, "sse": 0}
    assert registry.record_count() == 0
    assert registry.subscribers("entity-a", "*") == [] and registry.get_connection("lost") is None


def test_orphan_subscriptions_are_swept(clock, settings):
    """A subscription written after its connection record was removed (a subscribe
    racing the $disconnect) is swept by its own TTL."""
    registry = InMemoryRegistry(clock)
    now_s = clock.now_ms() // 1000
    registry.put_subscription(Subscription(connection_id="ghost", entity_id="entity-a", topic="*", expires_at=now_s + 10))
    housekeeping = Housekeeping(registry=registry, clock=clock)
    assert housekeeping.run().subscriptions_swept == 0
    clock.advance(11)
    report = housekeeping.run()
    assert report.subscriptions_swept == 1 and registry.record_count() == 0


def test_the_registry_does_not_grow_under_churn_without_disconnects(clock, settings):
    registry = InMemoryRegistry(clock)
    service = RealtimeService(registry=registry, settings=settings, clock=clock)
    housekeeping = Housekeeping(registry=registry, clock=clock, batch=7, max_batches=100)
    sizes = []
    for minute in range(30):
        for n in range(20):  # 20 connections a minute, none of them ever says goodbye
            cid = f"c{minute}-{n}"
            service.connect(Principal(f"u{n}", "entity-a", "user"), cid)
            service.handle(cid, Principal(f"u{n}", "entity-a", "user"), '{"type":"subscribe","topic":"*"}')
        clock.advance(60)
        housekeeping.run()
        sizes.append(registry.record_count())
    # connections live max_connection_seconds + slack (15 minutes): the size levels off
    ttl_minutes = (settings.max_connection_seconds + 300) // 60
    assert max(sizes) <= 2 * 20 * (ttl_minutes + 1)
    assert sizes[-1] == sizes[-5]  # steady state, not growth


def test_a_failing_part_does_not_stop_the_others(clock, settings):
    from rtstream.errors import BackendUnavailable

    class BrokenPresence(InMemoryPresence):
        def sweep(self):
            raise BackendUnavailable("redis down")

    registry = InMemoryRegistry(clock)
    registry.add_connection(Connection("c1", ALICE, connected_at_ms=clock.now_ms(), expires_at=clock.now_ms() // 1000 - 1))
    report = Housekeeping(registry=registry, presence=BrokenPresence(60, clock), clock=clock).run()
    assert report.errors == ["unavailable"] and report.connections_swept == 1 and report.active == {"websocket": 0, "sse": 0}


# ---- DynamoDB (moto) ---------------------------------------------------------------------


@pytest.fixture
def dynamo_registry(dynamodb_client, tables):
    return DynamoDBRegistry(dynamodb_client, connections_table=tables["ConnectionsTable"], subscriptions_table=tables["SubscriptionsTable"])


def _items(dynamodb_client, table):
    """Registry records (the connections table also holds admission counters and the sweep cursor)."""
    return dynamodb_client.scan(TableName=table, Select="COUNT", FilterExpression="attribute_exists(entityId)")["Count"]


def test_dynamodb_count_and_sweep(dynamo_registry, dynamodb_client, tables):
    now = int(time.time())
    live = [Connection(f"live-{i}", ALICE, connected_at_ms=now * 1000, expires_at=now + 600) for i in range(3)]
    live.append(Connection("sse-1", BOB, transport="sse", connected_at_ms=now * 1000, expires_at=now + 600))
    stale = [Connection(f"stale-{i}", BOB, connected_at_ms=(now - 8000) * 1000, expires_at=now - 5) for i in range(12)]
    for c in live + stale:
        dynamo_registry.add_connection(c)
        for topic in ("*", "presence"):
            dynamo_registry.put_subscription(Subscription(c.connection_id, c.entity_id, topic, user_id=c.user_id, expires_at=c.expires_at))
    # an orphan: subscription past its TTL whose connection record is already gone
    dynamo_registry.put_subscription(Subscription("orphan", "entity-a", "*", expires_at=now - 5))

    # stale records hold their slots (and count) until swept
    assert dynamo_registry.count_connections(now) == {"websocket": 15, "sse": 1}
    assert sorted(dynamo_registry.stale_connections(now, 100)) == sorted(c.connection_id for c in stale)
    assert len(dynamo_registry.stale_connections(now, 5)) == 5  # bounded

    report = Housekeeping(registry=dynamo_registry, batch=5).run()
    assert report.connections_swept == 12 and report.subscriptions_swept == 1
    assert report.active == {"websocket": 3, "sse": 1}
    assert _items(dynamodb_client, tables["ConnectionsTable"]) == 4
    assert _items(dynamodb_client, tables["SubscriptionsTable"]) == 8
    assert dynamo_registry.stale_connections(now, 100) == [] and dynamo_registry.stale_subscriptions(now, 100) == []


def test_dynamodb_first_subscribe_is_claimed_once(dynamo_registry):
    now = int(time.time())
    dynamo_registry.add_connection(Connection("c1", ALICE, connected_at_ms=now * 1000, expires_at=now + 600))
    assert dynamo_registry.claim_first_subscribe("c1") is True
    assert dynamo_registry.claim_first_subscribe("c1") is False
    assert dynamo_registry.claim_first_subscribe("never-connected") is False  # no stub record created
    assert dynamo_registry.get_connection("never-connected") is None


def test_dynamodb_count_reads_counters_not_records(dynamo_registry, dynamodb_client, tables):
    """The active count reads one index entry per entity (its counter), never the
    connection records, and never Scans."""
    now = int(time.time())
    for i in range(25):
        dynamo_registry.add_connection(Connection(f"c{i}", ALICE, connected_at_ms=now * 1000, expires_at=now + 600))
    dynamo_registry.add_connection(Connection("s1", Principal("carol", "entity-b"), transport="sse", connected_at_ms=now * 1000, expires_at=now + 600))
    read = []
    real_query, real_scan = dynamodb_client.query, dynamodb_client.scan

    def counting_query(**kwargs):
        out = real_query(**kwargs)
        read.extend(out["Items"])
        return out

    def no_scan(**kwargs):
        raise AssertionError("count_connections scanned")

    dynamodb_client.query, dynamodb_client.scan = counting_query, no_scan
    try:
        assert dynamo_registry.count_connections(now) == {"websocket": 25, "sse": 1}
    finally:
        dynamodb_client.query, dynamodb_client.scan = real_query, real_scan
    # the 2 entity counters, whatever the number of connections (or users)
    assert sorted(i["connectionId"]["S"] for i in read) == ["#e#entity-a", "#e#entity-b"]


# ---- Redis presence ---------------------------------------------------------------------


def test_redis_presence_sweep_announces_lost_connections(redis_client):
    settings = Settings(presence_ttl_seconds=1)
    presence = RedisPresence(redis_client, settings)
    event_log = RedisEventLog(redis_client, settings)
    entity = f"entity-{uuid.uuid4().hex[:6]}"
    presence.heartbeat(entity, "alice", "c1", "websocket")
    presence.heartbeat(entity, "bob", "c2", "sse")
    assert Housekeeping(registry=InMemoryRegistry(), presence=presence, event_log=event_log).run().presence_expired == 0
    time.sleep(0.7)
    presence.heartbeat(entity, "bob", "c2", "sse")  # bob's stream is alive, alice's socket died silently
    time.sleep(0.5)
    assert presence.online(entity) == [{"userId": "bob", "connections": 1, "transports": ["sse"]}]
    report = Housekeeping(registry=InMemoryRegistry(), presence=presence, event_log=event_log).run()
    assert report.presence_expired == 1
    # the offline event went to the entity's fan-out stream on the presence topic
    part = keys.fanout_stream(keys.partition_of(entity, settings)).name
    events = [streams.decode(f) for _, f in redis_client.xrange(part)]
    offline = [e.data for e in events if getattr(e, "topic", None) == "presence" and e.entity_id == entity]
    assert offline == [{"userId": "alice", "state": "offline", "connections": 0, "transports": []}]
    # a second sweep has nothing more to say; the key is kept for bob only
    assert presence.sweep() == {}
    assert redis_client.zcard(keys.presence(entity, settings).name) == 1


def test_redis_presence_key_outlives_the_ttl_for_the_sweep(redis_client):
    """The last member of an entity expiring must still be announced: the key
    stays longer than the TTL so the next sweep finds it, then goes."""
    settings = Settings(presence_ttl_seconds=1)
    presence = RedisPresence(redis_client, settings)
    entity = f"entity-{uuid.uuid4().hex[:6]}"
    presence.heartbeat(entity, "alice", "c1", "websocket")
    time.sleep(1.2)
    assert presence.online(entity) == []
    assert presence.sweep() == {entity: [{"userId": "alice", "state": "offline", "connections": 0, "transports": []}]}
    assert redis_client.zcard(keys.presence(entity, settings).name) == 0
    assert redis_client.pttl(keys.presence(entity, settings).name) <= 0 or not redis_client.exists(keys.presence(entity, settings).name)


def test_report_as_prometheus_text(clock, settings):
    registry = InMemoryRegistry(clock)
    registry.add_connection(Connection("c1", ALICE, connected_at_ms=clock.now_ms(), expires_at=clock.now_ms() // 1000 + 60))
    registry.add_connection(Connection("c2", BOB, transport="sse", connected_at_ms=clock.now_ms(), expires_at=clock.now_ms() // 1000 - 1))
    from rtstream.adapters.prometheus import component_registry, exposition, housekeeping_families

    report = Housekeeping(registry=registry, clock=clock).run()
    text = exposition(component_registry(lambda: housekeeping_families(report)))
    lines = text.splitlines()
    assert 'realtime_streaming_active_connections{transport="websocket"} 1.0' in lines
    assert 'realtime_streaming_active_connections{transport="sse"} 0.0' in lines
    assert "realtime_streaming_stale_connections_swept 1.0" in lines
    assert "# TYPE realtime_streaming_active_connections gauge" in lines


async def test_run_periodically_keeps_going_after_a_failure(clock):
    import asyncio

    from rtstream.hygiene import run_periodically

    class FlakyRegistry(InMemoryRegistry):
        calls = 0

        def count_connections(self, now_s):
            FlakyRegistry.calls += 1
            if FlakyRegistry.calls == 1:
                raise RuntimeError("a bug, not a coded error")
            return super().count_connections(now_s)

    reports = []
    task = asyncio.create_task(run_periodically(Housekeeping(registry=FlakyRegistry(clock), clock=clock), interval=0.01, on_report=reports.append))
    try:
        for _ in range(200):
            if len(reports) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert len(reports) >= 2 and FlakyRegistry.calls >= 3
    assert reports[0].active == {"websocket": 0, "sse": 0}


def test_a_run_is_bounded_and_the_next_one_goes_on(clock, settings):
    registry = InMemoryRegistry(clock)
    expired = clock.now_ms() // 1000 - 1
    for i in range(25):
        registry.add_connection(Connection(f"c{i}", ALICE, connected_at_ms=clock.now_ms(), expires_at=expired))
    report = Housekeeping(registry=registry, clock=clock, batch=5, max_batches=2).run()
    assert report.connections_swept == 10 and report.incomplete
    out_of_time = Housekeeping(registry=registry, clock=clock, budget_seconds=0).run()
    assert out_of_time.connections_swept == 0 and out_of_time.incomplete and out_of_time.active == {"websocket": 0, "sse": 0}
    rest = Housekeeping(registry=registry, clock=clock, batch=5, max_batches=10).run()
    assert rest.connections_swept == 15 and not rest.incomplete and registry.record_count() == 0


def test_dynamodb_sweep_releases_the_slots_of_lost_disconnects(dynamodb_client, tables):
    """A connection whose $disconnect never came holds its admission slots until
    the sweep removes it; then the counters are exact again (no recount needed)."""
    from rtstream.inmemory.limits import ManualClock as Clock

    clock = Clock(start_ms=int(time.time()) * 1000)
    registry = DynamoDBRegistry(dynamodb_client, connections_table=tables["ConnectionsTable"], subscriptions_table=tables["SubscriptionsTable"], clock=clock)
    settings = Settings(jwt_secret="x", max_connection_seconds=600, max_connections_per_user=2, max_connections_per_entity=3)
    service = RealtimeService(registry=registry, settings=settings, clock=clock)
    service.connect(ALICE, "lost-1")
    service.connect(ALICE, "lost-2")
    service.connect(BOB, "bob-1")

    def counter(key):
        item = dynamodb_client.get_item(TableName=tables["ConnectionsTable"], Key={"connectionId": {"S": key}}, ConsistentRead=True).get("Item")
        return int(item["n"]["N"]) if item else 0

    assert (counter("#u#alice"), counter("#e#entity-a")) == (2, 3)
    clock.advance(600 + 300 + 1)  # past the records' ttl; their $disconnects never came
    service.disconnect("bob-1")  # bob leaves properly
    report = Housekeeping(registry=registry, clock=clock).run()
    assert report.connections_swept == 2 and report.errors == [] and report.counters_corrected == 0
    assert (counter("#u#alice"), counter("#e#entity-a")) == (0, 0)
    assert report.active == {"websocket": 0, "sse": 0}
    service.connect(ALICE, "back-1")
    service.connect(ALICE, "back-2")
