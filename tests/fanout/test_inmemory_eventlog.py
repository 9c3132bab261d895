"""InMemoryEventLog / InMemoryPusher: the Redis semantics the fan-out relies on."""

from __future__ import annotations

import pytest

from rtstream import keys, streams
from rtstream.errors import ConnectionGone, ReplayGap, Throttled
from rtstream.inmemory.eventlog import InMemoryEventLog
from rtstream.inmemory.limits import ManualClock
from rtstream.inmemory.pusher import InMemoryPusher
from rtstream.models import Filters, Subscription, parse_event_id
from rtstream.settings import Settings

TX = {"transactionId": "t1", "amount": 5, "merchant": "Cafe"}


def make_log(**overrides):
    clock = ManualClock()
    return InMemoryEventLog(Settings().replace(**overrides), clock=clock), clock


def test_append_assigns_increasing_ids_and_queues_event_entries():
    log, clock = make_log()
    a = log.append("e1", "transactions.new", TX, "sdk")
    b = log.append("e1", "transactions.new", TX, "sdk")
    clock.advance(0.001)
    c = log.append("e1", "transactions.new", TX, "sdk")
    assert parse_event_id(a.id) < parse_event_id(b.id) < parse_event_id(c.id)
    assert b.id == f"{clock.ms - 1}-1"
    decoded = [streams.decode(f) for _, f in log.entries_for("e1")]
    assert [e.id for e in decoded] == [a.id, b.id, c.id]
    assert decoded[0] == a
    assert a.timestamp.endswith("Z") and a.published_at_ms == clock.ms - 1


def test_replay_returns_exactly_the_events_after_since_up_to_until():
    log, clock = make_log()
    ids = []
    for i in range(5):
        clock.advance(0.001)
        ids.append(log.append("e1", "balance.updated", {"accountId": "a", "newBalance": i, "change": 1}, "sdk").id)
    assert [e.id for e in log.replay("e1", ids[1])] == ids[2:]
    assert [e.id for e in log.replay("e1", ids[1], ids[3])] == ids[2:4]
    assert log.replay("e1", ids[4]) == []
    assert [e.data["newBalance"] for e in log.replay("e1", ids[0])] == [1, 2, 3, 4]


def test_trimmed_history_is_a_gap_only_for_cursors_before_the_trim():
    log, clock = make_log(history_maxlen=3)
    ids = []
    for i in range(6):
        clock.advance(0.001)
        ids.append(log.append("e1", "transactions.new", TX, "sdk").id)
    with pytest.raises(ReplayGap):
        log.replay("e1", ids[1])  # ids[2] was trimmed
    assert [e.id for e in log.replay("e1", ids[2])] == ids[3:]


def test_expired_history_is_a_gap_and_a_recreated_stream_keeps_it_one():
    log, clock = make_log(history_ttl_seconds=10)
    old = log.append("e1", "transactions.new", TX, "sdk").id
    clock.advance(11)
    with pytest.raises(ReplayGap):
        log.replay("e1", old)
    new = log.append("e1", "transactions.new", TX, "sdk").id
    with pytest.raises(ReplayGap):
        log.replay("e1", old)
    assert log.replay("e1", new) == []


def test_request_replay_records_until_as_last_history_id():
    log, clock = make_log()
    first = log.append("e1", "transactions.new", TX, "sdk").id
    clock.advance(0.001)
    last = log.append("e1", "transactions.new", TX, "sdk").id
    sub = Subscription("c1", "e1", "*", "u1", Filters(min_amount=3), pending_replay="m1")
    log.request_replay(sub, first)
    log.notify_changed("e1", ["transactions.new"], "c2")
    entries = [streams.decode(f) for _, f in log.entries_for("e1")]
    # the replay request is on the replay lane, not among the live entries
    [(_, fields)] = log.replay_entries(keys.partition_of("e1", log.settings))
    replay = streams.decode(fields)
    assert isinstance(replay, streams.ReplayRequest)
    assert (replay.marker, replay.since, replay.until, replay.filters) == ("m1", first, last, Filters(min_amount=3))
    assert len(entries) == 3 and isinstance(entries[2], streams.SubscriptionsChanged)
    assert entries[2].topics == ("transactions.new",)


def test_identical_appends_are_two_events():
    log, _ = make_log()
    assert log.append("e1", "transactions.new", TX, "redis").id != log.append("e1", "transactions.new", TX, "redis").id
    assert len(log.replay("e1", "0-0")) == 2


def test_idempotency_key_is_one_event_within_the_window():
    log, clock = make_log(idempotency_window_seconds=300)
    first = log.append_idempotent("e1", "transactions.new", TX, "sdk", "k1")
    again = log.append_idempotent("e1", "transactions.new", TX, "sdk", "k1")
    assert (first.duplicate, again.duplicate) == (False, True) and again.event.id == first.event.id
    assert not log.append_idempotent("e2", "transactions.new", TX, "sdk", "k1").duplicate
    assert len(log.replay("e1", "0-0")) == 1
    clock.advance(299)
    assert log.append_idempotent("e1", "transactions.new", TX, "sdk", "k1").duplicate
    clock.advance(2)
    later = log.append_idempotent("e1", "transactions.new", TX, "sdk", "k1")
    assert not later.duplicate and later.event.id != first.event.id
    assert len(log.replay("e1", "0-0")) == 2


def test_partition_is_stable_per_entity():
    log, _ = make_log(fanout_partitions=4)
    log.append("e1", "transactions.new", TX, "sdk")
    p = keys.partition_of("e1", log.settings)
    assert len(log.partition_entries(p)) == 1
    assert all(not log.partition_entries(q) for q in range(4) if q != p)


def test_pusher_records_posts_and_answers_gone_for_closed():
    pusher = InMemoryPusher(["c1"])
    pusher.post("c1", b'{"a":1}')
    assert pusher.frames("c1") == [{"a": 1}]
    with pytest.raises(ConnectionGone):
        pusher.post("nope", b"x")
    pusher.fail_next("c1", Throttled("slow"))
    with pytest.raises(Throttled):
        pusher.post("c1", b"x")
    pusher.close("c1")
    with pytest.raises(ConnectionGone):
        pusher.post("c1", b"x")
