"""Pure fan-out planning, driven by the in-memory ports (no Redis, no sockets)."""

from __future__ import annotations

import json

import pytest

from rtstream import keys
from rtstream.fanout import SubscriberCache, decode_entry, lookup_topics, replay_frames
from rtstream.fanout_engine import FanoutEngine
from rtstream.inmemory.fanout import CountingMetrics, InMemoryAsyncPoster, InMemoryDeadLetters, InMemoryHistory
from rtstream.inmemory.eventlog import InMemoryEventLog
from rtstream.inmemory.limits import ManualClock
from rtstream.inmemory.pusher import InMemoryPusher
from rtstream.inmemory.registry import InMemoryRegistry
from rtstream.models import Event, Filters, Subscription
from rtstream.settings import Settings
from rtstream.streams import ReplayRequest, SubscriptionsChanged


def tx(amount, merchant="Cafe"):
    return {"transactionId": f"t{amount}", "amount": amount, "merchant": merchant}


class Harness:
    """Drives the core FanoutEngine over the in-memory ports, as the worker does:
    event-stream entries into the lanes, replay requests into the replay lane
    (``replays_first`` decides which the reader hands over first)."""

    def __init__(self, replays_first=False, **settings):
        self.clock = ManualClock()
        self.log = InMemoryEventLog(Settings().replace(**settings), clock=self.clock)
        self.registry = InMemoryRegistry()
        self.pusher = InMemoryPusher()
        self.poster = InMemoryAsyncPoster(self.pusher)
        self.dead = InMemoryDeadLetters()
        self.metrics = CountingMetrics()
        self.engine = FanoutEngine(registry=self.registry, history=InMemoryHistory(self.log), poster=self.poster, dead_letters=self.dead, metrics=self.metrics)
        self.replays_first = replays_first
        self.cursor: dict[int, str | None] = {}
        self.replay_cursor: dict[int, int] = {}
        self.acked: list[str] = []

    def subscribe(self, conn, entity, topic, filters=Filters(), since=None):
        self.pusher.open(conn)
        marker = f"m-{conn}-{topic}" if since else None
        sub = Subscription(conn, entity, topic, "u", filters, pending_replay=marker)
        self.registry.put_subscription(sub)
        if since:
            self.log.request_replay(sub, since)
        else:
            self.log.notify_changed(entity, [topic], conn)

    def publish(self, entity, topic, data, source="sdk"):
        self.clock.advance(0.001)
        return self.log.append(entity, topic, data, source)

    async def _events(self, p):
        for entry_id, fields in self.log.partition_entries(p, self.cursor.get(p)):
            self.cursor[p] = entry_id
            await self.engine.submit(entry_id, fields, lambda i=entry_id: self.acked.append(i))

    def _replays(self, p):
        entries = self.log.replay_entries(p)[self.replay_cursor.get(p, 0):]
        self.replay_cursor[p] = self.replay_cursor.get(p, 0) + len(entries)
        for entry_id, fields in entries:
            self.engine.start_replay(entry_id, fields, lambda i=entry_id: self.acked.append(i))

    async def run(self):
        for p in range(self.log.settings.fanout_partitions):
            if self.replays_first:
                self._replays(p)
                await self._events(p)
            else:
                await self._events(p)
                self._replays(p)
        await self.engine.wait_idle()

    def ids(self, conn):
        return [f["id"] for f in self.pusher.frames(conn) if f["type"] == "event"]


both_orders = pytest.mark.parametrize("replays_first", [False, True])


async def test_event_reaches_topic_and_wildcard_subscribers_of_its_entity_only():
    h = Harness()
    h.subscribe("a", "e1", "transactions.new")
    h.subscribe("b", "e1", "*")
    h.subscribe("c", "e1", "balance.updated")
    h.subscribe("d", "e2", "transactions.new")
    h.subscribe("e", "e2", "*")
    ev = h.publish("e1", "transactions.new", tx(5))
    await h.run()
    assert h.ids("a") == [ev.id] and h.ids("b") == [ev.id]
    assert h.pusher.received("c") == [] and h.pusher.received("d") == [] and h.pusher.received("e") == []
    assert json.loads(h.pusher.received("a")[0]) == ev.to_wire()


async def test_one_event_is_one_batch_of_identical_bytes():
    h = Harness()
    for i in range(50):
        h.subscribe(f"c{i}", "e1", "*")
    ev = h.publish("e1", "transactions.new", tx(1))
    await h.run()
    assert {h.pusher.received(f"c{i}")[0] for i in range(50)} == {ev.wire_json().encode()}


async def test_connection_subscribed_twice_gets_one_copy():
    ev = Event("1-0", "e1", "transactions.new", tx(1))
    assert Harness().engine.plan(ev, [Subscription("c", "e1", "transactions.new"), Subscription("c", "e1", "*")], 0.0) == ["c"]


async def test_wildcard_excludes_presence_but_named_presence_gets_it():
    ev = Event("1-0", "e1", "presence", {"userId": "u", "state": "online", "connections": 1, "transports": []})
    assert lookup_topics(ev) == ("presence",)
    assert Harness().engine.plan(ev, [Subscription("star", "e1", "*"), Subscription("p", "e1", "presence")], 0.0) == ["p"]


@pytest.mark.parametrize(
    "filters, expected",
    [
        (Filters(types=("balance.updated",)), ["balance"]),
        (Filters(sources=("bank",)), ["big-bank"]),
        (Filters(min_amount=100), ["big-bank", "balance"]),
        (Filters(types=("transactions.new",), min_amount=100), ["big-bank"]),
    ],
)
async def test_filters_hold(filters, expected):
    h = Harness()
    h.subscribe("c", "e1", "*", filters)
    named = {}
    named[h.publish("e1", "transactions.new", tx(5), "pos").id] = "small-pos"
    named[h.publish("e1", "transactions.new", tx(-500), "bank").id] = "big-bank"
    named[h.publish("e1", "balance.updated", {"accountId": "a", "newBalance": 1, "change": 250}, "pos").id] = "balance"
    await h.run()
    assert [named[i] for i in h.ids("c")] == expected


@both_orders
async def test_replay_seam_is_exact_in_order_and_filtered(replays_first):
    h = Harness(replays_first)
    h.subscribe("old", "e1", "*")
    before = [h.publish("e1", "transactions.new", tx(i)).id for i in range(1, 4)]
    await h.run()
    # "new" was away after before[0]; it resubscribes with since=before[0], then more events arrive
    h.subscribe("new", "e1", "*", Filters(min_amount=2), since=before[0])
    after = [h.publish("e1", "transactions.new", tx(i)).id for i in range(4, 7)]
    await h.run()
    frames = h.pusher.frames("new")
    assert frames[0] == {"type": "subscribed", "topic": "*"}
    assert h.ids("new") == before[1:] + after  # no gap, no duplicate at the seam
    assert h.ids("old") == before + after


@both_orders
async def test_events_between_subscribe_and_marker_are_replayed_not_duplicated(replays_first):
    h = Harness(replays_first)
    first = h.publish("e1", "transactions.new", tx(1)).id
    h.subscribe("c", "e1", "transactions.new", since=first)
    # the subscription exists (pending) before the marker is processed; later events are live
    late = h.publish("e1", "transactions.new", tx(2)).id
    await h.run()
    assert h.ids("c") == [late]
    assert [f["type"] for f in h.pusher.frames("c")] == ["subscribed", "event"]


@both_orders
async def test_pending_subscription_skips_events_queued_before_its_marker(replays_first):
    h = Harness(replays_first)
    first = h.publish("e1", "transactions.new", tx(1)).id
    second = h.publish("e1", "transactions.new", tx(2)).id
    # subscription written (pending) before the reader reaches those two events
    h.subscribe("c", "e1", "transactions.new", since=first)
    await h.run()
    assert h.ids("c") == [second]  # once, from the replay


@both_orders
async def test_replay_gap_when_history_was_trimmed(replays_first):
    h = Harness(replays_first, history_maxlen=2)
    ids = [h.publish("e1", "transactions.new", tx(i)).id for i in range(1, 6)]
    h.subscribe("c", "e1", "*", since=ids[0])
    live = h.publish("e1", "transactions.new", tx(9)).id
    await h.run()
    frames = h.pusher.frames("c")
    assert frames[0]["type"] == "subscribed"
    assert frames[1]["type"] == "error" and frames[1]["code"] == "replay_gap"
    assert h.ids("c") == [live]


def test_replay_frames_keeps_only_the_requested_topic():
    events = [Event(f"{i}-0", "e1", t, tx(i)) for i, t in enumerate(["transactions.new", "balance.updated", "transactions.new"], 1)]
    req = ReplayRequest("m", "c", "e1", "transactions.new", Filters(), "0-0", "3-0")
    frames = [json.loads(f) for f in replay_frames(req, events)]
    assert [f.get("id") for f in frames] == [None, "1-0", "3-0"]


def test_decode_entry_gives_unrecorded_events_the_entry_id():
    log = InMemoryEventLog(Settings(), clock=ManualClock())
    log.append("e1", "presence", {"userId": "u", "state": "online", "connections": 1, "transports": []}, "rtstream", record_history=False)
    [(entry_id, fields)] = log.entries_for("e1")
    assert decode_entry(entry_id, fields).id == entry_id


def test_subscriber_cache_invalidates_and_forgets_pruned_connections():
    cache = SubscriberCache(max_keys=2)
    cache.put("e1", "*", [Subscription("a", "e1", "*"), Subscription("b", "e1", "*")])
    cache.remove_connection("a")
    assert [s.connection_id for s in cache.get("e1", "*")] == ["b"]
    cache.invalidate("e1", ["*"])
    assert cache.get("e1", "*") is None
    for i in range(3):
        cache.put(f"e{i}", "x", [])
    assert len(cache) == 2 and cache.get("e0", "x") is None


def test_subscriber_cache_entries_age_out():
    cache = SubscriberCache(max_age_s=30)
    cache.put("e1", "*", [Subscription("a", "e1", "*")], now=100.0)
    assert cache.get("e1", "*", now=129.0) is not None
    assert cache.get("e1", "*", now=131.0) is None


def test_changed_entry_is_decoded_for_cache_invalidation():
    log = InMemoryEventLog(Settings(), clock=ManualClock())
    log.notify_changed("e1", ["*", "balance.updated"], "c1")
    [(entry_id, fields)] = log.entries_for("e1")
    assert decode_entry(entry_id, fields) == SubscriptionsChanged("e1", ("*", "balance.updated"), "c1")
    assert keys.partition_of("e1", log.settings) in range(log.settings.fanout_partitions)
