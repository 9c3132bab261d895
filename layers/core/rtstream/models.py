"""Plain data the core works on. No I/O, no vendor types."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, TypeAlias

# A JSON value as json.loads returns it: event payloads are JSON objects.
JsonValue: TypeAlias = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]
JsonObject: TypeAlias = dict[str, JsonValue]

Role = Literal["user", "agent", "admin"]
ROLES: tuple[str, ...] = ("user", "agent", "admin")
Transport = Literal["websocket", "sse"]

# Ids that end up in DynamoDB keys, Redis keys and channel names: no separators
# ('#', ':', whitespace) so a crafted id can never address another entity's keys.
IDENTIFIER = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
# Redis stream ids: "<ms>-<seq>", each part an unsigned 64-bit integer. ASCII
# digits only (``\d`` would take "١"), matched over the whole string (``$``
# would accept a trailing newline), range-checked in :func:`parse_event_id`.
EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)
MAX_ID_PART = 2**64 - 1


def is_identifier(value: Any) -> bool:
    return isinstance(value, str) and IDENTIFIER.match(value) is not None


def parse_event_id(event_id: str) -> tuple[int, int]:
    """``"1764090000000-3"`` -> ``(1764090000000, 3)``; raises ValueError if malformed.

    The one id check of the project: an id that passes here is one Redis accepts
    (a part above 2^64-1 would make every later XRANGE of the reader fail)."""
    m = EVENT_ID.fullmatch(event_id) if isinstance(event_id, str) else None
    if m is None:
        raise ValueError(f"malformed event id {str(event_id)[:48]!r}")
    ms, seq = int(m.group(1)), int(m.group(2))
    if ms > MAX_ID_PART or seq > MAX_ID_PART:
        raise ValueError(f"event id {event_id[:48]!r} is out of range (each part at most {MAX_ID_PART})")
    return ms, seq


def is_event_id(value: Any) -> bool:
    try:
        parse_event_id(value)
    except ValueError:
        return False
    return True


def iso_timestamp(epoch_ms: int) -> str:
    """Epoch milliseconds -> ``2026-11-25T12:00:00.000Z``."""
    dt = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is connected, as proven by the token. The entity comes only from here."""

    user_id: str
    entity_id: str
    role: Role = "user"

    @property
    def is_agent(self) -> bool:
        return self.role == "agent"

    def to_context(self) -> dict[str, str]:
        """Flat string map, as an API Gateway authorizer context carries it."""
        return {"userId": self.user_id, "entityId": self.entity_id, "role": self.role}

    @classmethod
    def from_context(cls, context: dict[str, Any]) -> "Principal":
        return cls(user_id=str(context["userId"]), entity_id=str(context["entityId"]), role=str(context.get("role") or "user"))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Filters:
    """Subscription filters. ``None`` means "no constraint" for each field."""

    types: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None
    min_amount: float | None = None

    @property
    def empty(self) -> bool:
        return self.types is None and self.sources is None and self.min_amount is None

    def matches(self, topic: str, source: str | None, data: dict[str, Any]) -> bool:
        """Contract semantics: ``types`` keeps listed topics, ``sources`` listed
        sources, ``minAmount`` keeps |data.amount| (or |data.change|) >= N and
        passes events that carry neither."""
        if self.types is not None and topic not in self.types:
            return False
        if self.sources is not None and source not in self.sources:
            return False
        if self.min_amount is not None:
            amount = data.get("amount", data.get("change")) if isinstance(data, dict) else None
            if isinstance(amount, (int, float)) and not isinstance(amount, bool):
                if abs(amount) < self.min_amount:
                    return False
        return True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.types is not None:
            out["types"] = list(self.types)
        if self.sources is not None:
            out["sources"] = list(self.sources)
        if self.min_amount is not None:
            out["minAmount"] = self.min_amount
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "Filters":
        """Trusted input (our own storage). Client input goes through rtstream.protocol."""
        if not raw:
            return cls()
        types = raw.get("types")
        sources = raw.get("sources")
        min_amount = raw.get("minAmount")
        return cls(
            types=tuple(types) if types is not None else None,
            sources=tuple(sources) if sources is not None else None,
            min_amount=float(min_amount) if min_amount is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Connection:
    connection_id: str
    principal: Principal
    transport: Transport = "websocket"
    connected_at_ms: int = 0
    source_ip: str = ""
    # epoch seconds after which the registry may drop the record (DynamoDB TTL)
    expires_at: int = 0

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def entity_id(self) -> str:
        return self.principal.entity_id


@dataclass(frozen=True, slots=True)
class Subscription:
    connection_id: str
    entity_id: str
    topic: str
    user_id: str = ""
    filters: Filters = field(default_factory=Filters)
    # Replay seam: while set, the fan-out skips this subscription for events it
    # reads before the replay marker with this value (see rtstream.fanout).
    pending_replay: str | None = None
    expires_at: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """One published event. ``id`` is the per-entity history id (the replay cursor)."""

    id: str
    entity_id: str
    topic: str
    data: dict[str, Any]
    source: str = "unknown"
    timestamp: str = ""
    # publish time, epoch ms: drives message_latency_ms
    published_at_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        """The event frame exactly as clients receive it (WebSocket and SSE data)."""
        return {
            "type": "event",
            "topic": self.topic,
            "id": self.id,
            "data": self.data,
            "source": self.source,
            "timestamp": self.timestamp,
        }

    def wire_json(self) -> str:
        return json.dumps(self.to_wire(), separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Publication:
    """A validated event to publish (:func:`rtstream.publishing.validate`)."""

    entity_id: str
    topic: str
    data: dict[str, Any]
    source: str
    # a repeat of the same key for the entity within the window is one event
    idempotency_key: str | None = None
