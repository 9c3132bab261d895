"""JSON Schemas (draft 2020-12) of the contract, built from the core's own rules:
each topic's payload from :data:`rtstream.topics.SCHEMAS`, each client frame
from :mod:`rtstream.protocol`'s fields and bounds, the server frames from the
builders that make them, error codes from :mod:`rtstream.errors`.

``scripts/gen_contract.py`` writes them to ``docs/schemas/`` and the AsyncAPI
document ``docs/asyncapi.yaml`` that references them; ``tests/contract`` checks
the written files are what this module builds and validates real frames
captured from the running system against them. Pure: no I/O.

Server frames allow fields they do not list (clients ignore unknown fields, so
the server may add some in a compatible version); client frames do not (the
server refuses unknown fields with ``invalid_message``).
"""

from __future__ import annotations

from typing import Any

from . import errors, protocol, topics
from .history import MAX_REWIND

DRAFT = "https://json-schema.org/draft/2020-12/schema"
EVENT_ID_PATTERN = r"^\d{1,20}-\d{1,20}$"

_KIND = {"string": {"type": "string"}, "number": {"type": "number"}, "integer": {"type": "integer"}, "any": {}}
# What topics.SCHEMAS leaves as "any" or "string" but the system always sends narrower.
_REFINED: dict[str, dict[str, dict[str, Any]]] = {
    topics.PRESENCE: {
        "state": {"type": "string", "enum": ["online", "offline"]},
        "connections": {"type": "integer", "minimum": 0},
        "transports": {"type": "array", "items": {"type": "string", "enum": ["websocket", "sse"]}, "uniqueItems": True},
    },
}
_DESCRIPTIONS = {
    topics.TRANSACTIONS_NEW: "A new transaction of the entity.",
    topics.AGENT_ACTION_COMPLETED: "An agent finished an action; `result` is whatever the agent reports.",
    topics.BALANCE_UPDATED: "An account balance changed by `change` to `newBalance`.",
    topics.SYNC_COMPLETED: "A data sync from `source` finished.",
    topics.PRESENCE: "A user of the entity came online or went offline (published by the system only).",
}


def schema_name(topic: str) -> str:
    """File stem of a topic's payload schema (``docs/schemas/<stem>.json``)."""
    return topic


def payload_schema(topic: str) -> dict[str, Any]:
    """The payload (``data``) of an event on ``topic``; extra fields are kept, as
    :func:`rtstream.topics.validate_payload` keeps them."""
    fields = topics.SCHEMAS[topic]
    refined = _REFINED.get(topic, {})
    return {
        "$schema": DRAFT,
        "title": f"{topic} payload",
        "description": _DESCRIPTIONS.get(topic, ""),
        "type": "object",
        "properties": {name: dict(refined.get(name, _KIND[kind])) for name, (kind, _) in fields.items()},
        "required": [name for name, (_, required) in fields.items() if required],
        "additionalProperties": True,
    }


def error_codes() -> list[str]:
    codes: set[str] = set()
    pending: list[type] = [errors.RealtimeError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)  # type: ignore[attr-defined]
        pending.extend(cls.__subclasses__())
    return sorted(codes)


def _event_id(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": EVENT_ID_PATTERN, "maxLength": 41, "description": description}


def _string_list(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": 1, "maxItems": protocol.MAX_FILTER_ENTRIES}


FILTERS: dict[str, Any] = {
    "type": "object",
    "description": "`types` keeps listed topics, `sources` listed sources, `minAmount` keeps |data.amount| (or "
                   "|data.change|) >= N and passes events that carry neither.",
    "properties": {
        "types": _string_list({"type": "string", "enum": list(topics.EVENT_TOPICS)}),
        "sources": _string_list({"type": "string", "minLength": 1, "maxLength": protocol.MAX_FILTER_VALUE_LENGTH}),
        "minAmount": {"type": "number", "minimum": 0},
    },
    "additionalProperties": False,
}

# Every field a client frame may carry, by name (protocol._FIELDS says which frame takes which).
_CLIENT_FIELDS: dict[str, dict[str, Any]] = {
    "topic": {"type": "string", "enum": list(topics.SUBSCRIBABLE_TOPICS)},
    "filters": FILTERS,
    "since": _event_id("Replay the events after this id (the last one the client saw)."),
    "rewind": {"type": "integer", "minimum": 1, "maximum": MAX_REWIND,
               "description": "Send the last N matching events first, oldest first (not with `since`)."},
}
_CLIENT_REQUIRED = {"subscribe": ["topic"], "unsubscribe": ["topic"]}


def client_frame_schema(frame_type: str) -> dict[str, Any]:
    allowed = sorted(protocol._FIELDS[frame_type])
    schema = {
        "$schema": DRAFT,
        "title": f"client {frame_type}",
        "type": "object",
        "properties": {"type": {"const": frame_type}, **{name: _CLIENT_FIELDS[name] for name in allowed}},
        "required": ["type", *_CLIENT_REQUIRED.get(frame_type, [])],
        "additionalProperties": False,
    }
    if {"since", "rewind"} <= set(allowed):
        schema["not"] = {"required": ["since", "rewind"]}  # a resume replays from its cursor: never both
    return schema


def _server(title: str, frame_type: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "title": title,
        "type": "object",
        "properties": {"type": {"const": frame_type}, **properties},
        "required": ["type", *required],
        "additionalProperties": True,
    }


def event_frame_schema() -> dict[str, Any]:
    """The WebSocket event frame: the envelope, and ``data`` by topic."""
    schema = _server(
        "server event",
        "event",
        {
            "topic": {"type": "string", "enum": [*topics.EVENT_TOPICS, topics.PRESENCE]},
            "id": _event_id("Per-entity, increasing; the replay cursor (presence events: not a cursor)."),
            "data": {"type": "object"},
            "source": {"type": "string"},
            "timestamp": {"type": "string", "description": "ISO 8601 UTC with milliseconds, e.g. 2026-11-25T12:00:00.000Z"},
        },
        ["topic", "id", "data", "source", "timestamp"],
    )
    schema["allOf"] = [
        {"if": {"properties": {"topic": {"const": topic}}}, "then": {"properties": {"data": {"$ref": f"{schema_name(topic)}.json"}}}}
        for topic in (*topics.EVENT_TOPICS, topics.PRESENCE)
    ]
    return schema


def server_frame_schemas() -> dict[str, dict[str, Any]]:
    """File stem -> schema of every frame the server sends (WebSocket, and the
    SSE control frames)."""
    presence_user = {
        "type": "object",
        "properties": {
            "userId": {"type": "string"},
            "connections": {"type": "integer", "minimum": 1},
            "transports": {"type": "array", "items": {"type": "string", "enum": ["websocket", "sse"]}},
        },
        "required": ["userId", "connections", "transports"],
    }
    cursor = _event_id("The entity's newest event id when the subscription or stream started.")
    return {
        "server-event": event_frame_schema(),
        "server-subscribed": _server("server subscribed", "subscribed", {"topic": _CLIENT_FIELDS["topic"], "cursor": cursor}, ["topic"]),
        "server-unsubscribed": _server("server unsubscribed", "unsubscribed", {"topic": _CLIENT_FIELDS["topic"]}, ["topic"]),
        "server-pong": _server("server pong", "pong", {"timestamp": {"type": "integer", "description": "server time, epoch ms"},
                                                       "cursor": cursor}, ["timestamp"]),
        "server-presence": _server("server presence reply", "presence", {"users": {"type": "array", "items": presence_user}}, ["users"]),
        "server-error": _server("server error", "error", {"code": {"type": "string", "enum": error_codes()},
                                                           "message": {"type": "string"}}, ["code", "message"]),
        "sse-cursor": _server("SSE cursor (event: cursor)", "cursor", {"id": cursor}, ["id"]),
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """File stem -> schema: every topic's payload, every client and server frame."""
    out: dict[str, dict[str, Any]] = {schema_name(t): payload_schema(t) for t in (*topics.EVENT_TOPICS, topics.PRESENCE)}
    out.update({f"client-{t}": client_frame_schema(t) for t in protocol.CLIENT_FRAME_TYPES})
    out.update(server_frame_schemas())
    return out
