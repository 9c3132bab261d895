"""In-memory ports behave like the real ones."""

from __future__ import annotations

import time
from dataclasses import replace

from rtstream.inmemory import InMemoryPresence, InMemoryRateLimiter, InMemoryRegistry, ManualClock
from rtstream.models import Connection, Filters, Principal, Subscription
from rtstream.ports import ConnectionRegistry, PresenceStore, RateLimiter


def conn(cid, user="u1", entity="e1", expires_at=None):
    return Connection(cid, Principal(user, entity), expires_at=int(time.time()) + 3600 if expires_at is None else expires_at)


def sub(cid, entity="e1", topic="*", **kw):
    return Subscription(cid, entity, topic, user_id="u1", expires_at=int(time.time()) + 3600, **kw)


def test_ports_satisfied():
    assert isinstance(InMemoryRegistry(), ConnectionRegistry)
    assert isinstance(InMemoryRateLimiter(), RateLimiter)
    assert isinstance(InMemoryPresence(), PresenceStore)


def test_registry_connections_and_counts():
    r = InMemoryRegistry()
    now = int(time.time())
    r.add_connection(conn("c1"))
    r.add_connection(conn("c2", entity="e2"))
    r.add_connection(conn("c3", expires_at=now - 1))
    assert r.get_connection("c1").user_id == "u1"
    assert r.get_connection("c3") is None  # expired
    assert r.count_user_connections("u1", now) == 2
    assert r.count_entity_connections("e1", now) == 1
    assert r.remove_connection("c1").connection_id == "c1"
    assert r.remove_connection("c1") is None


def test_registry_subscriptions_by_channel():
    r = InMemoryRegistry()
    r.put_subscription(sub("c1", topic="transactions.new"))
    r.put_subscription(sub("c2", topic="transactions.new"))
    r.put_subscription(sub("c1", topic="*"))
    r.put_subscription(sub("c3", entity="e2", topic="transactions.new"))
    assert {s.connection_id for s in r.subscribers("e1", "transactions.new")} == {"c1", "c2"}
    assert [s.connection_id for s in r.subscribers("e1", "*")] == ["c1"]
    assert {s.topic for s in r.connection_subscriptions("c1")} == {"transactions.new", "*"}
    assert r.remove_subscription("c1", "e1", "*") is True
    assert r.remove_subscription("c1", "e1", "*") is False
    r.add_connection(conn("c1"))
    r.remove_connection("c1")
    assert [s.connection_id for s in r.subscribers("e1", "transactions.new")] == ["c2"]


def test_registry_expired_subscriptions_invisible():
    r = InMemoryRegistry()
    r.put_subscription(replace(sub("c1"), expires_at=int(time.time()) - 5))
    assert r.subscribers("e1", "*") == []
    assert r.connection_subscriptions("c1") == []


def test_clear_pending_replay_only_with_matching_marker():
    r = InMemoryRegistry()
    r.put_subscription(sub("c1", pending_replay="m1", filters=Filters(min_amount=1)))
    r.clear_pending_replay("c1", "e1", "*", "other")
    assert r.subscribers("e1", "*")[0].pending_replay == "m1"
    r.clear_pending_replay("c1", "e1", "*", "m1")
    (s,) = r.subscribers("e1", "*")
    assert s.pending_replay is None and s.filters == Filters(min_amount=1)
    r.clear_pending_replay("nope", "e1", "*", "m1")  # absent: no error


def test_token_bucket():
    clock = ManualClock()
    rl = InMemoryRateLimiter(clock)
    assert [rl.allow("k", 2, 3) for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)  # +1 token at 2/s
    assert rl.allow("k", 2, 3) is True
    assert rl.allow("k", 2, 3) is False
    assert rl.allow("other", 2, 3) is True
    clock.advance(100)  # never more than burst
    assert [rl.allow("k", 2, 3) for _ in range(4)] == [True, True, True, False]


def test_presence_ttl_and_grouping():
    clock = ManualClock()
    p = InMemoryPresence(ttl_seconds=10, clock=clock)
    p.heartbeat("e1", "u1", "c1", "websocket")
    p.heartbeat("e1", "u1", "c2", "sse")
    p.heartbeat("e1", "u2", "c3", "websocket")
    p.heartbeat("e2", "u9", "c9", "websocket")
    assert p.online("e1") == [
        {"userId": "u1", "connections": 2, "transports": ["sse", "websocket"]},
        {"userId": "u2", "connections": 1, "transports": ["websocket"]},
    ]
    clock.advance(6)
    p.heartbeat("e1", "u2", "c3", "websocket")
    clock.advance(6)  # u1's heartbeats are 12 s old
    assert p.online("e1") == [{"userId": "u2", "connections": 1, "transports": ["websocket"]}]
    # the leave also reports u1, whose heartbeats expired
    assert p.leave("e1", "u2", "c3", "websocket") == [
        {"userId": "u1", "state": "offline", "connections": 0, "transports": []},
        {"userId": "u2", "state": "offline", "connections": 0, "transports": []},
    ]
    assert p.online("e1") == []


def test_presence_heartbeat_returns_join_and_expiry_changes():
    clock = ManualClock()
    p = InMemoryPresence(ttl_seconds=10, clock=clock)
    assert p.heartbeat("e1", "u1", "c1", "websocket") == [{"userId": "u1", "state": "online", "connections": 1, "transports": ["websocket"]}]
    assert p.heartbeat("e1", "u1", "c1", "websocket") == []  # nothing changed
    clock.advance(11)
    # u1 never said goodbye: the next change in the entity reports them offline
    assert p.heartbeat("e1", "u2", "c2", "sse") == [
        {"userId": "u1", "state": "offline", "connections": 0, "transports": []},
        {"userId": "u2", "state": "online", "connections": 1, "transports": ["sse"]},
    ]


def test_violation_window():
    clock = ManualClock()
    rl = InMemoryRateLimiter(clock)
    assert [rl.record_violation("c1") for _ in range(3)] == [1, 2, 3]
    assert rl.record_violation("c2") == 1
    clock.advance(61)
    assert rl.record_violation("c1") == 1


def _admit_from_threads(registry, connections, **limits):
    import threading

    from rtstream.errors import TooManyConnections

    barrier = threading.Barrier(len(connections))
    admitted, refused = [], []

    def one(c):
        barrier.wait()
        try:
            registry.admit_connection(c, **limits)
            admitted.append(c.connection_id)
        except TooManyConnections:
            refused.append(c.connection_id)

    threads = [threading.Thread(target=one, args=(c,)) for c in connections]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return admitted, refused


def test_registry_admits_exactly_the_user_limit_under_concurrency():
    r = InMemoryRegistry()
    admitted, refused = _admit_from_threads(r, [conn(f"c{i}") for i in range(50)], max_per_user=10, max_per_entity=1000)
    assert len(admitted) == 10 and len(refused) == 40
    assert r.count_user_connections("u1", int(time.time())) == 10 == r.slots(user_id="u1")


def test_registry_admits_exactly_the_entity_limit_under_concurrency():
    r = InMemoryRegistry()
    admitted, refused = _admit_from_threads(r, [conn(f"c{i}", user=f"user{i}") for i in range(50)], max_per_user=10, max_per_entity=10)
    assert len(admitted) == 10 and len(refused) == 40
    assert r.slots(entity_id="e1") == 10 and sum(r.slots(user_id=f"user{i}") for i in range(50)) == 10


def test_registry_releases_slots_on_remove_and_ignores_retries():
    from rtstream.errors import TooManyConnections

    r = InMemoryRegistry()
    r.admit_connection(conn("c1"), max_per_user=1, max_per_entity=5)
    r.admit_connection(conn("c1"), max_per_user=1, max_per_entity=5)  # retried connect: no second slot
    try:
        r.admit_connection(conn("c2"), max_per_user=1, max_per_entity=5)
        raise AssertionError("limit not enforced")
    except TooManyConnections:
        pass
    r.remove_connection("c1")
    r.remove_connection("c1")
    assert r.slots(user_id="u1") == 0
    r.admit_connection(conn("c2"), max_per_user=1, max_per_entity=5)
