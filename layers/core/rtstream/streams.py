"""Entries of the fan-out work streams (``keys.fanout_stream``), encoded and decoded.

A partition stream carries, in publish order for each entity:

- ``kind=event``: an event, already recorded in the entity's history;
- ``kind=replay``: a subscribe with ``since``: the fan-out answers ``subscribed``,
  replays history ``(since, until]`` (filtered), then activates the subscription;
  with ``rewind`` (and no ``since``) it sends the last N matching events instead
  (:class:`rtstream.history.RewindScan`); queued on the replay lane;
- ``kind=changed``: subscriptions of an entity changed (subscribe without
  ``since``, unsubscribe, disconnect); readers that cache subscribers drop them.

Because entries of one entity are ordered, a reader that reaches a control
entry has seen exactly the events before it: that ordering is what makes the
replay seam exact and subscriber caches coherent. Field values are strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .models import Event, Filters

KIND_EVENT = "event"
KIND_REPLAY = "replay"
KIND_CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    marker: str
    connection_id: str
    entity_id: str
    topic: str
    filters: Filters
    since: str
    # last history id of the entity when the request was queued ("" if none)
    until: str
    # "N": a rewind of the last N matching events (``since`` is then ""); text as
    # on the wire, checked by the engine with ``history.require_rewind``
    rewind: str = ""


@dataclass(frozen=True, slots=True)
class SubscriptionsChanged:
    entity_id: str
    topics: tuple[str, ...]
    connection_id: str


def encode_event(event: Event) -> dict[str, str]:
    return {
        "kind": KIND_EVENT,
        "id": event.id,
        "entity": event.entity_id,
        "topic": event.topic,
        "source": event.source,
        "ts": event.timestamp,
        "pub": str(event.published_at_ms),
        "data": json.dumps(event.data, separators=(",", ":"), ensure_ascii=False),
    }


def encode_replay(req: ReplayRequest) -> dict[str, str]:
    fields = {
        "kind": KIND_REPLAY,
        "marker": req.marker,
        "conn": req.connection_id,
        "entity": req.entity_id,
        "topic": req.topic,
        "filters": json.dumps(req.filters.to_dict(), separators=(",", ":")),
        "since": req.since,
        "until": req.until,
    }
    if req.rewind:
        fields["rewind"] = req.rewind
    return fields


def encode_changed(change: SubscriptionsChanged) -> dict[str, str]:
    return {
        "kind": KIND_CHANGED,
        "entity": change.entity_id,
        "topics": ",".join(change.topics),
        "conn": change.connection_id,
    }


def _s(fields: dict[Any, Any], name: str) -> str:
    value = fields.get(name, fields.get(name.encode()))
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def decode(fields: dict[Any, Any]) -> Event | ReplayRequest | SubscriptionsChanged | None:
    """Decode one entry (bytes or str keys/values). Unknown kinds -> None (skip)."""
    kind = _s(fields, "kind")
    if kind == KIND_EVENT:
        return Event(
            id=_s(fields, "id"),
            entity_id=_s(fields, "entity"),
            topic=_s(fields, "topic"),
            data=json.loads(_s(fields, "data") or "{}"),
            source=_s(fields, "source"),
            timestamp=_s(fields, "ts"),
            published_at_ms=int(_s(fields, "pub") or 0),
        )
    if kind == KIND_REPLAY:
        return ReplayRequest(
            marker=_s(fields, "marker"),
            connection_id=_s(fields, "conn"),
            entity_id=_s(fields, "entity"),
            topic=_s(fields, "topic"),
            filters=Filters.from_dict(json.loads(_s(fields, "filters") or "{}")),
            since=_s(fields, "since"),
            until=_s(fields, "until"),
            rewind=_s(fields, "rewind"),
        )
    if kind == KIND_CHANGED:
        topics = _s(fields, "topics")
        return SubscriptionsChanged(
            entity_id=_s(fields, "entity"),
            topics=tuple(t for t in topics.split(",") if t),
            connection_id=_s(fields, "conn"),
        )
    return None
