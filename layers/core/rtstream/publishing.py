"""Publishing events: validation (before any I/O), the raw-PUBLISH and the
EventBridge formats, and :func:`publish` over an injected :class:`~rtstream.ports.Publisher`.

The core opens no connection: the publisher (Redis event log or EventBridge)
comes from the caller, or from :mod:`rtstream.adapters.publishing`, whose
``publish(..., client=redis_client)`` is the SDK's one-call convenience.

Raw seed-compatible publishes (``PUBLISH {topic}:entity:{entity} <json>``) and
EventBridge events are parsed and validated here too, so every path accepts
exactly the same events.
"""

from __future__ import annotations

import json
import re
from typing import Any

from . import keys
from .errors import InvalidMessage, InvalidPayload, MessageTooLarge
from .models import Publication, is_identifier
from .ports import EventLog, Publisher
from .topics import require_publishable, validate_payload

__all__ = ["EventLogPublisher", "Publication", "eventbridge_detail", "parse_eventbridge", "parse_raw", "publish", "validate"]

SOURCE = re.compile(r"^[A-Za-z0-9_.:@/-]{1,64}$")
# Idempotency keys: what publishers use as such (UUIDs, EventBridge ids, order
# numbers, "<system>:<id>"): printable ASCII without spaces, bounded.
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,128}", re.ASCII)
# API Gateway's message limit for post_to_connection; larger events could never be delivered.
MAX_EVENT_BYTES = 128 * 1024
RAW_SOURCE = "redis"


def validate_idempotency_key(key: Any) -> str:
    """A publisher's idempotency key, checked over its whole length (coded error)."""
    if not isinstance(key, str) or IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise InvalidMessage(f"idempotency key must be 1..128 characters of [A-Za-z0-9_.:@/+=-], got {str(key)[:40]!r}")
    return key


def validate(entity_id: Any, topic: Any, data: Any, source: Any, idempotency_key: Any = None) -> Publication:
    """Check everything a publisher controls; raise a coded error naming the problem."""
    topic = require_publishable(topic)
    if not is_identifier(entity_id):
        raise InvalidMessage(f"entity id must match {r'[A-Za-z0-9_.@-]{1,128}'}, got {str(entity_id)[:40]!r}")
    if not isinstance(source, str) or not SOURCE.match(source):
        raise InvalidMessage(f"source must match {SOURCE.pattern}, got {str(source)[:40]!r}")
    data = validate_payload(topic, data)
    try:
        size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"{topic} payload is not JSON-serialisable: {exc}") from None
    if size > MAX_EVENT_BYTES - 512:
        raise MessageTooLarge(f"{topic} payload is {size} bytes; the limit is {MAX_EVENT_BYTES - 512}")
    if idempotency_key is not None:
        idempotency_key = validate_idempotency_key(idempotency_key)
    return Publication(entity_id, topic, data, source, idempotency_key)


class EventLogPublisher:
    """:class:`~rtstream.ports.Publisher` over an event log (Redis on AWS):
    history + fan-out queue in one atomic append."""

    def __init__(self, event_log: EventLog) -> None:
        self.event_log = event_log

    def put(self, publication: Publication) -> str:
        pub = publication
        if pub.idempotency_key is not None:
            return self.event_log.append_idempotent(pub.entity_id, pub.topic, pub.data, pub.source, pub.idempotency_key).event.id
        return self.event_log.append(pub.entity_id, pub.topic, pub.data, pub.source).id


def publish(
    entity_id: str,
    topic: str,
    data: dict[str, Any],
    *,
    publisher: Publisher,
    source: str = "sdk",
    idempotency_key: str | None = None,
) -> str:
    """Validate, then publish through ``publisher``; returns the event id (via
    EventBridge: the EventBridge event id).

    ``idempotency_key``: the same key for the same entity within
    ``Settings.idempotency_window_seconds`` is one event; a repeat publishes
    nothing and returns the first event's id. Bad input raises
    :class:`InvalidMessage`, :class:`UnknownTopic`, :class:`InvalidPayload` or
    :class:`MessageTooLarge` before the publisher is touched.
    """
    publication = validate(entity_id, topic, data, source, idempotency_key)
    return publisher.put(publication)


# ---- raw PUBLISH ----------------------------------------------------------------


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def parse_raw(channel: str | bytes, payload: str | bytes) -> Publication:
    """``PUBLISH {topic}:entity:{entity} <json>`` -> a validated publication.

    The JSON object is the event's data (the seed's publishers send exactly
    that). An envelope ``{"data": {...}, "source": "..."}`` (only those keys)
    also sets the source; otherwise the source is ``"redis"``.
    """
    try:
        channel = _text(channel)
        payload = _text(payload)
    except UnicodeDecodeError:
        raise InvalidMessage("raw publish is not UTF-8") from None
    parsed = keys.parse_raw_channel(channel)
    if parsed is None:
        raise InvalidMessage(f"channel {channel[:80]!r} is not {{topic}}:entity:{{entityId}}")
    topic, entity_id = parsed
    if len(payload) > MAX_EVENT_BYTES:
        raise MessageTooLarge(f"raw payload of {len(payload)} bytes on {channel[:80]!r}")
    try:
        body = json.loads(payload)
    except ValueError:
        raise InvalidPayload(f"raw payload on {channel[:80]!r} is not JSON") from None
    source: Any = RAW_SOURCE
    if isinstance(body, dict) and "data" in body and set(body) <= {"data", "source"} and isinstance(body["data"], dict):
        source = body.get("source", RAW_SOURCE)
        body = body["data"]
    return validate(entity_id, topic, body, source)


EVENTBRIDGE_SOURCE = "eventbridge"


def eventbridge_detail(pub: Publication) -> dict[str, Any]:
    """The ``Detail`` of the EventBridge event carrying ``pub`` (its ``DetailType``
    is the topic); :func:`parse_eventbridge` reads it back."""
    detail: dict[str, Any] = {"entityId": pub.entity_id, "data": pub.data, "source": pub.source}
    if pub.idempotency_key is not None:
        detail["idempotencyKey"] = pub.idempotency_key
    return detail


def parse_eventbridge(detail_type: Any, detail: Any, event_id: Any = None) -> Publication:
    """An EventBridge event (``DetailType`` = topic, ``Detail`` =
    ``{"entityId", "data", "source"?, "idempotencyKey"?}``) -> a validated
    publication. Its idempotency key is the detail's, else the EventBridge event
    id (``event_id``: retries of one event carry the same id)."""
    if not isinstance(detail, dict):
        raise InvalidMessage("EventBridge detail must be a JSON object")
    unknown = set(detail) - {"entityId", "data", "source", "idempotencyKey"}
    if unknown:
        raise InvalidMessage(f"unknown field(s) in EventBridge detail: {', '.join(sorted(unknown))[:120]}")
    key = detail.get("idempotencyKey", event_id)
    return validate(detail.get("entityId"), detail_type, detail.get("data"), detail.get("source", EVENTBRIDGE_SOURCE), key)
