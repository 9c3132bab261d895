"""The WebSocket protocol: strict parsing of client frames, builders of server frames.

Every client frame of the contract is parsed here and nowhere else. Anything that
is not exactly a frame of the contract is refused with a coded error
(:class:`InvalidMessage`, :class:`UnknownTopic`, :class:`MessageTooLarge`), so a
transport can answer an error frame and keep the connection usable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidMessage, MessageTooLarge, UnknownTopic
from .history import MAX_REWIND, require_rewind
from .models import Filters, is_event_id
from .topics import EVENT_TOPICS, SUBSCRIBABLE_TOPICS

# The contract's version (README "Contract notes"; `rtstream --version` prints it).
PROTOCOL_VERSION = "0.2"

# Bounds on filter lists: a filter is a handful of values, never a data dump.
MAX_FILTER_ENTRIES = 20
MAX_FILTER_VALUE_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Subscribe:
    topic: str
    filters: Filters = field(default_factory=Filters)
    since: str | None = None
    # the last N matching events first (1..history.MAX_REWIND); never with ``since``
    rewind: int | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    topic: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    pass


@dataclass(frozen=True, slots=True)
class PrivilegedAction:
    """A client asking to publish, broadcast or disconnect: never allowed over a
    client connection (publishing is a backend's job). Parsed, so the service can
    refuse it with ``forbidden`` (and flag it as a security event for agents)
    instead of answering a generic ``invalid_message``."""

    action: str


ClientFrame = Subscribe | Unsubscribe | Ping | PresenceQuery | PrivilegedAction

PRIVILEGED_TYPES: tuple[str, ...] = ("publish", "broadcast", "disconnect")

# type -> allowed fields (besides "type")
_FIELDS: dict[str, frozenset[str]] = {
    "subscribe": frozenset({"topic", "filters", "since", "rewind"}),
    "unsubscribe": frozenset({"topic"}),
    "ping": frozenset(),
    "presence": frozenset(),
}
_FILTER_FIELDS = frozenset({"types", "sources", "minAmount"})
CLIENT_FRAME_TYPES: tuple[str, ...] = tuple(_FIELDS)


def _reject_constant(name: str) -> Any:
    raise InvalidMessage(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys are ambiguous (which one wins differs between parsers): refuse.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidMessage(f"duplicate field {key!r}")
        out[key] = value
    return out


def _loads(raw: str | bytes, max_bytes: int) -> Any:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        size = len(raw)
        if size > max_bytes:
            raise MessageTooLarge(f"message of {size} bytes exceeds the limit of {max_bytes} bytes")
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidMessage("message is not valid UTF-8") from exc
    elif isinstance(raw, str):
        # Cheap bound first (a char is at most 4 bytes), exact count only near the limit.
        if len(raw) * 4 > max_bytes:
            size = len(raw.encode("utf-8", "surrogatepass"))
            if size > max_bytes:
                raise MessageTooLarge(f"message of {size} bytes exceeds the limit of {max_bytes} bytes")
        text = raw
    else:
        raise InvalidMessage("message must be text")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except InvalidMessage:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage("message is not valid JSON") from exc


def _topic(frame: dict[str, Any]) -> str:
    if "topic" not in frame:
        raise InvalidMessage("missing field 'topic'")
    topic = frame["topic"]
    if not isinstance(topic, str):
        raise InvalidMessage(f"field 'topic' must be a string, got {_kind(topic)}")
    if topic not in SUBSCRIBABLE_TOPICS:
        raise UnknownTopic(f"unknown topic {topic[:64]!r}; expected one of {', '.join(SUBSCRIBABLE_TOPICS)}")
    return topic


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _string_list(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidMessage(f"filters.{name} must be an array of strings, got {_kind(value)}")
    if not value:
        raise InvalidMessage(f"filters.{name} must not be empty (omit it to match everything)")
    if len(value) > MAX_FILTER_ENTRIES:
        raise InvalidMessage(f"filters.{name} has {len(value)} entries; at most {MAX_FILTER_ENTRIES}")
    for item in value:
        if not isinstance(item, str):
            raise InvalidMessage(f"filters.{name} entries must be strings, got {_kind(item)}")
        if not item or len(item) > MAX_FILTER_VALUE_LENGTH:
            raise InvalidMessage(f"filters.{name} entries must be 1..{MAX_FILTER_VALUE_LENGTH} characters")
    # order-preserving de-duplication
    return tuple(dict.fromkeys(value))


def parse_filters(value: Any) -> Filters:
    if value is None:
        return Filters()
    if not isinstance(value, dict):
        raise InvalidMessage(f"field 'filters' must be an object, got {_kind(value)}")
    unknown = sorted(set(value) - _FILTER_FIELDS)
    if unknown:
        raise InvalidMessage(f"unknown filter field(s): {', '.join(repr(u[:64]) for u in unknown)}")
    types = sources = None
    min_amount = None
    if value.get("types") is not None:
        types = _string_list("types", value["types"])
        bad = [t for t in types if t not in EVENT_TOPICS]
        if bad:
            raise InvalidMessage(f"filters.types entries must be event topics ({', '.join(EVENT_TOPICS)}); got {bad[0][:64]!r}")
    if value.get("sources") is not None:
        sources = _string_list("sources", value["sources"])
    if value.get("minAmount") is not None:
        raw = value["minAmount"]
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise InvalidMessage(f"filters.minAmount must be a number, got {_kind(raw)}")
        if not math.isfinite(raw) or raw < 0:
            raise InvalidMessage("filters.minAmount must be a finite number >= 0")
        min_amount = float(raw)
    return Filters(types=types, sources=sources, min_amount=min_amount)


def _since(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidMessage(f"field 'since' must be an event id string, got {_kind(value)}")
    if not is_event_id(value):
        raise InvalidMessage("field 'since' must be an event id like \"1764090000000-0\" (two integers of at most 2^64-1)")
    return value


def _rewind(value: Any) -> int | None:
    if value is None:
        return None
    # a JSON number only: the query-string form ("5") is the SSE's, not a frame's
    if isinstance(value, str):
        raise InvalidMessage(f"field 'rewind' must be an integer from 1 to {MAX_REWIND}, got a string")
    return require_rewind(value)


def parse_client_frame(raw: str | bytes, *, max_bytes: int) -> ClientFrame:
    """Parse one client frame strictly; raise a coded error for anything else."""
    frame = _loads(raw, max_bytes)
    if not isinstance(frame, dict):
        raise InvalidMessage(f"message must be a JSON object, got {_kind(frame)}")
    if "type" not in frame:
        raise InvalidMessage("missing field 'type'")
    frame_type = frame["type"]
    if not isinstance(frame_type, str):
        raise InvalidMessage(f"field 'type' must be a string, got {_kind(frame_type)}")
    if frame_type in PRIVILEGED_TYPES:
        return PrivilegedAction(frame_type)
    allowed = _FIELDS.get(frame_type)
    if allowed is None:
        raise InvalidMessage(f"unknown message type {frame_type[:64]!r}; expected one of {', '.join(CLIENT_FRAME_TYPES)}")
    unknown = sorted(set(frame) - allowed - {"type"})
    if unknown:
        raise InvalidMessage(f"unknown field(s) for {frame_type}: {', '.join(repr(u[:64]) for u in unknown)}")
    if frame_type == "subscribe":
        since, rewind = _since(frame.get("since")), _rewind(frame.get("rewind"))
        if since is not None and rewind is not None:
            raise InvalidMessage("'rewind' and 'since' exclude each other: a resume replays from its cursor")
        return Subscribe(topic=_topic(frame), filters=parse_filters(frame.get("filters")), since=since, rewind=rewind)
    if frame_type == "unsubscribe":
        return Unsubscribe(topic=_topic(frame))
    if frame_type == "ping":
        return Ping()
    return PresenceQuery()


# ---- server -> client frames ----------------------------------------------------


def subscribed(topic: str, cursor: str = "") -> dict[str, Any]:
    """``cursor``: the entity's newest event id when the subscription started, so a
    client that receives nothing before it reconnects can still resume from there."""
    frame: dict[str, Any] = {"type": "subscribed", "topic": topic}
    if cursor:
        frame["cursor"] = cursor
    return frame


def unsubscribed(topic: str) -> dict[str, Any]:
    return {"type": "unsubscribed", "topic": topic}


def pong(now_ms: int, cursor: str = "") -> dict[str, Any]:
    """``cursor``: the entity's newest event id ("0-0" when it has none), so a
    client that is behind it for long knows its push path stalled and resumes."""
    return {"type": "pong", "timestamp": now_ms, "cursor": cursor or "0-0"}


def presence_reply(users: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "presence", "users": list(users)}


def dumps(frame: dict[str, Any]) -> str:
    """Compact JSON, the form every frame goes on the wire in."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
