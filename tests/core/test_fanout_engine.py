"""The core FanoutEngine over its in-memory twins: containment, dead letters,
the replay lane and its seam, backpressure. No Redis, no sockets, no timing."""

from __future__ import annotations

import asyncio
import json

import pytest

from rtstream import keys, streams
from rtstream.errors import BackendUnavailable
from rtstream.fanout_engine import EngineLimits, FanoutEngine, strict_id_key
from rtstream.errors import InvalidMessage
from rtstream.inmemory.eventlog import InMemoryEventLog
from rtstream.inmemory.fanout import CountingMetrics, InMemoryAsyncPoster, InMemoryDeadLetters, InMemoryHistory
from rtstream.inmemory.limits import ManualClock
from rtstream.inmemory.pusher import InMemoryPusher
from rtstream.inmemory.registry import InMemoryRegistry
from rtstream.models import Filters, Subscription
from rtstream.settings import Settings


def tx(i):
    return {"transactionId": f"t{i}", "amount": i, "merchant": "Cafe"}


class FakeMonotonic:
    """A clock the retry loop reads; each read moves it on, so budgets run out
    after a fixed number of attempts instead of wall time."""

    def __init__(self, step: float = 0.0) -> None:
        self.t = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


class Rig:
    def __init__(self, registry=None, limits=None, monotonic=None, **settings):
        self.clock = ManualClock()
        self.log = InMemoryEventLog(Settings().replace(fanout_partitions=1, **settings), clock=self.clock)
        self.registry = registry or InMemoryRegistry()
        self.pusher = InMemoryPusher()
        self.poster = InMemoryAsyncPoster(self.pusher)
        self.history = InMemoryHistory(self.log)
        self.dead = InMemoryDeadLetters()
        self.metrics = CountingMetrics()
        kw = {"monotonic": monotonic} if monotonic else {}
        self.engine = FanoutEngine(registry=self.registry, history=self.history, poster=self.poster, dead_letters=self.dead, metrics=self.metrics, limits=limits or EngineLimits(), **kw)
        self.event_cursor = None
        self.replay_cursor = 0
        self.acked: list[str] = []

    def subscribe(self, conn, entity, topic="*", since=None, filters=Filters(), rewind=None):
        self.pusher.open(conn)
        sub = Subscription(conn, entity, topic, "u", filters, pending_replay=f"m-{conn}" if since is not None or rewind else None)
        self.registry.put_subscription(sub)
        if rewind:
            self.log.request_replay(sub, "", rewind=rewind)
        elif since is not None:
            self.log.request_replay(sub, since)
        else:
            self.log.notify_changed(entity, [topic], conn)

    def publish(self, entity, i, topic="transactions.new", amount=None):
        self.clock.advance(0.001)
        data = tx(i) if amount is None else {**tx(i), "amount": amount}
        return self.log.append(entity, topic, data, "sdk").id

    async def feed_events(self):
        for entry_id, fields in self.log.partition_entries(0, self.event_cursor):
            self.event_cursor = entry_id
            await self.engine.submit(entry_id, fields, lambda i=entry_id: self.acked.append(i))

    def feed_replays(self):
        entries = self.log.replay_entries(0)[self.replay_cursor :]
        self.replay_cursor += len(entries)
        return [self.engine.start_replay(entry_id, fields, lambda i=entry_id: self.acked.append(i)) for entry_id, fields in entries]

    def ids(self, conn):
        return [f["id"] for f in self.pusher.frames(conn) if f["type"] == "event"]


class FlakyRegistry(InMemoryRegistry):
    """Subscriber lookups of some entities fail: forever, or a number of times."""

    def __init__(self):
        super().__init__()
        self.down: dict[str, int] = {}  # entity -> failures left (-1: forever)
        self.poison: set[str] = set()

    def subscribers(self, entity_id, topic):
        if entity_id in self.poison:
            raise RuntimeError("a bug on this payload")
        left = self.down.get(entity_id, 0)
        if left:
            self.down[entity_id] = left - 1 if left > 0 else -1
            raise BackendUnavailable("dynamodb unavailable")
        return super().subscribers(entity_id, topic)


def test_strict_ids():
    assert strict_id_key("1-0") == (1, 0) and strict_id_key("18446744073709551615-18446744073709551615")
    for bad in ("1-0\n", "18446744073709551616-0", "1-", "-1", " 1-0", "1-0 ", "abc", "1-99999999999999999999"):
        with pytest.raises(InvalidMessage):
            strict_id_key(bad)


async def test_an_entity_whose_backend_keeps_failing_never_holds_up_another():
    registry = FlakyRegistry()
    registry.down["bad"] = -1
    rig = Rig(registry, EngineLimits(retry_budget_s=5.0), monotonic=FakeMonotonic(step=0.0))
    rig.subscribe("victim", "good")
    rig.subscribe("x", "bad")
    bad_id = rig.publish("bad", 1)
    good = [rig.publish("good", i) for i in range(2, 6)]
    await rig.feed_events()
    # the bad entity is still retrying (budget not spent) while the other is fully delivered
    for _ in range(200):
        if rig.ids("victim") == good:
            break
        await asyncio.sleep(0)
    assert rig.ids("victim") == good
    assert rig.dead.letters == [] and bad_id not in rig.acked
    # its budget runs out: dead-lettered with the reason, acknowledged, lane free
    rig.engine.monotonic = FakeMonotonic(step=10.0)
    await rig.engine.wait_idle()
    [letter] = rig.dead.letters
    assert letter.entity_id == "bad" and letter.entry_id and "retries exhausted" in letter.reason and letter.fields["kind"] == "event"
    assert rig.metrics.counts["dead_letters"] == 1 and rig.pusher.received("x") == []


async def test_transient_failure_is_retried_and_delivered_once():
    registry = FlakyRegistry()
    registry.down["e1"] = 2
    rig = Rig(registry)
    rig.subscribe("c", "e1")
    eid = rig.publish("e1", 1)
    await rig.feed_events()
    await rig.engine.wait_idle()
    assert rig.ids("c") == [eid] and rig.dead.letters == []


async def test_poison_and_undecodable_entries_are_dead_lettered_at_once():
    registry = FlakyRegistry()
    registry.poison.add("bad")
    rig = Rig(registry)
    rig.subscribe("c", "good")
    rig.publish("bad", 1)
    await rig.engine.submit("9-0", {"kind": "event", "entity": "good", "id": "1-0", "topic": "transactions.new", "data": "{nope"}, lambda: rig.acked.append("9-0"))
    await rig.feed_events()
    after = rig.publish("good", 2)
    await rig.feed_events()
    await rig.engine.wait_idle()
    assert rig.ids("c") == [after]
    reasons = sorted(letter.reason.split(":")[0] for letter in rig.dead.letters)
    assert reasons == ["poison", "undecodable"]
    assert "9-0" in rig.acked  # dead-lettered entries are acknowledged: they never block again


@pytest.mark.parametrize("since", ["1-0\n", "18446744073709551616-0"])
async def test_a_replay_with_an_id_redis_refuses_is_dead_lettered_and_answered_with_an_error(since):
    rig = Rig()
    rig.subscribe("other", "e2")
    first = rig.publish("e1", 1)
    rig.publish("e1", 2)
    rig.subscribe("attacker", "e1", since=since)
    rig.subscribe("fine", "e1", since=first)
    rig.feed_replays()
    ids = [rig.publish("e2", i) for i in range(3)]
    await rig.feed_events()
    await rig.engine.wait_idle()
    assert rig.ids("other") == ids
    frames = rig.pusher.frames("attacker")
    assert frames == [{"type": "error", "code": "invalid_message", "message": frames[0]["message"]}]
    assert rig.registry.connection_subscriptions("attacker") == []  # no pending subscription left behind
    [letter] = rig.dead.letters
    assert letter.lane == "replay" and letter.entity_id == "e1" and letter.fields["since"] == since
    assert [f["type"] for f in rig.pusher.frames("fine")] == ["subscribed", "event"]


async def test_replay_to_a_gone_connection_stops_at_the_first_410():
    rig = Rig()
    ids = [rig.publish("e1", i) for i in range(50)]
    rig.subscribe("gone", "e1", since=ids[0])
    rig.pusher.close("gone")
    rig.feed_replays()
    await rig.engine.wait_idle()
    assert rig.poster.attempts["gone"] == 1  # `subscribed` only: not the 50 events
    assert rig.metrics.counts["replays_abandoned"] == 1 and rig.metrics.counts["pruned"] == 1
    assert rig.registry.get_connection("gone") is None and rig.engine.sessions == {}


async def test_seam_is_exact_while_events_arrive_during_the_replay():
    """Live events published while replays are posting (held at a gate) reach
    every resuming connection once, in order, with nothing missing."""
    rig = Rig()
    rig.subscribe("steady", "e1")
    first = [rig.publish("e1", i) for i in range(10)]
    await rig.feed_events()
    await rig.engine.wait_idle()
    gates = {}
    for n, since in enumerate([first[2], first[5], first[0], first[-1]]):
        rig.subscribe(f"r{n}", "e1", since=since)
        gates[f"r{n}"] = rig.poster.hold(f"r{n}")
    rig.feed_replays()
    during = []
    for round_ in range(5):
        during += [rig.publish("e1", 100 + round_ * 10 + i) for i in range(3)]
        await rig.feed_events()
        for _ in range(5):
            await asyncio.sleep(0)
        if round_ == 2:
            for gate in list(gates.values())[:2]:
                gate.set()  # two replays finish while events keep coming
    for gate in gates.values():
        gate.set()
    after = [rig.publish("e1", 200 + i) for i in range(3)]
    await rig.feed_events()
    await rig.engine.wait_idle()
    everything = first + during + after
    assert rig.ids("steady") == everything
    for n, since in enumerate([first[2], first[5], first[0], first[-1]]):
        got = rig.ids(f"r{n}")
        start = everything.index(since) + 1
        assert got == everything[start:], (n, got)
        assert rig.pusher.frames(f"r{n}")[0]["type"] == "subscribed"


async def test_lane_lagging_behind_a_finished_replay_drops_what_was_replayed():
    rig = Rig()
    ids = [rig.publish("e1", i) for i in range(5)]
    rig.subscribe("c", "e1", since=ids[0])
    # the replay answers before the event lane has even seen those events
    rig.feed_replays()
    await rig.engine.wait_idle()
    assert rig.ids("c") == ids[1:]
    more = rig.publish("e1", 9)
    await rig.feed_events()
    await rig.engine.wait_idle()
    assert rig.ids("c") == ids[1:] + [more]


async def test_backpressure_bounds_what_is_held_and_per_entity_overflow_is_refetched():
    rig = Rig(limits=EngineLimits(max_in_flight=4, max_per_entity=2))
    rig.subscribe("c", "e1")
    held = rig.poster.hold("c")
    await rig.feed_events()  # the `changed` entry
    await rig.engine.wait_idle()
    ids = [rig.publish("e1", i) for i in range(6)]
    entries = rig.log.partition_entries(0, rig.event_cursor)
    fetched = []

    async def fetch(entry_id):
        fetched.append(entry_id)
        return dict(entries)[entry_id]

    for entry_id, fields in entries:
        await rig.engine.submit(entry_id, fields, lambda: None, fetch=fetch)
    # entity over its share: only ids kept, the reader was never blocked
    assert rig.engine.in_flight == 6 and fetched == []
    held.set()
    await rig.engine.wait_idle()
    assert rig.ids("c") == ids and len(fetched) == 4


async def test_reader_waits_when_the_in_flight_budget_is_used_up():
    rig = Rig(limits=EngineLimits(max_in_flight=2))
    for e in ("a", "b", "c"):
        rig.subscribe(f"conn-{e}", e)
    await rig.feed_events()
    await rig.engine.wait_idle()
    gate = rig.poster.hold("conn-a")
    gate_b = rig.poster.hold("conn-b")
    for e in ("a", "b", "c"):
        rig.publish(e, 1)
    reader = asyncio.create_task(rig.feed_events())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not reader.done()  # two entries held, the third waits for room
    gate.set()
    await reader
    gate_b.set()
    await rig.engine.wait_idle()
    assert all(len(rig.ids(f"conn-{e}")) == 1 for e in ("a", "b", "c"))


async def test_entries_of_a_lost_partition_are_left_unacknowledged():
    rig = Rig()
    rig.subscribe("c", "e1")
    rig.publish("e1", 1)
    owned = False
    for entry_id, fields in rig.log.partition_entries(0):
        await rig.engine.submit(entry_id, fields, lambda i=entry_id: rig.acked.append(i), owned=lambda: owned)
    await rig.engine.wait_idle()
    assert rig.acked == [] and rig.pusher.received("c") == []


async def test_unsubscribe_ends_a_finished_replays_promise():
    rig = Rig()
    zero = rig.publish("e1", 0)
    first = rig.publish("e1", 1)
    rig.subscribe("c", "e1", since=zero)
    rig.feed_replays()
    await rig.engine.wait_idle()
    rig.registry.remove_subscription("c", "e1", "*")
    rig.log.notify_changed("e1", ["*"], "c")
    rig.publish("e1", 2)
    await rig.feed_events()
    await rig.engine.wait_idle()
    assert rig.ids("c") == [first]


async def test_dead_letter_stream_key_and_entry_format():
    assert keys.dead_letter_stream().name == "rt:dead-letters" and keys.DEAD_LETTER_MAXLEN > 0
    assert keys.replay_stream(3).name == "rt:replay:{p3}" and keys.ingest_lease().ttl_seconds
    req = streams.ReplayRequest("m", "c", "e1", "*", Filters(), "1-0\n", "")
    rig = Rig()
    await rig.engine.replay("5-0", streams.encode_replay(req))
    [letter] = rig.dead.letters
    assert letter.fields == {k: v for k, v in streams.encode_replay(req).items()}
    assert json.loads(json.dumps(letter.fields))["since"] == "1-0\n"


async def test_a_run_of_queued_events_is_one_lookup_and_one_ordered_post_per_connection():
    class CountingRegistry(InMemoryRegistry):
        lookups = 0

        def subscribers(self, entity_id, topic):
            CountingRegistry.lookups += 1
            return super().subscribers(entity_id, topic)

    rig = Rig(CountingRegistry(), EngineLimits(max_batch=64))
    rig.subscribe("a", "e1")
    rig.subscribe("b", "e1", "transactions.new")
    await rig.feed_events()
    await rig.engine.wait_idle()
    ids = [rig.publish("e1", i) for i in range(40)]
    await rig.feed_events()  # all queued before the lane runs: one batch
    await rig.engine.wait_idle()
    assert rig.ids("a") == ids and rig.ids("b") == ids
    # the 40 queued events went to each connection as one pipelined, ordered batch
    assert sorted(rig.poster.in_order_batches) == [("a", 40), ("b", 40)]
    assert CountingRegistry.lookups == 2  # topic + wildcard, once (then cached)
    assert len(rig.acked) == 2 + 40 and rig.metrics.counts["deliveries"] == 80


async def test_a_batch_whose_lookup_keeps_failing_dead_letters_each_entry():
    registry = FlakyRegistry()
    rig = Rig(registry, EngineLimits(retry_budget_s=0.0))
    rig.subscribe("c", "e1")
    await rig.feed_events()
    await rig.engine.wait_idle()
    registry.down["e1"] = -1
    rig.subscribe("other", "e2")
    gate = rig.poster.hold("other")
    rig.publish("e2", 0)
    await rig.feed_events()
    ids = [rig.publish("e1", i) for i in range(5)]
    await rig.feed_events()
    gate.set()
    await rig.engine.wait_idle()
    assert sorted(letter.entry_id for letter in rig.dead.letters) == sorted(i for i, f in rig.log.partition_entries(0) if f.get("entity") == "e1" and f.get("kind") == "event")
    assert len(rig.dead.letters) == len(ids) and rig.pusher.received("c") == []


# ---- rewind: the last N matching events, then live, on the replay lane ---------------


def _rewind_expected(everything: list[tuple[str, bool]], cursor: str, n: int) -> list[str]:
    """What a rewind of ``n`` must deliver: the last ``n`` matching ids up to the
    scan's cursor, then every matching id after it, once, in order."""
    ids = [i for i, _ in everything]
    upto = ids.index(cursor) + 1 if cursor != "0-0" else 0
    matching_before = [i for i, m in everything[:upto] if m]
    return matching_before[-n:] + [i for i, m in everything[upto:] if m]


async def test_rewind_sends_subscribed_the_last_n_matching_oldest_first_then_live():
    rig = Rig()
    published = [(rig.publish("e1", i, amount=i % 3 * 50), i % 3 * 50 >= 50) for i in range(30)]
    rig.subscribe("c", "e1", rewind=4, filters=Filters(min_amount=50))
    rig.subscribe("all", "e1", rewind=100)
    rig.feed_replays()
    await rig.engine.wait_idle()
    frames = rig.pusher.frames("c")
    newest = published[-1][0]
    assert frames[0] == {"type": "subscribed", "topic": "*", "cursor": newest}
    assert rig.ids("c") == [i for i, m in published if m][-4:]
    assert rig.ids("all") == [i for i, _ in published]  # fewer than N retained: all of them
    # the events the lane sees late were rewound already: not sent again
    await rig.feed_events()
    await rig.engine.wait_idle()
    assert rig.ids("c") == [i for i, m in published if m][-4:]
    live = [rig.publish("e1", 100, amount=10), rig.publish("e1", 101, amount=60)]
    await rig.feed_events()
    await rig.engine.wait_idle()
    assert rig.ids("c") == [i for i, m in published if m][-4:] + [live[1]]
    assert rig.ids("all")[-2:] == live
    assert rig.registry.subscribers("e1", "*")[0].pending_replay is None  # activated
    assert rig.dead.letters == []


async def test_rewind_of_an_entity_without_history_starts_live_at_0_0():
    rig = Rig()
    rig.subscribe("c", "e1", rewind=10)
    rig.feed_replays()
    await rig.engine.wait_idle()
    assert rig.pusher.frames("c") == [{"type": "subscribed", "topic": "*", "cursor": "0-0"}]
    first = rig.publish("e1", 1)
    await rig.feed_events()
    await rig.engine.wait_idle()
    assert rig.ids("c") == [first]


async def test_rewind_with_a_selective_filter_reads_further_pages():
    rig = Rig()
    published = [(rig.publish("e1", i, amount=500 if i % 150 == 7 else 1), i % 150 == 7) for i in range(600)]
    rig.subscribe("c", "e1", rewind=3, filters=Filters(min_amount=100))
    rig.feed_replays()
    await rig.engine.wait_idle()
    assert rig.ids("c") == [i for i, m in published if m][-3:]
    assert rig.history.reads >= 3  # newest first, page by page, until 3 matched


async def test_rewind_scan_is_bounded_by_rewind_max_scan():
    rig = Rig(limits=EngineLimits(rewind_max_scan=200))
    match = rig.publish("e1", 0, amount=900)
    for i in range(1, 400):
        rig.publish("e1", i, amount=1)
    rig.subscribe("c", "e1", rewind=1, filters=Filters(min_amount=100))
    rig.feed_replays()
    await rig.engine.wait_idle()
    assert match not in rig.ids("c") and rig.ids("c") == [] and rig.history.reads == 1


async def test_rewind_seam_is_exact_while_events_arrive_before_during_and_after_the_scan():
    """Several rewinding connections; live events published while their scans wait
    for history (buffered, then considered by the scan), while their posts are
    held (buffered past the cursor), and after: each gets the last N matching
    events up to the cursor, then every later matching one, once, in order."""
    rig = Rig()
    rig.subscribe("steady", "e1")
    everything: list[tuple[str, int]] = []

    def publish(n: int) -> None:
        for _ in range(n):
            amount = (len(everything) * 37) % 100
            everything.append((rig.publish("e1", len(everything), amount=amount), amount))

    publish(40)
    await rig.feed_events()
    await rig.engine.wait_idle()
    plans = {"r0": (5, Filters()), "r1": (100, Filters()), "r2": (3, Filters(min_amount=60)), "r3": (1, Filters())}
    gates = {}
    for conn, (n, filters) in plans.items():
        rig.subscribe(conn, "e1", rewind=n, filters=filters)
        gates[conn] = rig.poster.hold(conn)
    rig.history.gate = asyncio.Event()  # the scans wait for history
    rig.feed_replays()
    for _ in range(5):
        await asyncio.sleep(0)
    publish(6)  # sessions registered, scans not yet read: buffered, and <= the cursor
    await rig.feed_events()
    for _ in range(5):
        await asyncio.sleep(0)
    cursor_expected = everything[-1][0]
    rig.history.gate.set()
    for _ in range(5):
        await asyncio.sleep(0)  # the scans read history (their posts are held)
    for round_ in range(4):
        publish(3)  # scanned already: buffered past the cursor
        await rig.feed_events()
        for _ in range(5):
            await asyncio.sleep(0)
        if round_ == 1:
            gates["r0"].set()
            gates["r2"].set()
    for gate in gates.values():
        gate.set()
    publish(4)
    await rig.feed_events()
    await rig.engine.wait_idle()
    publish(2)  # after activation: the registry path
    await rig.feed_events()
    await rig.engine.wait_idle()
    assert rig.ids("steady") == [i for i, _ in everything]
    for conn, (n, filters) in plans.items():
        first = rig.pusher.frames(conn)[0]
        assert first["type"] == "subscribed" and first["cursor"] == cursor_expected, conn
        marked = [(i, filters.empty or amount >= filters.min_amount) for i, amount in everything]
        got = rig.ids(conn)
        assert got == _rewind_expected(marked, cursor_expected, n), conn
        assert len(got) == len(set(got))
    assert rig.dead.letters == []


@pytest.mark.parametrize("rewind", ["0", "101", "abc", "-1", "5 "])
async def test_a_rewind_request_out_of_range_is_dead_lettered_and_answered_with_an_error(rewind):
    rig = Rig()
    rig.publish("e1", 1)
    rig.pusher.open("c")
    sub = Subscription("c", "e1", "*", "u", Filters(), pending_replay="m-c")
    rig.registry.put_subscription(sub)
    req = streams.ReplayRequest("m-c", "c", "e1", "*", Filters(), "", "", rewind=rewind)
    await rig.engine.replay("5-0", streams.encode_replay(req))
    frames = rig.pusher.frames("c")
    assert [f["code"] for f in frames] == ["invalid_message"]
    assert rig.registry.connection_subscriptions("c") == []
    [letter] = rig.dead.letters
    assert letter.lane == "replay" and letter.fields["rewind"] == rewind


async def test_rewind_to_a_gone_connection_stops_at_the_first_410():
    rig = Rig()
    for i in range(20):
        rig.publish("e1", i)
    rig.subscribe("gone", "e1", rewind=20)
    rig.pusher.close("gone")
    rig.feed_replays()
    await rig.engine.wait_idle()
    assert rig.poster.attempts["gone"] == 1
    assert rig.metrics.counts["replays_abandoned"] == 1 and rig.engine.sessions == {}
