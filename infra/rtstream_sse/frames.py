"""The text/event-stream frames, as bytes. Pure; each event is encoded once and
the same bytes go to every client that gets it."""

from __future__ import annotations

import json
from typing import Any

from rtstream.models import Event

HEARTBEAT = b": heartbeat\n\n"


def retry(ms: int) -> bytes:
    return b"retry: %d\n\n" % ms


def cursor(event_id: str) -> bytes:
    """Where a stream without Last-Event-ID starts: ``id:`` sets the browser's
    Last-Event-ID, so a client that has seen no event yet still resumes from
    here; ``event: cursor`` with data makes it visible to EventSource code too
    (it dispatches nothing for an id-only frame)."""
    data = json.dumps({"type": "cursor", "id": event_id}, separators=(",", ":"))
    return b"id: " + event_id.encode("ascii") + b"\nevent: cursor\ndata: " + data.encode("ascii") + b"\n\n"


def payload_json(e: Event) -> bytes:
    """``data:`` of an event frame: the event's payload only (the contract's
    ``JSON.stringify(event.data)``); the id and topic travel in ``id:``/``event:``.
    JSON never contains a raw newline (json.dumps escapes them), so one data line."""
    return json.dumps(e.data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event(e: Event) -> bytes:
    """``id:`` the event id, ``event:`` the topic, ``data:`` the payload."""
    return b"".join((b"id: ", e.id.encode("ascii"), b"\nevent: ", e.topic.encode("ascii"), b"\ndata: ", payload_json(e), b"\n\n"))


def presence(e: Event) -> bytes:
    """A presence change: ``event: presence``, ``data:`` its payload. No ``id:``:
    presence is not kept in history, so its id is no replay cursor and must not
    become the browser's Last-Event-ID."""
    return b"event: presence\ndata: " + payload_json(e) + b"\n\n"


def error(frame: dict[str, Any]) -> bytes:
    return b"event: error\ndata: " + json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n\n"


def shutdown_hint(retry_ms: int) -> bytes:
    return b": server shutting down, reconnect\nretry: %d\n\n" % retry_ms


def closing_hint(reason: str, retry_ms: int) -> bytes:
    return b": " + reason.encode("ascii", "replace") + b"\nretry: %d\n\n" % retry_ms
