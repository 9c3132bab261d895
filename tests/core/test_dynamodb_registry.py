"""DynamoDBRegistry against DynamoDB in a moto server, tables from template.yaml."""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager

import boto3
import pytest
from botocore import xform_name

from rtstream.adapters.dynamodb import DynamoDBRegistry, translate_error
from rtstream.errors import BackendUnavailable, Throttled
from rtstream.models import Connection, Filters, Principal, Subscription
from rtstream.ports import ConnectionRegistry


@contextmanager
def watching(client, event, handler):
    """botocore's own hooks (not a replaced method): ``handler`` sees each call
    of ``event`` (its parameters, mutable before the request is built; the
    parsed reply after it); the call itself still goes to moto."""
    client.meta.events.register(event, handler)
    try:
        yield
    finally:
        client.meta.events.unregister(event, handler)


@pytest.fixture
def watch():
    """``watch(client, event, handler)``: :func:`watching` until the test ends."""
    with ExitStack() as stack:
        yield lambda client, event, handler: stack.enter_context(watching(client, event, handler))


@pytest.fixture
def registry(dynamodb_client, tables):
    return DynamoDBRegistry(dynamodb_client, connections_table=tables["ConnectionsTable"], subscriptions_table=tables["SubscriptionsTable"])


def later(seconds=3600):
    return int(time.time()) + seconds


def conn(cid, user="u1", entity="e1", role="user", expires_at=None):
    return Connection(cid, Principal(user, entity, role), connected_at_ms=1_764_090_000_123, source_ip="198.51.100.7", expires_at=later() if expires_at is None else expires_at)


def sub(cid, entity="e1", topic="*", **kw):
    kw.setdefault("expires_at", later())
    return Subscription(cid, entity, topic, user_id="u1", **kw)


def test_is_a_registry(registry):
    assert isinstance(registry, ConnectionRegistry)


def test_connection_roundtrip_with_ttl_attribute(registry, dynamodb_client, tables):
    c = conn("c1", role="agent")
    registry.add_connection(c)
    assert registry.get_connection("c1") == c
    raw = dynamodb_client.get_item(TableName=tables["ConnectionsTable"], Key={"connectionId": {"S": "c1"}})["Item"]
    assert raw["ttl"] == {"N": str(c.expires_at)}
    assert raw["userId"] == {"S": "u1"} and raw["entityId"] == {"S": "e1"} and raw["connectedAt"] == {"N": "1764090000123"}
    # native TTL is a backstop a day later: housekeeping removes the record (and releases its slots) first
    assert raw["purgeAt"] == {"N": str(c.expires_at + 86_400)}
    ttl = dynamodb_client.describe_time_to_live(TableName=tables["ConnectionsTable"])["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "purgeAt" and ttl["TimeToLiveStatus"] in ("ENABLED", "ENABLING")


def test_expired_records_are_invisible(registry):
    registry.add_connection(conn("old", expires_at=int(time.time()) - 10))
    registry.put_subscription(sub("old", expires_at=int(time.time()) - 10))
    assert registry.get_connection("old") is None
    assert registry.subscribers("e1", "*") == []
    assert registry.count_user_connections("u1", int(time.time())) == 0


def test_counts_use_indexes_and_ttl(registry):
    now = int(time.time())
    registry.add_connection(conn("c1"))
    registry.add_connection(conn("c2"))
    registry.add_connection(conn("c3", user="u2"))
    registry.add_connection(conn("c4", entity="e2"))
    registry.add_connection(conn("c5", expires_at=now - 1))
    assert registry.count_user_connections("u1", now) == 3
    assert registry.count_user_connections("u2", now) == 1
    assert registry.count_entity_connections("e1", now) == 3
    assert registry.count_entity_connections("nobody", now) == 0


def test_subscriptions_by_channel(registry, dynamodb_client, tables):
    registry.add_connection(conn("c1"))
    s = sub("c1", topic="transactions.new", filters=Filters(types=("transactions.new",), sources=("pool",), min_amount=2.5))
    registry.put_subscription(s)
    registry.put_subscription(sub("c2", topic="transactions.new"))
    registry.put_subscription(sub("c1", topic="*"))
    registry.put_subscription(sub("c9", entity="e2", topic="transactions.new"))
    assert sorted(x.connection_id for x in registry.subscribers("e1", "transactions.new")) == ["c1", "c2"]
    got = next(x for x in registry.subscribers("e1", "transactions.new") if x.connection_id == "c1")
    assert got == s
    raw = dynamodb_client.get_item(TableName=tables["SubscriptionsTable"], Key={"channel": {"S": "e1#transactions.new"}, "connectionId": {"S": "c1"}})["Item"]
    assert raw["entityId"] == {"S": "e1"} and raw["topic"] == {"S": "transactions.new"} and "ttl" in raw
    assert [x.topic for x in registry.connection_subscriptions("c1")] == ["*", "transactions.new"]
    assert registry.connection_subscriptions("c2")[0].topic == "transactions.new"  # found via byConnection index


def test_subscribers_is_one_paginated_query(registry, dynamodb_client, tables, watch):
    for i in range(30):
        registry.put_subscription(sub(f"c{i:02d}", topic="balance.updated"))
    calls = []

    def counting_query(params, **_):
        calls.append(dict(params))
        params["Limit"] = 7  # force pages

    watch(dynamodb_client, "before-parameter-build.dynamodb.Query", counting_query)
    found = registry.subscribers("e1", "balance.updated")
    assert len(found) == 30
    assert all(c["KeyConditionExpression"] == "channel = :ch" and "IndexName" not in c for c in calls)
    assert len(calls) == 5  # 30 items / 7 per page: one logical query, paginated


def test_remove_subscription(registry):
    registry.add_connection(conn("c1"))
    registry.put_subscription(sub("c1", topic="sync.completed"))
    assert registry.remove_subscription("c1", "e1", "sync.completed") is True
    assert registry.remove_subscription("c1", "e1", "sync.completed") is False
    assert registry.connection_subscriptions("c1") == []
    assert registry.subscribers("e1", "sync.completed") == []


def test_put_subscription_never_creates_a_stub_connection(registry):
    registry.put_subscription(sub("ghost"))
    assert registry.get_connection("ghost") is None


def test_remove_connection_removes_all_its_subscriptions(registry):
    registry.add_connection(conn("c1"))
    registry.add_connection(conn("c2"))
    for topic in ("*", "transactions.new", "balance.updated", "presence"):
        registry.put_subscription(sub("c1", topic=topic))
    registry.put_subscription(sub("c2", topic="*"))
    removed = registry.remove_connection("c1")
    assert removed is not None and removed.connection_id == "c1"
    assert registry.connection_subscriptions("c1") == []
    assert [s.connection_id for s in registry.subscribers("e1", "*")] == ["c2"]
    assert registry.remove_connection("c1") is None


def test_remove_connection_also_finds_orphan_subscriptions(registry):
    registry.put_subscription(sub("orphan", topic="*"))  # no connection record
    assert registry.remove_connection("orphan") is None
    assert registry.subscribers("e1", "*") == []


def test_clear_pending_replay_only_for_matching_marker(registry):
    registry.put_subscription(sub("c1", pending_replay="m1"))
    registry.clear_pending_replay("c1", "e1", "*", "other")
    assert registry.subscribers("e1", "*")[0].pending_replay == "m1"
    registry.clear_pending_replay("c1", "e1", "*", "m1")
    assert registry.subscribers("e1", "*")[0].pending_replay is None
    registry.clear_pending_replay("nobody", "e1", "*", "m1")  # absent: no error, no stub
    assert len(registry.subscribers("e1", "*")) == 1


def test_missing_table_is_backend_unavailable(dynamodb_client):
    broken = DynamoDBRegistry(dynamodb_client, connections_table="does-not-exist", subscriptions_table="nope")
    with pytest.raises(BackendUnavailable) as info:
        broken.get_connection("c1")
    assert info.value.code == "unavailable"


def test_unreachable_endpoint_is_backend_unavailable():
    from botocore.config import Config

    client = boto3.client(
        "dynamodb",
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=0.5, read_timeout=0.5),
    )
    with pytest.raises(BackendUnavailable):
        DynamoDBRegistry(client, connections_table="t", subscriptions_table="s").get_connection("c1")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("ProvisionedThroughputExceededException", Throttled),
        ("ThrottlingException", Throttled),
        ("RequestLimitExceeded", Throttled),
        ("ResourceNotFoundException", BackendUnavailable),
        ("InternalServerError", BackendUnavailable),
        ("AccessDeniedException", BackendUnavailable),
    ],
)
def test_client_errors_translated(code, expected):
    from botocore.exceptions import ClientError

    err = ClientError({"Error": {"Code": code, "Message": "x"}}, "Query")
    translated = translate_error(err)
    assert type(translated) is expected
    assert code in translated.message


def test_programming_errors_are_not_masked():
    from botocore.exceptions import ParamValidationError

    err = ParamValidationError(report="bad")
    assert translate_error(err) is err
    assert isinstance(translate_error(KeyError("x")), KeyError)


# ---- admission: atomic counters, constant cost ------------------------------------------------

import threading  # noqa: E402

from rtstream.errors import TooManyConnections  # noqa: E402
from rtstream.inmemory import ManualClock  # noqa: E402


def admit_concurrently(registry, connections, *, max_per_user, max_per_entity):
    """Admit every connection from its own thread, all released at once; (admitted ids, refused count)."""
    from helpers import SerialMotoServer

    with SerialMotoServer() as serial:  # DynamoDB's per-item atomicity, which moto's threaded server lacks
        client = boto3.client("dynamodb", endpoint_url=serial.endpoint, region_name="us-east-1")
        on_serial = DynamoDBRegistry(client, connections_table=registry.connections_table, subscriptions_table=registry.subscriptions_table)
        return _admit_concurrently(on_serial, connections, max_per_user=max_per_user, max_per_entity=max_per_entity)


def _admit_concurrently(registry, connections, *, max_per_user, max_per_entity):
    barrier = threading.Barrier(len(connections))
    admitted, refused, errors = [], [], []

    def one(c):
        barrier.wait()
        try:
            registry.admit_connection(c, max_per_user=max_per_user, max_per_entity=max_per_entity)
            admitted.append(c.connection_id)
        except TooManyConnections:
            refused.append(c.connection_id)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(c,)) for c in connections]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return admitted, refused


def records_of(dynamodb_client, table, attribute, value):
    return dynamodb_client.scan(TableName=table, Select="COUNT", FilterExpression="#a = :v",
                                ExpressionAttributeNames={"#a": attribute}, ExpressionAttributeValues={":v": {"S": value}})["Count"]


def test_fifty_simultaneous_connects_of_one_user_admit_exactly_the_limit(registry, dynamodb_client, tables):
    admitted, refused = admit_concurrently(registry, [conn(f"c{i:02d}") for i in range(50)], max_per_user=10, max_per_entity=1000)
    assert len(admitted) == 10 and len(refused) == 40
    assert records_of(dynamodb_client, tables["ConnectionsTable"], "userId", "u1") == 10
    assert registry.count_user_connections("u1", int(time.time())) == 10


def test_fifty_simultaneous_connects_into_one_entity_admit_exactly_the_limit(registry, dynamodb_client, tables):
    connections = [conn(f"c{i:02d}", user=f"user{i}") for i in range(50)]
    admitted, refused = admit_concurrently(registry, connections, max_per_user=10, max_per_entity=10)
    assert len(admitted) == 10 and len(refused) == 40
    assert records_of(dynamodb_client, tables["ConnectionsTable"], "entityId", "e1") == 10
    # the refused ones gave their user slots back: each of those users may connect elsewhere
    refused_user = next(c for c in connections if c.connection_id in refused).user_id
    registry.admit_connection(conn("other", user=refused_user, entity="e2"), max_per_user=1, max_per_entity=10)


def test_disconnect_releases_the_slots_exactly_once(registry):
    for i in range(3):
        registry.admit_connection(conn(f"c{i}"), max_per_user=3, max_per_entity=3)
    with pytest.raises(TooManyConnections, match="per user"):
        registry.admit_connection(conn("c3"), max_per_user=3, max_per_entity=10)
    registry.remove_connection("c0")
    registry.remove_connection("c0")  # a repeated $disconnect releases nothing more
    registry.admit_connection(conn("c3"), max_per_user=3, max_per_entity=3)
    with pytest.raises(TooManyConnections, match="per entity"):
        registry.admit_connection(conn("c4", user="u2"), max_per_user=3, max_per_entity=3)


def test_a_retried_connect_takes_no_second_slot(registry):
    registry.admit_connection(conn("c1"), max_per_user=2, max_per_entity=10)
    registry.admit_connection(conn("c1"), max_per_user=2, max_per_entity=10)  # same id: API Gateway retried
    registry.admit_connection(conn("c2"), max_per_user=2, max_per_entity=10)
    with pytest.raises(TooManyConnections):
        registry.admit_connection(conn("c3"), max_per_user=2, max_per_entity=10)


def test_expired_records_do_not_block_admission(registry):
    registry.add_connection(conn("lost", expires_at=int(time.time()) - 5))  # $disconnect never came, not swept yet
    registry.admit_connection(conn("c1"), max_per_user=1, max_per_entity=10)
    assert registry.get_connection("lost") is None


def test_admission_cost_does_not_depend_on_the_entity(registry, dynamodb_client):
    """Three single-item writes and no read, whether the entity holds 0 or 120 connections."""
    def calls_for(cid, user):
        seen = []
        with watching(dynamodb_client, "before-call.dynamodb", lambda model, **_: seen.append(xform_name(model.name))):
            registry.admit_connection(conn(cid, user=user), max_per_user=10, max_per_entity=1000)
        return seen

    empty = calls_for("first", "a")
    for i in range(120):
        registry.add_connection(conn(f"bulk{i}", user=f"bulk{i % 40}"))
    full = calls_for("last", "b")
    assert empty == full == ["update_item", "update_item", "put_item"]


def test_housekeeping_repairs_a_counter_left_by_a_killed_connect(dynamodb_client, tables):
    from rtstream.hygiene import Housekeeping

    clock = ManualClock(start_ms=int(time.time()) * 1000)
    reg = DynamoDBRegistry(dynamodb_client, connections_table=tables["ConnectionsTable"], subscriptions_table=tables["SubscriptionsTable"], clock=clock)
    now = clock.now_ms() // 1000
    reg.admit_connection(conn("c1", expires_at=now + 600), max_per_user=2, max_per_entity=10)
    # a connect killed after taking its slots, before writing its record
    reg._take_slot("#u#u1", conn("killed", expires_at=now + 600), 2)
    reg._take_slot("#e#e1", conn("killed", expires_at=now + 600), 10)
    with pytest.raises(TooManyConnections):
        reg.admit_connection(conn("c2", expires_at=now + 600), max_per_user=2, max_per_entity=10)
    reg.remove_connection("c1")
    assert Housekeeping(registry=reg, clock=clock).run().counters_corrected == 0  # nothing due yet
    clock.advance(reg.connection_ttl_seconds + 1)  # every connection the counters counted has expired
    report = Housekeeping(registry=reg, clock=clock).run()
    assert report.counters_corrected == 2 and report.errors == []
    now = clock.now_ms() // 1000
    reg.admit_connection(conn("c3", expires_at=now + 600), max_per_user=1, max_per_entity=1)
    # counters at 0 are deleted, so the table does not keep one per user ever seen
    assert "Item" not in dynamodb_client.get_item(TableName=tables["ConnectionsTable"], Key={"connectionId": {"S": "#u#nobody"}})


def test_sweep_reads_only_what_expired(dynamodb_client, tables, watch):
    """stale_connections queries the expired buckets of the byExpiry index: the
    live records are never read, and past buckets found empty are not read again."""
    clock = ManualClock(start_ms=int(time.time()) * 1000)
    reg = DynamoDBRegistry(dynamodb_client, connections_table=tables["ConnectionsTable"], subscriptions_table=tables["SubscriptionsTable"], clock=clock)
    now = clock.now_ms() // 1000
    for i in range(60):
        reg.add_connection(conn(f"live{i}", user=f"u{i}", expires_at=now + 3600 * (1 + i % 3)))
    for i in range(5):
        reg.add_connection(conn(f"stale{i}", user=f"s{i}", expires_at=now - 7200 - i))
        reg.put_subscription(sub(f"stale{i}", expires_at=now - 7200 - i))
    read, queries, scans = [], [], []
    watch(dynamodb_client, "before-parameter-build.dynamodb.Query", lambda params, **_: queries.append(dict(params)))
    watch(dynamodb_client, "after-call.dynamodb.Query", lambda parsed, **_: read.extend(parsed["Items"]))
    watch(dynamodb_client, "before-call.dynamodb.Scan", lambda params, **_: scans.append(params))
    assert sorted(reg.stale_connections(now, 100)) == [f"stale{i}" for i in range(5)]
    assert len(read) == 5 and all(q["IndexName"] == "byExpiry" for q in queries)
    assert sorted(s.connection_id for s in reg.stale_subscriptions(now, 100)) == [f"stale{i}" for i in range(5)]
    for cid in reg.stale_connections(now, 100):
        reg.remove_connection(cid)
    assert reg.stale_connections(now, 100) == []  # moves the cursor past the emptied buckets
    queries.clear()
    assert reg.stale_connections(now, 100) == []
    # from now on a run reads only the previous and the current hour's shards
    assert len(queries) == 2 * 4
    assert scans == []  # the sweep never scans
