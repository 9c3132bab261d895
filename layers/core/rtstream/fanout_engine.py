"""The fan-out engine: what each work entry sends, with failures contained per entity.

The worker reads the partition streams and hands entries here; everything that
decides (decode, plan, replay, activate, prune, dead-letter) happens in this
module, over the ports of :mod:`rtstream.ports` (tested with the in-memory twins).

Lanes
    Event-stream entries (``event``/``changed``) go to one lane per entity: a
    queue handled by its own task, so one entity's order is kept while a slow or
    failing entity never holds another one up. An entry is acknowledged (its
    ``done`` callback) as soon as its lane finished it. Memory is bounded: at most
    ``max_in_flight`` entries are held with their payload (the reader waits for
    room: backpressure); past ``max_per_entity`` queued entries of one entity,
    only the entry id is kept and the payload is fetched again when the lane gets
    there, so a flooded entity cannot take the budget of the others.

Failures
    An entry that cannot succeed (undecodable, an id the store refuses, a bug on
    a poison payload) goes to the dead-letter sink at once. A backend failure
    (Redis, DynamoDB unreachable) is retried with capped, jittered backoff for at
    most ``retry_budget_s``, then dead-lettered. Posts are retried per connection
    (429/5xx) ``max_post_attempts`` times. So no entry holds its lane longer than a
    bounded time, and no lane holds another at all.

Replay lane and the seam
    A subscribe with ``since`` writes the subscription *pending* (marker) and a
    replay request on a separate stream; requests are answered concurrently (at
    most ``max_replays`` at once), never behind live events. Per request a
    :class:`ReplaySession` makes the seam exact:

    1. live events for a pending subscription are skipped until its replay starts
       (the replay will read them from history);
    2. the session starts *before* history is read; from then on the entity's
       lane appends matching live events to the session's buffer;
    3. the replay reads history ``(since, now]``, posts ``subscribed`` (alone: a
       410 abandons the replay at once), then the events; the watermark ``W`` is
       the last replayed id. A *rewind* request (``rewind=N``, no ``since``)
       reads the last N matching events instead with the core's
       :class:`~rtstream.history.RewindScan` (newest first, in pages); ``W`` is
       the scan's ``cursor``, the newest id when it began: every event up to it
       was considered by the scan, so later ones are exactly what is left;
    4. buffered events with id > W are posted in order (W follows), until the
       buffer is empty; then, with no await in between, the session is *done*;
    5. from then on the lane posts events with id > W to the connection and drops
       those <= W (the lane may lag behind the replay); the subscription is
       activated in the registry, and once the lane has planned an event past W
       with a subscriber list read after activation, the session is retired.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import streams
from .backoff import backoff_delay
from .errors import BackendUnavailable, ConnectionGone, InvalidMessage, RealtimeError, ReplayGap, Throttled
from .fanout import MarkerSet, SubscriberCache, decode_entry, keeps, lookup_topics, replay_frames, topic_covers
from .history import ZERO_CURSOR, RewindScan, require_rewind
from .models import Event, Subscription
from .ports import AsyncPoster, ConnectionRegistry, DeadLetter, DeadLetterSink, FanoutMetrics, HistoryReader
from .topics import PRESENCE

log = logging.getLogger("rtstream.fanout")

BROKEN = 0  # pseudo-status of a post that got no answer
U64 = 2**64 - 1
_STRICT_ID = re.compile(r"(\d{1,20})-(\d{1,20})")

Done = Callable[[], Awaitable[None] | None]
Fetch = Callable[[str], Awaitable[dict | None]]


def strict_id_key(event_id: str) -> tuple[int, int]:
    """Whole-string ``ms-seq`` with both parts <= 2^64-1; InvalidMessage otherwise.
    ("0"/"" stand for the beginning, as in history.id_key.)"""
    if event_id in ("", "0"):
        return (0, 0)
    m = _STRICT_ID.fullmatch(event_id) if isinstance(event_id, str) else None
    if m is None or int(m.group(1)) > U64 or int(m.group(2)) > U64:
        raise InvalidMessage(f"malformed event id {event_id[:40]!r}" if isinstance(event_id, str) else "malformed event id")
    return int(m.group(1)), int(m.group(2))


def _key(event_id: str) -> tuple[int, int]:
    try:
        return strict_id_key(event_id)
    except InvalidMessage:
        return (0, 0)


# retry delays of transient failures (rtstream.backoff rule)
RETRY_BASE_SECONDS = 0.05
RETRY_CAP_SECONDS = 2.0


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the backend may come back. Everything else is poison."""
    return isinstance(exc, (BackendUnavailable, Throttled, ConnectionError, TimeoutError, asyncio.TimeoutError))


def retryable_status(status: int) -> bool:
    return status == BROKEN or status == 429 or status >= 500


def _fields_text(fields: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in fields.items():
        k = k.decode(errors="replace") if isinstance(k, bytes) else str(k)
        out[k] = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
    return out


@dataclass
class EngineLimits:
    max_in_flight: int = 5_000  # entries held with their payload, all lanes
    max_per_entity: int = 500  # queued with payload per entity; beyond: id only
    max_replays: int = 32  # replays answered at once
    retry_budget_s: float = 10.0  # a transient failure is retried this long, then dead-lettered
    max_post_attempts: int = 8
    replay_chunk: int = 200  # replay frames pipelined per request batch
    session_ttl_s: float = 30.0  # a done session is retired after this at the latest
    buffer_cap: int = 5_000  # live events buffered per running replay; beyond: re-read history
    max_batch: int = 64  # consecutive events of one entity handled as one batch
    rewind_max_scan: int = 1_000  # history read by one rewind at most (the worker: history_maxlen)


RUNNING = "running"
DONE = "done"


@dataclass
class ReplaySession:
    request: streams.ReplayRequest
    state: str = RUNNING
    watermark: tuple[int, int] = (0, 0)
    buffer: list[Event] = field(default_factory=list)
    overflow: bool = False
    activated_at: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.request.connection_id, self.request.topic)


@dataclass
class _Item:
    entry_id: str
    fields: dict | None  # None: parked, fetch again when the lane gets there
    done: Done
    fetch: Fetch | None
    owned: Callable[[], bool]


@dataclass
class _Lane:
    entity_id: str
    queue: deque[_Item] = field(default_factory=deque)
    loaded: int = 0  # items of the queue that hold their payload
    task: asyncio.Task | None = None


class FanoutEngine:
    def __init__(
        self,
        *,
        registry: ConnectionRegistry,
        history: HistoryReader,
        poster: AsyncPoster,
        dead_letters: DeadLetterSink,
        metrics: FanoutMetrics,
        limits: EngineLimits | None = None,
        cache: SubscriberCache | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.history = history
        self.poster = poster
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.limits = limits or EngineLimits()
        self.cache = cache or SubscriberCache()
        self.activated = MarkerSet()
        self.monotonic = monotonic
        self._budget = asyncio.Semaphore(self.limits.max_in_flight)
        self._replay_slots = asyncio.Semaphore(self.limits.max_replays)
        self._lanes: dict[str, _Lane] = {}
        # entity -> (connection, topic) -> session; running and recently done replays
        self.sessions: dict[str, dict[tuple[str, str], ReplaySession]] = {}
        self._replays: set[asyncio.Task] = set()
        self._closing = False

    # ---- the event lanes -------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(len(lane.queue) for lane in self._lanes.values())

    async def submit(self, entry_id: str, fields: dict, done: Done, *, fetch: Fetch | None = None, owned: Callable[[], bool] = lambda: True) -> None:
        """Queue an event-stream entry on its entity's lane. Waits while the
        in-flight budget is used up (backpressure on the reader)."""
        entity_id = _fields_text({"entity": fields.get("entity", fields.get(b"entity", ""))})["entity"]
        lane = self._lanes.get(entity_id)
        if lane is None:
            lane = self._lanes[entity_id] = _Lane(entity_id)
        # keep the payload only while the entity is under its share (and a refetch is possible)
        keep = fetch is None or lane.loaded < self.limits.max_per_entity
        if keep:
            await self._budget.acquire()
            lane = self._lanes.setdefault(entity_id, lane)
            lane.loaded += 1
        lane.queue.append(_Item(entry_id, fields if keep else None, done, fetch, owned))
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._run_lane(lane), name=f"fanout-lane-{entity_id[:40]}")

    async def _run_lane(self, lane: _Lane) -> None:
        while lane.queue:
            items = self._take_batch(lane)
            try:
                owned = [item for item in items if item.owned()]
                if len(owned) > 1:
                    await self._handle_event_batch(lane.entity_id, owned)
                elif owned:
                    item = owned[0]
                    fields = item.fields
                    if fields is None and item.fetch is not None:
                        fields = await self._with_retries(lambda: item.fetch(item.entry_id), lane.entity_id, item.entry_id, "events", {})
                    if fields is not None:
                        await self._handle_entry(item.entry_id, fields)
                # a lane that lost its partition leaves the entries pending for the new owner
                for item in owned:
                    if item.owned():
                        result = item.done()
                        if asyncio.iscoroutine(result):
                            await result
            except Exception:  # noqa: BLE001 - a lane must outlive any error
                log.exception("lane %s: unexpected error on entries %s..%s", lane.entity_id[:60], items[0].entry_id, items[-1].entry_id)
            finally:
                for item in items:
                    lane.queue.popleft()
                    if item.fields is not None:
                        lane.loaded -= 1
                        self._budget.release()
        if self._lanes.get(lane.entity_id) is lane and not lane.queue:
            del self._lanes[lane.entity_id]

    def _take_batch(self, lane: _Lane) -> list[_Item]:
        """The front entry, or a run of consecutive loaded event entries (one
        subscriber lookup and one pipelined post per connection for the run)."""
        items = [lane.queue[0]]
        if not _is_event(items[0].fields):
            return items
        for item in list(lane.queue)[1 : self.limits.max_batch]:
            if not _is_event(item.fields):
                break
            items.append(item)
        return items

    async def _handle_event_batch(self, entity_id: str, items: list[_Item]) -> None:
        events: list[tuple[_Item, Event]] = []
        for item in items:
            assert item.fields is not None
            try:
                entry = decode_entry(item.entry_id, item.fields)
            except (ValueError, KeyError, TypeError) as exc:
                await self._dead_letter(f"undecodable: {exc}", item.entry_id, item.fields, "events")
                continue
            if isinstance(entry, Event):
                events.append((item, entry))
            else:
                await self._handle_entry(item.entry_id, item.fields)  # not an event after all: as it comes
        if not events:
            return
        self.metrics.add("events", len(events))
        started = self.monotonic()

        async def lookup() -> dict[tuple[str, ...], list[Subscription]]:
            found: dict[tuple[str, ...], list[Subscription]] = {}
            for _, event in events:
                topics = lookup_topics(event)
                if topics not in found:
                    found[topics] = await self._subscribers(event)
            return found

        try:
            subs = await self._with_retries(lookup, entity_id, events[0][0].entry_id, "events", events[0][0].fields or {}, dead_letter=False)
        except _GaveUp as exc:
            for item, _ in events:
                await self._dead_letter(exc.reason, item.entry_id, item.fields or {}, "events", entity_id)
            return
        frames: dict[str, list[tuple[bytes, int]]] = {}
        for _, event in events:
            targets = self.plan(event, subs[lookup_topics(event)], started)
            if targets:
                data = event.wire_json().encode()
                for cid in targets:
                    frames.setdefault(cid, []).append((data, event.published_at_ms))
        gone: list[str] = []

        async def post(cid: str, batch: list[tuple[bytes, int]]) -> None:
            try:
                delivered = await self.post_in_order(cid, [data for data, _ in batch])
            except ConnectionGone:
                gone.append(cid)
                return
            self.metrics.add("deliveries", delivered)
            now_ms = time.time() * 1000
            for _, published_at_ms in batch[:delivered]:
                if published_at_ms:
                    self.metrics.observe_latency(max(0.0, now_ms - published_at_ms))

        await asyncio.gather(*(post(cid, batch) for cid, batch in frames.items()))
        if gone:
            await self.prune(gone)

    async def _handle_entry(self, entry_id: str, fields: dict) -> None:
        try:
            entry = decode_entry(entry_id, fields)
        except (ValueError, KeyError, TypeError) as exc:
            await self._dead_letter(f"undecodable: {exc}", entry_id, fields, "events")
            return
        if entry is None:
            await self._dead_letter("unknown entry kind", entry_id, fields, "events")
            return
        if isinstance(entry, Event):
            self.metrics.add("events")
            await self._with_retries(lambda: self._fan_out(entry), entry.entity_id, entry_id, "events", fields)
        elif isinstance(entry, streams.SubscriptionsChanged):
            self.cache.invalidate(entry.entity_id, entry.topics)
            sessions = self.sessions.get(entry.entity_id, {})
            for key in [k for k in sessions if k[0] == entry.connection_id and k[1] in entry.topics]:
                del sessions[key]  # unsubscribed or gone: the replay's promise ends here
        elif isinstance(entry, streams.ReplayRequest):
            # queued on the event stream by an older version: answer it like the replay lane
            await self.replay(entry_id, fields)

    async def _with_retries(self, attempt: Callable[[], Awaitable[Any]], entity_id: str, entry_id: str, lane: str, fields: dict, *, dead_letter: bool = True) -> Any:
        """Run ``attempt``; transient failures retried within the budget, then
        dead-lettered; anything else dead-lettered at once. None after a dead
        letter (``dead_letter=False``: raise _GaveUp with the reason instead)."""
        deadline = self.monotonic() + self.limits.retry_budget_s
        failures = 0
        while True:
            try:
                return await attempt()
            except Exception as exc:  # noqa: BLE001 - classified below
                if not is_transient(exc):
                    reason = f"{exc.code}: {exc}" if isinstance(exc, RealtimeError) else f"poison: {type(exc).__name__}: {exc}"
                    if not isinstance(exc, RealtimeError):
                        log.exception("entry %s of %s failed", entry_id, entity_id[:60])
                    if not dead_letter:
                        raise _GaveUp(reason) from exc
                    await self._dead_letter(reason, entry_id, fields, lane, entity_id)
                    return None
                failures += 1
                left = deadline - self.monotonic()
                if left <= 0:
                    reason = f"retries exhausted after {failures} attempts: {exc}"
                    if not dead_letter:
                        raise _GaveUp(reason) from exc
                    await self._dead_letter(reason, entry_id, fields, lane, entity_id)
                    return None
                log.warning("entry %s of %s: %s; retrying", entry_id, entity_id[:60], exc)
                await asyncio.sleep(min(left, backoff_delay(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)))

    async def _dead_letter(self, reason: str, entry_id: str, fields: dict, lane: str, entity_id: str | None = None) -> None:
        text = _fields_text(fields)
        letter = DeadLetter(reason=reason[:500], entity_id=entity_id if entity_id is not None else text.get("entity", ""), entry_id=entry_id, lane=lane, fields=text)
        self.metrics.add("dead_letters")
        log.error("dead-lettered %s entry %s of %r: %s", lane, entry_id, letter.entity_id[:60], letter.reason)
        try:
            await self.dead_letters.dead_letter(letter)
        except Exception as exc:  # noqa: BLE001 - counted and logged; never blocks the lane
            log.error("could not record dead letter %s: %s", entry_id, exc)

    # ---- one event -------------------------------------------------------------------

    async def _fan_out(self, event: Event) -> None:
        started = self.monotonic()
        subs = await self._subscribers(event)
        targets = self.plan(event, subs, started)
        if targets:
            await self.deliver(targets, event.wire_json().encode(), event.published_at_ms)

    async def _subscribers(self, event: Event) -> list[Subscription]:
        found: list[Subscription] = []
        missing = []
        now = self.monotonic()
        for topic in lookup_topics(event):
            cached = self.cache.get(event.entity_id, topic, now)
            if cached is None:
                missing.append(topic)
            else:
                found += cached
        if missing:
            fetched = await asyncio.gather(*(asyncio.to_thread(self.registry.subscribers, event.entity_id, t) for t in missing))
            for topic, subs in zip(missing, fetched):
                self.cache.put(event.entity_id, topic, subs, now)
                found += subs
        return found

    def plan(self, event: Event, subscriptions: Sequence[Subscription], looked_up_at: float) -> list[str]:
        """Connections to post ``event`` to now (buffers it for running replays).
        No await: runs atomically with respect to the replays."""
        targets: dict[str, None] = {}
        steered: set[tuple[str, str]] = set()
        event_key = _key(event.id)
        sessions = self.sessions.get(event.entity_id)
        if sessions:
            now = self.monotonic()
            for key, session in list(sessions.items()):
                if session.state == DONE and now - session.activated_at > self.limits.session_ttl_s:
                    del sessions[key]
                    continue
                req = session.request
                if not topic_covers(req.topic, event.topic):
                    continue
                steered.add(key)
                if not keeps(req.filters, event):
                    continue
                if session.state == RUNNING:
                    self._buffer(session, event)
                elif event.topic == PRESENCE or event_key > session.watermark:
                    targets[req.connection_id] = None
                    if session.activated_at < looked_up_at:
                        del sessions[key]  # the registry path covers it from here on
            if not sessions:
                del self.sessions[event.entity_id]
        for sub in subscriptions:
            if sub.entity_id != event.entity_id or sub.connection_id in targets or (sub.connection_id, sub.topic) in steered:
                continue
            if not topic_covers(sub.topic, event.topic):
                continue
            if sub.pending_replay is not None and sub.pending_replay not in self.activated:
                continue  # its replay has not started: the replay will read this event from history
            if keeps(sub.filters, event):
                targets[sub.connection_id] = None
        return list(targets)

    def _buffer(self, session: ReplaySession, event: Event) -> None:
        if session.overflow:
            return
        if len(session.buffer) >= self.limits.buffer_cap:
            session.overflow = True  # the replay re-reads history instead
            session.buffer = [e for e in session.buffer if e.topic == PRESENCE]
            return
        session.buffer.append(event)

    # ---- posting ---------------------------------------------------------------------

    async def deliver(self, connection_ids: Sequence[str], data: bytes, published_at_ms: int = 0) -> None:
        ids = list(connection_ids)
        attempt = 0
        while ids:
            statuses = await self.poster.post_many(ids, data)
            ok = sum(1 for s in statuses if 200 <= s < 300)
            if ok:
                self.metrics.add("deliveries", ok)
                if published_at_ms:
                    self.metrics.observe_latency(max(0.0, time.time() * 1000 - published_at_ms), ok)
            gone = [cid for cid, s in zip(ids, statuses) if s == 410]
            retry = [cid for cid, s in zip(ids, statuses) if retryable_status(s)]
            refused = len(ids) - ok - len(gone) - len(retry)
            if refused:
                self.metrics.add("delivery_errors", refused)
                log.warning("%d posts refused", refused)
            if gone:
                await self.prune(gone)
            attempt += 1
            if retry and attempt < self.limits.max_post_attempts and not self._closing:
                self.metrics.add("retries", len(retry))
                await asyncio.sleep(backoff_delay(attempt, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
                ids = retry
                continue
            if retry:
                self.metrics.add("delivery_errors", len(retry))
                log.warning("giving up on %d posts after %d attempts", len(retry), attempt)
            break

    async def prune(self, connection_ids: Sequence[str]) -> None:
        for cid in connection_ids:
            self.cache.remove_connection(cid)
            for entity, sessions in list(self.sessions.items()):
                for key in [k for k in sessions if k[0] == cid]:
                    del sessions[key]
                if not sessions:
                    self.sessions.pop(entity, None)
        results = await asyncio.gather(*(asyncio.to_thread(self.registry.remove_connection, cid) for cid in connection_ids), return_exceptions=True)
        for cid, r in zip(connection_ids, results):
            if isinstance(r, BaseException):
                log.warning("could not prune connection %s: %s", cid, r)
            else:
                self.metrics.add("pruned")
                log.info("pruned stale connection %s (410 Gone)", cid)

    async def post_in_order(self, connection_id: str, frames: Sequence[bytes]) -> int:
        """Post frames to one connection in order, in chunks; number delivered.
        Raises ConnectionGone at the first 410 (nothing after it is sent)."""
        delivered = 0
        chunk = self.limits.replay_chunk
        for start in range(0, len(frames), chunk):
            part = frames[start : start + chunk]
            statuses = await self.poster.post_in_order(connection_id, part)
            for i, status in enumerate(statuses):
                if 200 <= status < 300:
                    delivered += 1
                    continue
                if status == 410:
                    raise ConnectionGone(connection_id)
                # retry the rest of the chunk one by one, in order
                for frame in part[i:]:
                    delivered += await self._post_one(connection_id, frame)
                break
        return delivered

    async def _post_one(self, connection_id: str, frame: bytes) -> int:
        for attempt in range(self.limits.max_post_attempts):
            status = await self.poster.post(connection_id, frame)
            if 200 <= status < 300:
                return 1
            if status == 410:
                raise ConnectionGone(connection_id)
            if not retryable_status(status):
                break
            self.metrics.add("retries")
            await asyncio.sleep(backoff_delay(attempt + 1, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
        self.metrics.add("delivery_errors")
        return 0

    # ---- the replay lane -------------------------------------------------------------

    def start_replay(self, entry_id: str, fields: dict, done: Done) -> asyncio.Task:
        """Answer a replay request concurrently (bounded by ``max_replays``); ``done``
        runs when it is finished (answered, abandoned or dead-lettered)."""

        async def run() -> None:
            async with self._replay_slots:
                try:
                    await self.replay(entry_id, fields)
                except Exception:  # noqa: BLE001 - one replay never takes the lane down
                    log.exception("replay %s failed", entry_id)
            result = done()
            if asyncio.iscoroutine(result):
                await result

        task = asyncio.create_task(run(), name=f"fanout-replay-{entry_id}")
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)
        return task

    @property
    def replays_running(self) -> int:
        return len(self._replays)

    async def replay_slot_free(self) -> None:
        """Wait until a replay could start at once (the reader's backpressure)."""
        while self._replay_slots.locked() or len(self._replays) >= 2 * self.limits.max_replays:
            await asyncio.sleep(0.005)

    async def replay(self, entry_id: str, fields: dict) -> None:
        try:
            req = streams.decode(fields)
        except (ValueError, KeyError, TypeError) as exc:
            await self._dead_letter(f"undecodable: {exc}", entry_id, fields, "replay")
            return
        if not isinstance(req, streams.ReplayRequest) or not req.connection_id or not req.entity_id:
            await self._dead_letter("not a replay request", entry_id, fields, "replay")
            return
        try:
            if req.rewind:
                require_rewind(req.rewind)  # the wire's text: digits only, 1..MAX_REWIND
                since = (0, 0)
            else:
                since = strict_id_key(req.since)
        except InvalidMessage as exc:
            await self._refuse_replay(req, entry_id, fields, exc)
            return
        self.metrics.add("replays")
        # a cursor ahead of the entity's newest id (``until``) claims events that
        # never existed: nothing is missing, live delivery starts after ``until``
        session = ReplaySession(req, watermark=min(since, _key(req.until)) if req.until else since)
        self.sessions.setdefault(req.entity_id, {})[session.key] = session  # before history is read
        try:
            await self._answer(session, entry_id, fields)
        except ConnectionGone:
            self._forget(session)
            self.metrics.add("replays_abandoned")
            await self.prune([req.connection_id])
        except _DeadLettered:
            self._forget(session)
        except BaseException:
            self._forget(session)
            raise

    async def _answer(self, session: ReplaySession, entry_id: str, fields: dict) -> None:
        req = session.request
        if req.rewind:
            scan = await self._rewind(req, entry_id, fields)
            # every id <= cursor was considered by the scan: live delivery starts after it
            session.watermark = _key(scan.cursor)
            frames = replay_frames(req, scan.events, cursor=scan.cursor or ZERO_CURSOR)
            replayed: list[Event] | ReplayGap = []
        else:
            try:
                replayed = await self._read(lambda: self.history.replay(req.entity_id, req.since, None), entry_id, fields)
            except ReplayGap as gap:
                replayed = gap
                self.metrics.add("replay_gaps")
            frames = replay_frames(req, replayed)
        if isinstance(replayed, ReplayGap):
            # the client must resynchronise; live delivery starts after the newest
            # id at subscribe time (``until``, read atomically with the request)
            session.watermark = _key(req.until)
        elif replayed:
            session.watermark = max(session.watermark, _key(replayed[-1].id))
        # `subscribed` alone first: a connection that is gone costs one post
        await self.post_in_order(req.connection_id, frames[:1])
        self.metrics.add("deliveries", await self.post_in_order(req.connection_id, frames[1:]))
        while session.buffer or session.overflow:
            if session.overflow:
                session.overflow = False
                since = f"{session.watermark[0]}-{session.watermark[1]}"
                try:
                    newer = await self._read(lambda: self.history.replay(req.entity_id, since, None), entry_id, fields)
                except ReplayGap:
                    newer = []
                batch = [e for e in session.buffer if e.topic == PRESENCE] + list(newer)
            else:
                batch = session.buffer
            session.buffer = []
            out = []
            for event in batch:
                if event.topic != PRESENCE:
                    k = _key(event.id)
                    if k <= session.watermark:
                        continue
                    session.watermark = k
                if topic_covers(req.topic, event.topic) and keeps(req.filters, event):
                    out.append(event.wire_json().encode())
            self.metrics.add("deliveries", await self.post_in_order(req.connection_id, out))
        # no await between the empty-buffer check above and this line: the seam
        session.state = DONE
        session.activated_at = self.monotonic()
        if req.marker:
            self.activated.add(req.marker)
        self.cache.add(Subscription(req.connection_id, req.entity_id, req.topic, filters=req.filters))
        try:
            await self._read(lambda: asyncio.to_thread(self.registry.clear_pending_replay, req.connection_id, req.entity_id, req.topic, req.marker), entry_id, fields)
        except _DeadLettered:
            pass  # delivered already; the in-process marker keeps it active here

    async def _rewind(self, req: streams.ReplayRequest, entry_id: str, fields: dict) -> RewindScan:
        """The last ``req.rewind`` events the subscription keeps (the core's rule,
        driven page by page over ``HistoryReader.recent``)."""

        def wants(event: Event) -> bool:
            return event.entity_id == req.entity_id and topic_covers(req.topic, event.topic) and keeps(req.filters, event)

        scan = RewindScan(require_rewind(req.rewind), wants, max_scan=self.limits.rewind_max_scan)
        while scan.more:
            before = scan.before
            scan.feed(await self._read(lambda: self.history.recent(req.entity_id, scan.page_size, before=before), entry_id, fields))
        return scan

    async def _read(self, attempt: Callable[[], Awaitable[Any]], entry_id: str, fields: dict) -> Any:
        """A backend step of a replay: transient failures retried within the
        budget; ReplayGap passes through; anything else dead-letters the request."""
        deadline = self.monotonic() + self.limits.retry_budget_s
        failures = 0
        while True:
            try:
                return await attempt()
            except ReplayGap:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                entity = _fields_text(fields).get("entity", "")
                if not is_transient(exc):
                    reason = f"{exc.code}: {exc}" if isinstance(exc, RealtimeError) else f"poison: {type(exc).__name__}: {exc}"
                    await self._dead_letter(reason, entry_id, fields, "replay", entity)
                    raise _DeadLettered() from exc
                failures += 1
                left = deadline - self.monotonic()
                if left <= 0:
                    await self._dead_letter(f"retries exhausted after {failures} attempts: {exc}", entry_id, fields, "replay", entity)
                    raise _DeadLettered() from exc
                await asyncio.sleep(min(left, backoff_delay(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)))

    async def _refuse_replay(self, req: streams.ReplayRequest, entry_id: str, fields: dict, exc: RealtimeError) -> None:
        """A request no retry can answer: dead letter, tell the client, drop the
        pending subscription (nobody would ever activate it)."""
        await self._dead_letter(f"{exc.code}: {exc}", entry_id, fields, "replay", req.entity_id)
        frame = json.dumps(exc.to_frame(), separators=(",", ":")).encode()
        try:
            await self._post_one(req.connection_id, frame)
        except ConnectionGone:
            await self.prune([req.connection_id])
            return
        try:
            await asyncio.to_thread(self.registry.remove_subscription, req.connection_id, req.entity_id, req.topic)
        except Exception as err:  # noqa: BLE001 - the subscription expires with its TTL
            log.warning("could not drop refused pending subscription: %s", err)

    def _forget(self, session: ReplaySession) -> None:
        sessions = self.sessions.get(session.request.entity_id)
        if sessions is not None and sessions.get(session.key) is session:
            del sessions[session.key]
            if not sessions:
                del self.sessions[session.request.entity_id]

    # ---- lifecycle -------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Until no lane has work and no replay runs (tests, shutdown)."""
        while True:
            tasks = [lane.task for lane in self._lanes.values() if lane.task is not None and not lane.task.done()] + [t for t in self._replays if not t.done()]
            if not tasks:
                if not self._lanes and not self._replays:
                    return
                await asyncio.sleep(0)
                continue
            await asyncio.wait(tasks)

    async def drain(self, timeout_s: float = 15.0) -> None:
        """Let queued entries and running replays finish (bounded)."""
        self._closing = True
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None] + list(self._replays)
        tasks = [t for t in tasks if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


class _DeadLettered(Exception):
    """A replay step was dead-lettered: stop answering it."""


class _GaveUp(Exception):
    """Retries of a batch step ended; the caller dead-letters each entry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_event(fields: dict | None) -> bool:
    if fields is None:
        return False
    kind = fields.get("kind", fields.get(b"kind"))
    return kind in (streams.KIND_EVENT, streams.KIND_EVENT.encode())


