"""RealtimeService rules, on the in-memory ports (and B's in-memory event log)."""

from __future__ import annotations

import json
import logging

import pytest

from rtstream import keys, streams
from rtstream.errors import TooManyConnections
from rtstream.inmemory.eventlog import InMemoryEventLog
from rtstream.inmemory.limits import InMemoryPresence, InMemoryRateLimiter, ManualClock
from rtstream.inmemory.registry import InMemoryRegistry
from rtstream.models import Filters, Principal
from rtstream.service import RealtimeService
from rtstream.settings import Settings

ALICE = Principal("alice", "entity-a", "user")
MALLORY = Principal("mallory", "entity-m", "user")
AGENT = Principal("bot-1", "entity-a", "agent")


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def settings():
    return Settings(jwt_secret="x", max_subscriptions=3, max_connections_per_user=2, max_connections_per_entity=3, rate_per_second=1, rate_burst=3, rate_violations_before_close=2)


@pytest.fixture
def registry(clock):
    return InMemoryRegistry(clock)


@pytest.fixture
def event_log(settings, clock):
    return InMemoryEventLog(settings, clock=clock)


@pytest.fixture
def service(registry, settings, event_log, clock):
    return RealtimeService(registry=registry, settings=settings, event_log=event_log, presence=InMemoryPresence(660, clock), clock=clock)


def send(service, cid, principal, frame):
    return service.handle_message(cid, principal, frame if isinstance(frame, str) else json.dumps(frame))


def entity_entries(event_log, entity):
    return [streams.decode(f) for _, f in event_log.entries_for(entity)]


# ---- connect / disconnect ----------------------------------------------------------


def test_connect_records_connection_with_ttl(service, registry, settings, clock):
    conn = service.connect(ALICE, "c1", source_ip="203.0.113.9")
    assert registry.get_connection("c1") == conn
    assert conn.connected_at_ms == clock.now_ms()
    assert conn.expires_at == clock.now_ms() // 1000 + settings.max_connection_seconds + 300
    assert conn.source_ip == "203.0.113.9" and conn.transport == "websocket"


def test_per_user_connection_limit(service, registry):
    service.connect(ALICE, "c1")
    service.connect(ALICE, "c2")
    with pytest.raises(TooManyConnections) as info:
        service.connect(ALICE, "c3")
    assert info.value.status == 429
    assert registry.get_connection("c3") is None
    service.disconnect("c1")
    service.connect(ALICE, "c3")  # a slot freed up


def test_per_entity_connection_limit(service):
    service.connect(Principal("u1", "entity-a"), "c1")
    service.connect(Principal("u2", "entity-a"), "c2")
    service.connect(Principal("u3", "entity-a"), "c3")
    with pytest.raises(TooManyConnections):
        service.connect(Principal("u4", "entity-a"), "c4")
    service.connect(Principal("u4", "entity-b"), "c5")  # other entities unaffected


def test_expired_connections_do_not_count(registry, settings, event_log):
    clock = ManualClock()
    registry = InMemoryRegistry(clock)
    svc = RealtimeService(registry=registry, settings=settings, event_log=event_log, clock=clock)
    svc.connect(ALICE, "c1")
    svc.connect(ALICE, "c2")
    # far past the TTL: stale records (missed $disconnect) never block a user
    clock.advance(settings.max_connection_seconds + 301)
    svc.connect(ALICE, "c3")


def test_disconnect_removes_connection_and_subscriptions(service, registry, event_log):
    service.connect(ALICE, "c1")
    send(service, "c1", ALICE, {"type": "subscribe", "topic": "transactions.new"})
    send(service, "c1", ALICE, {"type": "subscribe", "topic": "*"})
    removed = service.disconnect("c1")
    assert removed.connection_id == "c1"
    assert registry.get_connection("c1") is None
    assert registry.connection_subscriptions("c1") == []
    assert registry.subscribers("entity-a", "transactions.new") == []
    last = [e for e in entity_entries(event_log, "entity-a") if isinstance(e, streams.SubscriptionsChanged)][-1]
    assert set(last.topics) == {"transactions.new", "*"} and last.connection_id == "c1"


def test_disconnect_unknown_connection_is_harmless(service):
    assert service.disconnect("nope") is None


# ---- subscribe ------------------------------------------------------------------------


def test_subscribe_replies_subscribed_and_notifies_fanout(service, registry, event_log):
    service.connect(ALICE, "c1")
    reply = send(service, "c1", ALICE, {"type": "subscribe", "topic": "transactions.new", "filters": {"minAmount": 5}})
    assert reply == [{"type": "subscribed", "topic": "transactions.new", "cursor": "0-0"}]
    (sub,) = registry.subscribers("entity-a", "transactions.new")
    assert (sub.connection_id, sub.entity_id, sub.user_id, sub.filters, sub.pending_replay) == ("c1", "entity-a", "alice", Filters(min_amount=5.0), None)
    assert sub.expires_at == registry.get_connection("c1").expires_at
    changed = entity_entries(event_log, "entity-a")[-1]
    assert changed == streams.SubscriptionsChanged("entity-a", ("transactions.new",), "c1")


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "subscribe", "topic": "transactions.new"},
        {"type": "subscribe", "topic": "*", "filters": {"types": ["transactions.new"]}},
        {"type": "subscribe", "topic": "presence"},
        {"type": "subscribe", "topic": "transactions.new", "entityId": "entity-m"},
        {"type": "subscribe", "topic": "transactions.new", "entity": "entity-m"},
        {"type": "subscribe", "topic": "entity-m#transactions.new"},
        {"type": "subscribe", "topic": "transactions.new:entity:entity-m"},
        {"type": "subscribe", "topic": "transactions.new", "filters": {"entity_id": "entity-m"}},
        {"type": "subscribe", "topic": "transactions.new", "filters": {"sources": ["entity-m"]}},
        {"type": "subscribe", "topic": "transactions.new", "since": "0-0"},
    ],
)
def test_a_user_can_never_subscribe_to_another_entitys_events(service, registry, frame):
    """Whatever the frame says, the subscription's entity is the token's."""
    service.connect(ALICE, "c1")
    service.connect(MALLORY, "m1")
    send(service, "c1", ALICE, frame)
    for topic in ("transactions.new", "*", "presence", "balance.updated"):
        assert registry.subscribers("entity-m", topic) == []
    for sub in registry.connection_subscriptions("c1"):
        assert sub.entity_id == "entity-a"


def test_resubscribe_replaces_filters_without_counting_twice(service, registry):
    service.connect(ALICE, "c1")
    for n in range(5):
        assert send(service, "c1", ALICE, {"type": "subscribe", "topic": "*", "filters": {"minAmount": n}})[0]["type"] == "subscribed"
    (sub,) = registry.connection_subscriptions("c1")
    assert sub.filters.min_amount == 4.0


def test_subscription_limit_per_connection(service, registry):
    service.connect(ALICE, "c1")
    for topic in ("transactions.new", "balance.updated", "sync.completed"):
        assert send(service, "c1", ALICE, {"type": "subscribe", "topic": topic})[0]["type"] == "subscribed"
    reply = send(service, "c1", ALICE, {"type": "subscribe", "topic": "*"})
    assert reply[0]["type"] == "error" and reply[0]["code"] == "too_many_subscriptions"
    assert len(registry.connection_subscriptions("c1")) == 3
    # the connection stays usable
    assert send(service, "c1", ALICE, {"type": "ping"})[0]["type"] == "pong"


def test_subscribe_with_since_queues_replay_and_defers_subscribed(service, registry, event_log):
    service.connect(ALICE, "c1")
    first = event_log.append("entity-a", "transactions.new", {"transactionId": "t1", "amount": 1, "merchant": "m"}, "test")
    reply = send(service, "c1", ALICE, {"type": "subscribe", "topic": "transactions.new", "since": first.id, "filters": {"sources": ["test"]}})
    assert reply == []  # the fan-out answers `subscribed` + the replay
    (sub,) = registry.subscribers("entity-a", "transactions.new")
    assert sub.pending_replay and len(sub.pending_replay) == 32
    # on the partition's replay lane, not among its live entries
    req = streams.decode(event_log.replay_entries(keys.partition_of("entity-a", event_log.settings))[-1][1])
    assert isinstance(req, streams.ReplayRequest)
    assert (req.marker, req.connection_id, req.entity_id, req.topic, req.since, req.until) == (sub.pending_replay, "c1", "entity-a", "transactions.new", first.id, first.id)
    assert req.filters == Filters(sources=("test",))


def test_subscribe_with_rewind_queues_a_rewind_on_the_replay_lane(service, registry, event_log):
    service.connect(ALICE, "c1")
    last = event_log.append("entity-a", "balance.updated", {"accountId": "a", "balance": 1, "currency": "EUR"}, "test")
    reply = service.handle("c1", ALICE, json.dumps({"type": "subscribe", "topic": "balance.updated", "rewind": 20}))
    assert reply.frames == [] and reply.resumed is False  # a fresh start, not a resume
    (sub,) = registry.subscribers("entity-a", "balance.updated")
    assert sub.pending_replay  # live events wait for the rewind (the seam)
    req = streams.decode(event_log.replay_entries(keys.partition_of("entity-a", event_log.settings))[-1][1])
    assert isinstance(req, streams.ReplayRequest)
    assert (req.marker, req.connection_id, req.topic, req.since, req.rewind, req.until) == (sub.pending_replay, "c1", "balance.updated", "", "20", last.id)


@pytest.mark.parametrize("extra", [{"rewind": 0}, {"rewind": 101}, {"rewind": "5"}, {"rewind": True}, {"rewind": 2, "since": "1-0"}])
def test_bad_rewind_is_refused_and_subscribes_nothing(service, registry, event_log, extra):
    service.connect(ALICE, "c1")
    reply = send(service, "c1", ALICE, {"type": "subscribe", "topic": "*", **extra})
    assert [f["code"] for f in reply] == ["invalid_message"]
    assert registry.connection_subscriptions("c1") == []
    assert event_log.replay_entries(keys.partition_of("entity-a", event_log.settings)) == []


def test_since_without_event_log_is_an_error(registry, settings):
    svc = RealtimeService(registry=registry, settings=settings)
    svc.connect(ALICE, "c1")
    reply = send(svc, "c1", ALICE, {"type": "subscribe", "topic": "*", "since": "1-0"})
    assert reply[0]["type"] == "error" and reply[0]["code"] == "invalid_message"
    assert registry.connection_subscriptions("c1") == []
    assert send(svc, "c1", ALICE, {"type": "subscribe", "topic": "*"}) == [{"type": "subscribed", "topic": "*"}]


def test_failed_replay_request_leaves_no_pending_subscription(registry, settings, clock):
    from rtstream.errors import BackendUnavailable

    class BrokenLog(InMemoryEventLog):
        def request_replay(self, subscription, since, rewind=0):
            raise BackendUnavailable("redis down")

    svc = RealtimeService(registry=registry, settings=settings, event_log=BrokenLog(settings, clock=clock), clock=clock)
    svc.connect(ALICE, "c1")
    reply = send(svc, "c1", ALICE, {"type": "subscribe", "topic": "*", "since": "1-0"})
    assert reply[0]["code"] == "unavailable"
    assert registry.connection_subscriptions("c1") == []
    reply = send(svc, "c1", ALICE, {"type": "subscribe", "topic": "*", "rewind": 5})
    assert reply[0]["code"] == "unavailable"
    assert registry.connection_subscriptions("c1") == []


# ---- unsubscribe, ping, presence -------------------------------------------------------


def test_unsubscribe(service, registry, event_log):
    service.connect(ALICE, "c1")
    send(service, "c1", ALICE, {"type": "subscribe", "topic": "balance.updated"})
    assert send(service, "c1", ALICE, {"type": "unsubscribe", "topic": "balance.updated"}) == [{"type": "unsubscribed", "topic": "balance.updated"}]
    assert registry.subscribers("entity-a", "balance.updated") == []
    assert entity_entries(event_log, "entity-a")[-1] == streams.SubscriptionsChanged("entity-a", ("balance.updated",), "c1")
    again = send(service, "c1", ALICE, {"type": "unsubscribe", "topic": "balance.updated"})
    assert again[0]["code"] == "not_subscribed"


def test_unsubscribe_cannot_touch_another_entity(service, registry):
    service.connect(ALICE, "c1")
    service.connect(MALLORY, "m1")
    send(service, "m1", MALLORY, {"type": "subscribe", "topic": "*"})
    # even with mallory's connection id, alice's principal only addresses entity-a
    assert send(service, "m1", ALICE, {"type": "unsubscribe", "topic": "*"})[0]["code"] == "not_subscribed"
    assert len(registry.subscribers("entity-m", "*")) == 1


def test_ping(service, clock):
    service.connect(ALICE, "c1")
    assert send(service, "c1", ALICE, {"type": "ping"}) == [{"type": "pong", "timestamp": clock.now_ms(), "cursor": "0-0"}]


def test_pong_carries_the_entitys_newest_event_id(service, event_log):
    """A client behind this cursor for long knows its push path stalled."""
    service.connect(ALICE, "c1")
    event_log.append("entity-a", "transactions.new", {"amount": 1}, "tests")
    newest = event_log.append("entity-a", "sync.completed", {"source": "plaid"}, "tests")
    event_log.append("entity-m", "sync.completed", {"source": "plaid"}, "tests")  # another entity's is not ours
    assert send(service, "c1", ALICE, {"type": "ping"})[0]["cursor"] == newest.id


def test_presence_lists_the_callers_entity_only(service):
    service.connect(ALICE, "c1")
    service.connect(ALICE, "c2")
    service.connect(MALLORY, "m1")
    assert send(service, "c1", ALICE, {"type": "presence"}) == [
        {"type": "presence", "users": [{"userId": "alice", "connections": 2, "transports": ["websocket"]}]}
    ]
    service.disconnect("c2")
    assert send(service, "c1", ALICE, {"type": "presence"})[0]["users"][0]["connections"] == 1


def test_presence_without_store_is_empty(registry, settings):
    svc = RealtimeService(registry=registry, settings=settings)
    assert send(svc, "c1", ALICE, {"type": "presence"}) == [{"type": "presence", "users": []}]


def test_presence_events_published_on_join_and_leave(service, event_log):
    service.connect(ALICE, "c1")
    service.disconnect("c1")
    events = [e for e in entity_entries(event_log, "entity-a") if getattr(e, "topic", None) == "presence"]
    assert [e.data for e in events] == [
        {"userId": "alice", "state": "online", "connections": 1, "transports": ["websocket"]},
        {"userId": "alice", "state": "offline", "connections": 0, "transports": []},
    ]


# ---- agents -------------------------------------------------------------------------------


def test_agent_may_subscribe_unsubscribe_ping(service):
    service.connect(AGENT, "a1")
    assert send(service, "a1", AGENT, {"type": "subscribe", "topic": "agent.action.completed"})[0]["type"] == "subscribed"
    assert send(service, "a1", AGENT, {"type": "unsubscribe", "topic": "agent.action.completed"})[0]["type"] == "unsubscribed"
    assert send(service, "a1", AGENT, {"type": "ping"})[0]["type"] == "pong"


def test_agent_may_not_query_presence(service, caplog):
    service.connect(AGENT, "a1")
    with caplog.at_level(logging.WARNING, logger="rtstream.security"):
        reply = send(service, "a1", AGENT, {"type": "presence"})
    assert reply[0]["code"] == "forbidden"
    assert any("agent bot-1" in r.getMessage() for r in caplog.records)


def test_agent_excessive_subscriptions_logged_as_security_event(service, caplog):
    service.connect(AGENT, "a1")
    for topic in ("transactions.new", "balance.updated", "sync.completed"):
        send(service, "a1", AGENT, {"type": "subscribe", "topic": topic})
    with caplog.at_level(logging.WARNING, logger="rtstream.security"):
        reply = send(service, "a1", AGENT, {"type": "subscribe", "topic": "*"})
    assert reply[0]["code"] == "too_many_subscriptions"
    assert any("excessive subscriptions by agent" in r.getMessage() for r in caplog.records)


# ---- errors keep the connection usable; rate limiting --------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "invalid_message"),
        ('{"type":"nope"}', "invalid_message"),
        ('{"type":"subscribe","topic":"nope"}', "unknown_topic"),
        ('{"type":"ping","x":1}', "invalid_message"),
        ('{"type":"subscribe","topic":"*","filters":{"minAmount":true}}', "invalid_message"),
    ],
)
def test_bad_frames_answer_error_and_connection_stays_usable(service, raw, code):
    service.connect(ALICE, "c1")
    reply = send(service, "c1", ALICE, raw)
    assert reply == [{"type": "error", "code": code, "message": reply[0]["message"]}]
    assert send(service, "c1", ALICE, {"type": "subscribe", "topic": "*"}) == [{"type": "subscribed", "topic": "*", "cursor": "0-0"}]


def test_oversize_frame(service, settings):
    service.connect(ALICE, "c1")
    big = json.dumps({"type": "ping", "pad": "x" * settings.max_frame_bytes})
    assert send(service, "c1", ALICE, big)[0]["code"] == "message_too_large"


def test_rate_limit_then_close(registry, settings, clock):
    svc = RealtimeService(registry=registry, settings=settings, rate_limiter=InMemoryRateLimiter(clock), clock=clock)
    svc.connect(ALICE, "c1")
    ping = json.dumps({"type": "ping"})
    assert [svc.handle("c1", ALICE, ping).frames[0]["type"] for _ in range(3)] == ["pong"] * 3  # burst 3
    limited = svc.handle("c1", ALICE, ping)
    assert limited.frames[0]["code"] == "rate_limited" and not limited.close
    closing = svc.handle("c1", ALICE, ping)  # 2nd refusal (rate_violations_before_close=2): close
    assert closing.close and [f["code"] for f in closing.frames] == ["policy_violation"]
    clock.advance(1.0)  # refilled one token
    assert svc.handle("c1", ALICE, ping).frames[0]["type"] == "pong"


def test_rate_limit_is_per_connection(registry, settings, clock):
    svc = RealtimeService(registry=registry, settings=settings, rate_limiter=InMemoryRateLimiter(clock), clock=clock)
    for _ in range(4):
        svc.handle_message("c1", ALICE, '{"type":"ping"}')
    # the 2nd refusal closes (rate_violations_before_close=2), with the reason as a coded frame
    assert svc.handle_message("c1", ALICE, '{"type":"ping"}')[0]["code"] == "policy_violation"
    assert svc.handle_message("c2", ALICE, '{"type":"ping"}')[0]["type"] == "pong"


# ---- backend outages: the connection keeps working where it safely can -----------------------


class _Down:
    """A port whose backend is down: every call raises the adapters' coded error."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            from rtstream.errors import BackendUnavailable

            raise BackendUnavailable("redis: ConnectionError")

        return fail


def test_rate_limiter_outage_fails_open(registry, settings, clock):
    svc = RealtimeService(registry=registry, settings=settings, rate_limiter=_Down(), clock=clock)
    assert [svc.handle_message("c1", ALICE, '{"type":"ping"}')[0]["type"] for _ in range(10)] == ["pong"] * 10


def test_presence_outage_never_refuses_connect_or_disconnect(registry, settings, event_log, clock):
    svc = RealtimeService(registry=registry, settings=settings, event_log=event_log, presence=_Down(), clock=clock)
    svc.connect(ALICE, "c1")
    assert registry.get_connection("c1") is not None
    assert send(svc, "c1", ALICE, {"type": "ping"})[0]["type"] == "pong"
    assert send(svc, "c1", ALICE, {"type": "presence"})[0]["code"] == "unavailable"  # asked for it: told why
    assert svc.disconnect("c1").connection_id == "c1"
    assert registry.get_connection("c1") is None


def test_event_log_outage_keeps_subscribe_and_disconnect_working(registry, settings, clock):
    svc = RealtimeService(registry=registry, settings=settings, event_log=_Down(), clock=clock)
    svc.connect(ALICE, "c1")
    assert send(svc, "c1", ALICE, {"type": "subscribe", "topic": "*"}) == [{"type": "subscribed", "topic": "*"}]
    assert send(svc, "c1", ALICE, {"type": "subscribe", "topic": "presence", "since": "1-0"})[0]["code"] == "unavailable"
    assert [s.topic for s in registry.connection_subscriptions("c1")] == ["*"]  # no orphan pending subscription
    svc.disconnect("c1")
    assert registry.connection_subscriptions("c1") == []


def test_registry_outage_answers_error_frame(settings, clock):
    svc = RealtimeService(registry=_Down(), settings=settings, clock=clock)
    assert send(svc, "c1", ALICE, {"type": "subscribe", "topic": "*"})[0]["code"] == "unavailable"
    assert send(svc, "c1", ALICE, {"type": "ping"})[0]["type"] == "pong"


# ---- the entity rule holds on the DynamoDB registry too ------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "subscribe", "topic": "transactions.new", "entityId": "entity-m"},
        {"type": "subscribe", "topic": "entity-m#transactions.new"},
        {"type": "subscribe", "topic": "*"},
        {"type": "subscribe", "topic": "presence", "filters": {"sources": ["entity-m"]}},
    ],
)
def test_entity_rule_on_dynamodb(dynamodb_client, tables, settings, clock, frame):
    from rtstream.adapters.dynamodb import DynamoDBRegistry

    registry = DynamoDBRegistry(dynamodb_client, connections_table=tables["ConnectionsTable"], subscriptions_table=tables["SubscriptionsTable"])
    svc = RealtimeService(registry=registry, settings=settings)
    svc.connect(ALICE, "c1")
    svc.connect(MALLORY, "m1")
    send(svc, "c1", ALICE, frame)
    for topic in ("transactions.new", "*", "presence"):
        assert registry.subscribers("entity-m", topic) == []
    assert all(s.entity_id == "entity-a" for s in registry.connection_subscriptions("c1"))


def test_limits_on_dynamodb(dynamodb_client, tables, settings):
    from rtstream.adapters.dynamodb import DynamoDBRegistry

    registry = DynamoDBRegistry(dynamodb_client, connections_table=tables["ConnectionsTable"], subscriptions_table=tables["SubscriptionsTable"])
    svc = RealtimeService(registry=registry, settings=settings)
    svc.connect(ALICE, "c1")
    svc.connect(ALICE, "c2")
    with pytest.raises(TooManyConnections):
        svc.connect(ALICE, "c3")
    for topic in ("transactions.new", "balance.updated", "sync.completed"):
        assert send(svc, "c1", ALICE, {"type": "subscribe", "topic": topic})[0]["type"] == "subscribed"
    assert send(svc, "c1", ALICE, {"type": "subscribe", "topic": "*"})[0]["code"] == "too_many_subscriptions"
    assert send(svc, "c1", ALICE, {"type": "subscribe", "topic": "balance.updated", "filters": {"minAmount": 1}})[0]["type"] == "subscribed"


def test_disconnect_clears_presence_even_without_a_record(service, registry, event_log):
    service.connect(ALICE, "c1")
    registry.remove_connection("c1")  # e.g. the record expired first
    assert service.disconnect("c1", principal=ALICE) is None
    assert send(service, "c2", ALICE, {"type": "presence"}) == [{"type": "presence", "users": []}]
    offline = [e for e in entity_entries(event_log, "entity-a") if getattr(e, "topic", None) == "presence"][-1]
    assert offline.data["state"] == "offline"


# ---- privileged actions, security events, reconnection figure ----------------------------


@pytest.mark.parametrize("action", ["publish", "broadcast", "disconnect"])
@pytest.mark.parametrize("who", [ALICE, AGENT], ids=["user", "agent"])
def test_publish_broadcast_disconnect_are_forbidden_for_every_role(service, event_log, caplog, action, who):
    service.connect(who, "c1")
    frame = {"type": action, "topic": "transactions.new", "data": {"amount": 1}, "connectionId": "victim"}
    with caplog.at_level(logging.WARNING, logger="rtstream.security"):
        reply = service.handle("c1", who, json.dumps(frame))
    assert [f["code"] for f in reply.frames] == ["forbidden"]
    assert not reply.close
    # nothing was published, nobody was disconnected
    assert not [e for e in entity_entries(event_log, who.entity_id) if getattr(e, "topic", None) == "transactions.new"]
    security = [r.getMessage() for r in caplog.records if r.name == "rtstream.security"]
    if who.is_agent:
        assert reply.security_event == "agent_forbidden_operation"
        assert security and action in security[0] and "bot-1" in security[0]
    else:
        assert reply.security_event is None and not security
    # the connection stays usable
    assert send(service, "c1", who, {"type": "ping"})[0]["type"] == "pong"


def test_agent_excessive_subscriptions_flag_a_security_event(service):
    service.connect(AGENT, "a1")
    for topic in ("transactions.new", "balance.updated", "sync.completed"):
        assert service.handle("a1", AGENT, json.dumps({"type": "subscribe", "topic": topic})).security_event is None
    reply = service.handle("a1", AGENT, json.dumps({"type": "subscribe", "topic": "*"}))
    assert reply.frames[0]["code"] == "too_many_subscriptions" and reply.security_event == "agent_excessive_subscriptions"
    # a user hitting the same limit is refused, but that is not a security event
    service.connect(ALICE, "u1")
    for topic in ("transactions.new", "balance.updated", "sync.completed"):
        service.handle("u1", ALICE, json.dumps({"type": "subscribe", "topic": topic}))
    reply = service.handle("u1", ALICE, json.dumps({"type": "subscribe", "topic": "*"}))
    assert reply.frames[0]["code"] == "too_many_subscriptions" and reply.security_event is None


def test_first_subscribe_tells_resume_from_fresh(service, event_log):
    event = event_log.append("entity-a", "transactions.new", {"transactionId": "t1", "amount": 1.0, "merchant": "m"}, "test")
    service.connect(ALICE, "fresh")
    first = service.handle("fresh", ALICE, json.dumps({"type": "subscribe", "topic": "transactions.new"}))
    assert first.resumed is False
    assert service.handle("fresh", ALICE, json.dumps({"type": "subscribe", "topic": "balance.updated"})).resumed is None
    service.connect(ALICE, "back")
    resumed = service.handle("back", ALICE, json.dumps({"type": "subscribe", "topic": "*", "since": event.id}))
    assert resumed.resumed is True
    # later subscribes of the same connection, even after unsubscribing everything, are not counted again
    service.handle("back", ALICE, json.dumps({"type": "unsubscribe", "topic": "*"}))
    assert service.handle("back", ALICE, json.dumps({"type": "subscribe", "topic": "*", "since": event.id})).resumed is None
    # a refused subscribe is not the connection's first
    service.disconnect("fresh")
    service.connect(ALICE, "other")
    assert service.handle("other", ALICE, json.dumps({"type": "subscribe", "topic": "nope"})).resumed is None
    assert service.handle("other", ALICE, json.dumps({"type": "subscribe", "topic": "*"})).resumed is False


def test_subscribed_carries_the_cursor_read_before_the_subscription():
    """A client that receives nothing before it reconnects can still resume: the
    `subscribed` reply names the entity's newest event at subscribe time."""
    from rtstream.inmemory.eventlog import InMemoryEventLog
    from rtstream.inmemory.registry import InMemoryRegistry
    from rtstream.models import Principal
    from rtstream.service import RealtimeService
    from rtstream.settings import Settings

    settings = Settings()
    log = InMemoryEventLog(settings)
    service = RealtimeService(registry=InMemoryRegistry(), settings=settings, event_log=log)
    alice = Principal("alice", "acme")
    service.connect(alice, "c1")
    # no history yet: "0-0", from which a resume replays everything (issue 11)
    assert service.handle_message("c1", alice, '{"type":"subscribe","topic":"*"}') == [{"type": "subscribed", "topic": "*", "cursor": "0-0"}]
    first = log.append("acme", "sync.completed", {"source": "bank", "recordsUpdated": 1}, "s").id
    log.append("other", "sync.completed", {"source": "bank", "recordsUpdated": 2}, "s")
    reply = service.handle_message("c1", alice, '{"type":"subscribe","topic":"balance.updated"}')
    assert reply == [{"type": "subscribed", "topic": "balance.updated", "cursor": first}]
