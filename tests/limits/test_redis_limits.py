"""Rate limiting and presence against a real Redis: shared state that every
Lambda invocation and container sees alike."""

import time

import pytest
import redis

from rtstream import keys
from rtstream.adapters.redis_limits import RedisPresence, RedisRateLimiter
from rtstream.errors import BackendUnavailable
from rtstream.settings import Settings


def test_bucket_allows_burst_then_refuses_then_refills(redis_client):
    limiter = RedisRateLimiter(redis_client)
    allowed = [limiter.allow("conn-a", 10, 20) for _ in range(25)]
    assert allowed[:20] == [True] * 20
    assert allowed[20:] == [False] * 5
    time.sleep(0.35)  # 10/s refills ~3 tokens
    refilled = [limiter.allow("conn-a", 10, 20) for _ in range(6)]
    assert 2 <= sum(refilled) <= 4


def test_buckets_are_per_connection_and_expire(redis_client):
    limiter = RedisRateLimiter(redis_client)
    for _ in range(3):
        limiter.allow("conn-a", 1, 3)
    assert limiter.allow("conn-a", 1, 3) is False
    assert limiter.allow("conn-b", 1, 3) is True
    ttl = redis_client.ttl(keys.rate_bucket("conn-a").name)
    assert 0 < ttl <= keys.rate_bucket("conn-a").ttl_seconds


def test_two_clients_share_one_bucket(redis_url, redis_client):
    """Two Lambda invocations (two clients) draw from the same bucket."""
    first = RedisRateLimiter(redis.Redis.from_url(redis_url))
    second = RedisRateLimiter(redis.Redis.from_url(redis_url))
    results = [(first if i % 2 else second).allow("conn-x", 0.001, 4) for i in range(8)]
    assert sum(results) == 4


def test_violations_count_up(redis_client):
    limiter = RedisRateLimiter(redis_client)
    assert [limiter.record_violation("c1") for _ in range(3)] == [1, 2, 3]
    assert limiter.record_violation("c2") == 1


def test_presence_join_second_device_and_leave(redis_client):
    presence = RedisPresence(redis_client, Settings())
    assert presence.heartbeat("e1", "alice", "c1", "websocket") == [
        {"userId": "alice", "state": "online", "connections": 1, "transports": ["websocket"]}
    ]
    # a repeated heartbeat changes nothing
    assert presence.heartbeat("e1", "alice", "c1", "websocket") == []
    assert presence.heartbeat("e1", "alice", "c2", "sse") == [
        {"userId": "alice", "state": "online", "connections": 2, "transports": ["sse", "websocket"]}
    ]
    presence.heartbeat("e1", "bob", "c3", "websocket")
    assert presence.online("e1") == [
        {"userId": "alice", "connections": 2, "transports": ["sse", "websocket"]},
        {"userId": "bob", "connections": 1, "transports": ["websocket"]},
    ]
    assert presence.online("e2") == []
    presence.leave("e1", "alice", "c1", "websocket")
    assert presence.leave("e1", "alice", "c2", "sse") == [
        {"userId": "alice", "state": "offline", "connections": 0, "transports": []}
    ]
    assert [u["userId"] for u in presence.online("e1")] == ["bob"]


def test_presence_expires_connections_whose_disconnect_never_came(redis_client):
    presence = RedisPresence(redis_client, Settings(presence_ttl_seconds=1))
    presence.heartbeat("e1", "ghost", "c-lost", "websocket")
    presence.heartbeat("e1", "carol", "c-live", "websocket")
    time.sleep(0.7)
    presence.heartbeat("e1", "carol", "c-live", "websocket")  # carol keeps beating
    time.sleep(0.5)
    assert presence.online("e1") == [{"userId": "carol", "connections": 1, "transports": ["websocket"]}]
    # the next change in the entity emits the ghost's offline event
    changes = presence.heartbeat("e1", "dave", "c-new", "websocket")
    assert {"userId": "ghost", "state": "offline", "connections": 0, "transports": []} in changes
    assert {"userId": "dave", "state": "online", "connections": 1, "transports": ["websocket"]} in changes


def test_redis_down_is_a_coded_error():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    with pytest.raises(BackendUnavailable):
        RedisRateLimiter(dead).allow("c", 1, 1)
    with pytest.raises(BackendUnavailable):
        RedisPresence(dead, Settings()).online("e1")


def test_presence_reply_holds_only_the_users_a_step_touches(redis_client):
    """A heartbeat in an entity of thousands returns the caller's members, not all."""
    presence = RedisPresence(redis_client, Settings())
    presence.touch("big", [(f"u{i}", f"c{i}", "sse") for i in range(2000)])
    assert len(presence.online("big")) == 2000
    script_reply = presence._script(keys=[keys.presence("big", Settings()).name, keys.presence_by_user("big", Settings()).name], args=["beat", "u7|c7b|websocket", 660_000, 840_000])
    before, after = script_reply
    assert sorted(before) == [b"u7|c7|sse"]
    assert sorted(after) == sorted([b"u7|c7|sse", b"u7|c7b|websocket"])
    assert presence.leave("big", "u7", "c7b", "websocket") == [
        {"userId": "u7", "state": "online", "connections": 1, "transports": ["sse"]}
    ]


def test_presence_keeps_a_by_user_twin_for_lookups_in_log_time(redis_client):
    """Every change keeps the by-user twin (score 0: one user's members by
    ZRANGEBYLEX) equal to the presence set, so a heartbeat never reads the whole
    entity (it did: 0.8 ms per SSE connect in an entity of 5,000; see bench/admission)."""
    settings = Settings(presence_ttl_seconds=1)
    presence = RedisPresence(redis_client, settings)
    main, twin = keys.presence("twin", settings).name, keys.presence_by_user("twin", settings).name
    presence.touch("twin", [(f"u{i}", f"c{i}", "sse") for i in range(300)])
    presence.heartbeat("twin", "u1", "c1b", "websocket")
    presence.leave("twin", "u2", "c2", "sse")

    def same():
        members = set(redis_client.zrange(main, 0, -1))
        assert members == set(redis_client.zrange(twin, 0, -1)) and len(members) == 300
        assert {score for _, score in redis_client.zrange(twin, 0, -1, withscores=True)} == {0.0}
        assert redis_client.pttl(twin) > 0

    same()
    assert presence.heartbeat("twin", "u9", "c9b", "websocket") == [{"userId": "u9", "state": "online", "connections": 2, "transports": ["sse", "websocket"]}]
    time.sleep(1.1)  # everything expires; the next step drops the expired from both
    presence.heartbeat("twin", "u5", "c5b", "sse")
    assert redis_client.zrange(twin, 0, -1) == [b"u5|c5b|sse"] == redis_client.zrange(main, 0, -1)


def test_touch_refreshes_without_events_and_keeps_members_alive(redis_client):
    presence = RedisPresence(redis_client, Settings(presence_ttl_seconds=1))
    presence.heartbeat("e1", "erin", "c1", "sse")
    for _ in range(3):
        time.sleep(0.5)
        presence.touch("e1", [("erin", "c1", "sse")])
    assert presence.online("e1") == [{"userId": "erin", "connections": 1, "transports": ["sse"]}]
    assert presence.heartbeat("e1", "erin", "c1", "sse") == []


def test_apply_many_is_the_same_steps_in_one_round_trip(redis_client):
    """The SSE server's batched joins/leaves give what the steps one by one give."""
    one_by_one, batched = RedisPresence(redis_client, Settings()), RedisPresence(redis_client, Settings())
    steps = [("beat", "u1", "c1", "sse"), ("beat", "u1", "c2", "websocket"), ("beat", "u2", "c3", "sse"), ("leave", "u1", "c1", "sse"), ("leave", "u2", "c3", "sse")]
    expected = [(one_by_one.heartbeat if op == "beat" else one_by_one.leave)("seq", u, c, t) for op, u, c, t in steps]
    assert batched.apply_many([(op, "bat", u, c, t) for op, u, c, t in steps]) == expected
    assert batched.online("bat") == one_by_one.online("seq") == [{"userId": "u1", "connections": 1, "transports": ["websocket"]}]
