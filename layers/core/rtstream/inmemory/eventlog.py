"""In-memory :class:`~rtstream.ports.EventLog` with the Redis semantics.

Per-entity history streams capped at ``history_maxlen`` (exact trimming) that
expire ``history_ttl_seconds`` after their last event, a horizon (highest lost
id) as the Redis append script keeps it, and the partition work streams with
the same entry format as Redis (:mod:`rtstream.streams`). Replays go through the
same pure rule as every other reader (:func:`rtstream.history.replay_events`).

Tests read the partition streams with :meth:`InMemoryEventLog.partition_entries`
and feed them to :mod:`rtstream.fanout`, so fan-out is tested without Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import keys, streams
from ..history import entry_fields, event_from_entry, format_id, id_key, replay_events
from ..models import Event, Subscription
from ..ports import Appended, Clock, SystemClock
from ..settings import Settings

EntryId = tuple[int, int]


def _next_id(last: EntryId, now_ms: int) -> EntryId:
    """Redis ``XADD *``: the clock's ms, or the last id's ms with the next sequence."""
    if now_ms > last[0]:
        return (now_ms, 0)
    return (last[0], last[1] + 1)


@dataclass
class _History:
    entries: list[tuple[EntryId, dict[str, str]]] = field(default_factory=list)
    last: EntryId = (0, 0)
    horizon: EntryId = (0, 0)
    expires_at_ms: int = 0


class InMemoryEventLog:
    def __init__(self, settings: Settings | None = None, clock: Clock | None = None) -> None:
        self.settings = settings or Settings()
        self.clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._history: dict[str, _History] = {}
        self._partitions: dict[int, list[tuple[str, dict[str, str]]]] = {}
        self._partition_last: dict[int, EntryId] = {}
        self._replays: dict[int, list[tuple[str, dict[str, str]]]] = {}  # the replay lane (keys.replay_stream)
        # (entity, idempotency key) -> (first event id, expiry ms), as keys.idempotency
        self._idempotency: dict[tuple[str, str], tuple[str, int]] = {}

    # ---- internals ---------------------------------------------------------

    def _live_history(self, entity_id: str, now_ms: int) -> _History | None:
        h = self._history.get(entity_id)
        if h is not None and h.expires_at_ms <= now_ms:
            del self._history[entity_id]
            return None
        return h

    def _queue(self, partition: int, fields: dict[str, str], now_ms: int) -> str:
        new = _next_id(self._partition_last.get(partition, (0, 0)), now_ms)
        self._partition_last[partition] = new
        entries = self._partitions.setdefault(partition, [])
        entry_id = format_id(new)
        entries.append((entry_id, fields))
        excess = len(entries) - self.settings.fanout_stream_maxlen
        if excess > 0:
            del entries[:excess]
        return entry_id

    # ---- EventLog port -----------------------------------------------------

    def append(self, entity_id: str, topic: str, data: dict[str, Any], source: str, *, record_history: bool = True) -> Event:
        with self._lock:
            now = self.clock.now_ms()
            fields = entry_fields(topic, data, source, now)
            partition = keys.partition_of(entity_id, self.settings)
            if record_history:
                h = self._live_history(entity_id, now)
                if h is None:
                    h = self._history[entity_id] = _History()
                    created = True
                else:
                    created = False
                new = _next_id(h.last, now)
                h.last = new
                h.entries.append((new, fields))
                if created:
                    # Whatever an earlier, expired stream held is lost (see rtstream.history).
                    h.horizon = new
                excess = len(h.entries) - self.settings.history_maxlen
                if excess > 0:
                    h.horizon = max(h.horizon, h.entries[excess - 1][0])
                    del h.entries[:excess]
                h.expires_at_ms = now + self.settings.history_ttl_seconds * 1000
                event_id = format_id(new)
                event = Event(id=event_id, entity_id=entity_id, topic=topic, data=dict(data), source=source, timestamp=fields["ts"], published_at_ms=now)
                self._queue(partition, streams.encode_event(event), now)
                return event
            # Not recorded (e.g. presence): the id is the work-stream entry's own.
            new = _next_id(self._partition_last.get(partition, (0, 0)), now)
            event = Event(id=format_id(new), entity_id=entity_id, topic=topic, data=dict(data), source=source, timestamp=fields["ts"], published_at_ms=now)
            self._queue(partition, streams.encode_event(event), now)
            return event

    def replay(self, entity_id: str, since: str, until: str | None = None) -> list[Event]:
        with self._lock:
            h = self._live_history(entity_id, self.clock.now_ms())
            if h is None:
                return replay_events(entity_id, since, until, exists=False, horizon=None, entries=())
            entries = [(format_id(k), f) for k, f in h.entries if k > id_key(since)]
            horizon = format_id(h.horizon) if h.horizon != (0, 0) else None
            return replay_events(entity_id, since, until, exists=True, horizon=horizon, entries=entries)

    def last_id(self, entity_id: str) -> str:
        """The entity's last retained history id, "" when it has none."""
        with self._lock:
            h = self._live_history(entity_id, self.clock.now_ms())
            return format_id(h.entries[-1][0]) if h and h.entries else ""

    def recent(self, entity_id: str, count: int, before: str | None = None) -> list[Event]:
        with self._lock:
            h = self._live_history(entity_id, self.clock.now_ms())
            if h is None:
                return []
            upper = id_key(before) if before else None
            out: list[Event] = []
            for key, fields in reversed(h.entries):
                if upper is not None and key >= upper:
                    continue
                if len(out) >= count:
                    break
                out.append(event_from_entry(entity_id, format_id(key), fields))
            return out

    def request_replay(self, subscription: Subscription, since: str, rewind: int = 0) -> str:
        with self._lock:
            now = self.clock.now_ms()
            req = streams.ReplayRequest(
                marker=subscription.pending_replay or "",
                connection_id=subscription.connection_id,
                entity_id=subscription.entity_id,
                topic=subscription.topic,
                filters=subscription.filters,
                since=since,
                until=self.last_id(subscription.entity_id),
                rewind=str(rewind) if rewind else "",
            )
            partition = keys.partition_of(subscription.entity_id, self.settings)
            # own id sequence per partition, like a separate Redis stream
            entry_id = format_id(_next_id(id_key(self._replays[partition][-1][0]) if self._replays.get(partition) else (0, 0), now))
            self._replays.setdefault(partition, []).append((entry_id, streams.encode_replay(req)))
            return entry_id

    def notify_changed(self, entity_id: str, topics: Sequence[str], connection_id: str) -> None:
        with self._lock:
            change = streams.SubscriptionsChanged(entity_id=entity_id, topics=tuple(topics), connection_id=connection_id)
            self._queue(keys.partition_of(entity_id, self.settings), streams.encode_changed(change), self.clock.now_ms())

    def append_idempotent(self, entity_id: str, topic: str, data: dict[str, Any], source: str, idempotency_key: str) -> Appended:
        with self._lock:
            now = self.clock.now_ms()
            prior = self._idempotency.get((entity_id, idempotency_key))
            if prior is not None and prior[1] > now:
                fields = entry_fields(topic, data, source, now)
                return Appended(Event(id=prior[0], entity_id=entity_id, topic=topic, data=dict(data), source=source,
                                      timestamp=fields["ts"], published_at_ms=now), True)
            event = self.append(entity_id, topic, data, source)
            window = keys.idempotency(entity_id, idempotency_key, self.settings).ttl_seconds or 0
            if len(self._idempotency) > 10_000:  # expire like the Redis keys do
                self._idempotency = {k: v for k, v in self._idempotency.items() if v[1] > now}
            self._idempotency[(entity_id, idempotency_key)] = (event.id, now + window * 1000)
            return Appended(event, False)

    # ---- reading (tests, the in-process fan-out) ------------------------------

    def partition_entries(self, partition: int, after: str | None = None) -> list[tuple[str, dict[str, str]]]:
        """Entries of one work stream, oldest first, optionally only those after ``after``."""
        with self._lock:
            entries = list(self._partitions.get(partition, ()))
        if after:
            bound = id_key(after)
            entries = [(i, f) for i, f in entries if id_key(i) > bound]
        return entries

    def replay_entries(self, partition: int) -> list[tuple[str, dict[str, str]]]:
        """Replay requests of one partition (the replay lane), oldest first."""
        with self._lock:
            return list(self._replays.get(partition, ()))

    def entries_for(self, entity_id: str, after: str | None = None) -> list[tuple[str, dict[str, str]]]:
        """Work-stream entries of one entity (its partition, filtered to it), in order."""
        partition = keys.partition_of(entity_id, self.settings)
        return [(i, f) for i, f in self.partition_entries(partition, after) if f.get("entity") == entity_id]
