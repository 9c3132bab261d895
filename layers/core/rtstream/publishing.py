"""Publishing events: validation (before any I/O) and the raw-PUBLISH format.

``publish()`` is the SDK entry point. Through Redis it appends to the entity's
history and queues the fan-out in one atomic script and returns the event id;
through EventBridge it puts one event (DetailType = topic) that the bridge
Lambda turns into the same Redis publication, and returns EventBridge's id.

Raw seed-compatible publishes (``PUBLISH {topic}:entity:{entity} <json>``) are
parsed and validated here too, so every path accepts exactly the same events.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from . import keys
from .errors import InvalidMessage, InvalidPayload, MessageTooLarge
from .models import is_identifier
from .settings import Settings
from .topics import require_publishable, validate_payload

VIAS = ("redis", "eventbridge")
SOURCE = re.compile(r"^[A-Za-z0-9_.:@/-]{1,64}$")
# Idempotency keys: what publishers use as such (UUIDs, EventBridge ids, order
# numbers, "<system>:<id>"): printable ASCII without spaces, bounded.
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,128}", re.ASCII)
# API Gateway's message limit for post_to_connection; larger events could never be delivered.
MAX_EVENT_BYTES = 128 * 1024
RAW_SOURCE = "redis"


@dataclass(frozen=True, slots=True)
class Publication:
    """A validated event to publish."""

    entity_id: str
    topic: str
    data: dict[str, Any]
    source: str
    # a repeat of the same key for the entity within the window is one event
    idempotency_key: str | None = None


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


def publish(
    entity_id: str,
    topic: str,
    data: dict[str, Any],
    *,
    source: str = "sdk",
    via: str = "redis",
    client: Any = None,
    settings: Settings | None = None,
    events_client: Any = None,
    event_bus: str = "default",
    event_source: str = "rtstream",
    idempotency_key: str | None = None,
) -> str:
    """Publish one event; returns its id (via EventBridge: the EventBridge event id).

    ``idempotency_key``: the same key for the same entity within
    ``Settings.idempotency_window_seconds`` (default 5 minutes) is one event; a
    repeat publishes nothing and returns the first event's id (via EventBridge
    the key travels in the detail and the bridge applies it).

    ``client``: a redis-py client (default: one from ``settings.redis_url``);
    ``events_client``: a boto3 ``events`` client (default: one from the environment).
    Bad input raises :class:`InvalidMessage`, :class:`UnknownTopic`,
    :class:`InvalidPayload` or :class:`MessageTooLarge` before any I/O.
    """
    if via not in VIAS:
        raise InvalidMessage(f"via must be one of {', '.join(VIAS)}, got {via!r}")
    pub = validate(entity_id, topic, data, source, idempotency_key)
    settings = settings or Settings.from_env()
    if via == "eventbridge":
        from .adapters.eventbridge import EventBridgePublisher

        return EventBridgePublisher(events_client).put(pub, event_bus=event_bus, event_source=event_source)

    from .adapters.redis_eventlog import RedisEventLog

    log = RedisEventLog(client, settings) if client is not None else RedisEventLog.from_url(settings.redis_url, settings)
    if pub.idempotency_key is not None:
        return log.append_idempotent(pub.entity_id, pub.topic, pub.data, pub.source, pub.idempotency_key).event.id
    return log.append(pub.entity_id, pub.topic, pub.data, pub.source).id


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
