"""``GET /events`` request parsing: topics, filters and the replay cursor from the
query string and headers. Pure; bad values raise coded errors (400)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rtstream import protocol
from rtstream.errors import InvalidMessage, UnknownTopic
from rtstream.history import require_cursor, require_rewind
from rtstream.models import Filters
from rtstream.topics import EVENT_TOPICS, PRESENCE, SUBSCRIBABLE_TOPICS, WILDCARD

MAX_PARAM_LENGTH = 2048
# Query names this endpoint understands; anything else is ignored (EventSource
# polyfills and caches add their own).
KNOWN = ("topics", "types", "sources", "minAmount", "lastEventId", "rewind", "access_token", "token")


@dataclass(frozen=True, slots=True)
class EventsRequest:
    # concrete topics the client gets (``*`` expanded; ``presence`` only by name)
    topics: frozenset[str]
    filters: Filters
    last_event_id: str | None
    # send the last N matching events first (None: no rewind; never with a cursor)
    rewind: int | None = None

    @property
    def subscription_key(self) -> tuple[frozenset[str], Filters]:
        """Clients with equal keys receive exactly the same frames."""
        return (self.topics, self.filters)


def _single(params: Any, name: str) -> str | None:
    values = params.getlist(name) if hasattr(params, "getlist") else ([params[name]] if name in params else [])
    if not values:
        return None
    if len(values) > 1:
        raise InvalidMessage(f"query parameter {name!r} given more than once")
    value = values[0]
    if len(value) > MAX_PARAM_LENGTH:
        raise InvalidMessage(f"query parameter {name!r} is too long")
    return value


def _csv(name: str, raw: str) -> list[str]:
    items = [item.strip() for item in raw.split(",")]
    if not raw.strip() or any(not item for item in items):
        raise InvalidMessage(f"{name} must be a comma-separated list of non-empty values")
    return items


def parse_topics(raw: str | None) -> frozenset[str]:
    if raw is None:
        return frozenset(EVENT_TOPICS)
    out: set[str] = set()
    for topic in _csv("topics", raw):
        if topic not in SUBSCRIBABLE_TOPICS:
            raise UnknownTopic(f"unknown topic {topic[:64]!r}; expected one of {', '.join(SUBSCRIBABLE_TOPICS)}")
        if topic == WILDCARD:
            out.update(EVENT_TOPICS)
        else:
            out.add(topic)
    return frozenset(out)


def parse_min_amount(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InvalidMessage(f"minAmount must be a number, got {raw[:32]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidMessage("minAmount must be a finite number >= 0")
    return value


def parse_events_request(params: Any, headers: Any) -> EventsRequest:
    """``params``: a multi-value query map (``getlist``) or a plain mapping;
    ``headers``: a case-insensitive mapping (Starlette ``Headers``)."""
    topics = parse_topics(_single(params, "topics"))
    raw_filters: dict[str, Any] = {}
    types = _single(params, "types")
    if types is not None:
        raw_filters["types"] = _csv("types", types)
    sources = _single(params, "sources")
    if sources is not None:
        raw_filters["sources"] = _csv("sources", sources)
    min_amount = _single(params, "minAmount")
    if min_amount is not None:
        raw_filters["minAmount"] = parse_min_amount(min_amount)
    # One validator for filters across transports (same rules as WebSocket subscribe).
    filters = protocol.parse_filters(raw_filters) if raw_filters else Filters()
    # The header is what EventSource sends on reconnect, so it wins over the
    # query (which is the cursor the page started with).
    # The whole value is the id: no trimming (HTTP already drops a header's
    # surrounding whitespace), so " 1-0" in the query is refused like "1-0\n".
    # An empty header means "no id" (EventSource's reset); an empty query value
    # is a malformed id.
    cursor = headers.get("last-event-id") or _single(params, "lastEventId")
    if cursor is not None:
        cursor = require_cursor(cursor)
    rewind_raw = _single(params, "rewind")
    rewind = require_rewind(rewind_raw) if rewind_raw is not None else None
    if cursor is not None:
        rewind = None  # a reconnecting browser resumes from its cursor instead
    return EventsRequest(topics=topics, filters=filters, last_event_id=cursor, rewind=rewind)


__all__ = ["EventsRequest", "parse_events_request", "parse_topics", "PRESENCE", "KNOWN"]
