"""Fan-out building blocks, pure, no I/O (used by :mod:`rtstream.fanout_engine`).

- which subscription topics an event goes to (``*`` never carries presence),
  and whether a subscription's topic and filters keep it;
- the frames a replay sends: ``subscribed``, then the replayed history
  (filtered like live events) or a ``replay_gap`` error, in that order;
- the subscriber cache (coherent through ``changed`` entries) and the set of
  replay markers already activated in this process.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import replace

from . import streams
from .errors import ReplayGap
from .models import Event, Filters, Subscription
from .topics import PRESENCE, WILDCARD

Entry = Event | streams.ReplayRequest | streams.SubscriptionsChanged


def decode_entry(entry_id: str | bytes, fields: dict) -> Entry | None:
    """Decode a work-stream entry; an event queued without history takes the entry's id."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    entry = streams.decode(fields)
    if isinstance(entry, Event) and not entry.id:
        entry = replace(entry, id=entry_id)
    return entry


def lookup_topics(event: Event) -> tuple[str, ...]:
    """Subscription topics an event is delivered to (``*`` never carries presence)."""
    if event.topic == PRESENCE or event.topic == WILDCARD:
        return (event.topic,)
    return (event.topic, WILDCARD)


def topic_covers(subscribed: str, event_topic: str) -> bool:
    if subscribed == event_topic:
        return True
    return subscribed == WILDCARD and event_topic != PRESENCE


def keeps(filters: Filters, event: Event) -> bool:
    return filters.empty or filters.matches(event.topic, event.source, event.data)


def subscribed_frame(topic: str, cursor: str = "") -> bytes:
    frame = {"type": "subscribed", "topic": topic}
    if cursor:
        frame["cursor"] = cursor
    return json.dumps(frame, separators=(",", ":")).encode()


def replay_frames(request: streams.ReplayRequest, replayed: Sequence[Event] | ReplayGap, cursor: str = "") -> list[bytes]:
    """What a ``replay`` entry sends to its connection, in order. ``cursor`` (a
    rewind's): the newest id its scan considered, carried by ``subscribed``."""
    frames = [subscribed_frame(request.topic, cursor)]
    if isinstance(replayed, ReplayGap):
        frames.append(json.dumps(replayed.to_frame(), separators=(",", ":")).encode())
        return frames
    for event in replayed:
        if event.entity_id == request.entity_id and topic_covers(request.topic, event.topic) and keeps(request.filters, event):
            frames.append(event.wire_json().encode())
    return frames


class SubscriberCache:
    """Subscribers per ``(entity, topic)``, bounded (LRU) and aged.

    Coherent because every subscription change queues a ``changed`` or
    ``replay`` entry in the same ordered stream as the entity's events: the
    reader invalidates at that point, before any later event. ``max_age_s``
    bounds the staleness if such an entry could not be queued (Redis down
    during a subscribe); ``now`` is any monotonic clock in seconds.
    """

    def __init__(self, max_keys: int = 10_000, max_age_s: float = 60.0) -> None:
        self.max_keys = max_keys
        self.max_age_s = max_age_s
        self._items: OrderedDict[tuple[str, str], tuple[float, list[Subscription]]] = OrderedDict()

    def get(self, entity_id: str, topic: str, now: float = 0.0) -> list[Subscription] | None:
        key = (entity_id, topic)
        item = self._items.get(key)
        if item is None:
            return None
        if now - item[0] > self.max_age_s:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, entity_id: str, topic: str, subscriptions: list[Subscription], now: float = 0.0) -> None:
        key = (entity_id, topic)
        self._items[key] = (now, subscriptions)
        self._items.move_to_end(key)
        while len(self._items) > self.max_keys:
            self._items.popitem(last=False)

    def invalidate(self, entity_id: str, topics: Iterable[str]) -> None:
        for topic in topics:
            self._items.pop((entity_id, topic), None)

    def add(self, subscription: Subscription) -> None:
        """A subscription just activated: patch a cached list instead of dropping
        it (a fresh lookup per resume would slow the lane under churn)."""
        key = (subscription.entity_id, subscription.topic)
        item = self._items.get(key)
        if item is not None:
            subs = [s for s in item[1] if s.connection_id != subscription.connection_id]
            self._items[key] = (item[0], subs + [subscription])

    def remove_connection(self, connection_id: str) -> None:
        """A pruned connection: drop it from every cached list."""
        for key, (stamp, subs) in list(self._items.items()):
            if any(s.connection_id == connection_id for s in subs):
                self._items[key] = (stamp, [s for s in subs if s.connection_id != connection_id])

    def __len__(self) -> int:
        return len(self._items)


class MarkerSet:
    """Replay markers a reader has passed (bounded, oldest forgotten first).

    Lets live delivery start right after the marker even before the registry's
    ``clear_pending_replay`` write is visible to the next read.
    """

    def __init__(self, max_items: int = 100_000) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, None] = OrderedDict()

    def add(self, marker: str) -> None:
        self._items[marker] = None
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def __contains__(self, marker: object) -> bool:
        return marker in self._items

    def __len__(self) -> int:
        return len(self._items)
