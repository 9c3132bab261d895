"""Pure client logic: cursor and dedupe, backoff, transport choice, subscribe
frames, SSE decoding, stall detection. No I/O and no clock (times are passed
in), so the asyncio client (``client.py``) stays a thin wrapper. The browser
package's ``clients/js/src/rtstream-logic.js`` implements the same rules; both
run the shared JSON vectors in ``clients/vectors/``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# the one full-jitter rule (the light install ships the core); re-exported for client.py
from rtstream.backoff import backoff_delay as backoff_delay

EVENT_TOPICS = ("transactions.new", "agent.action.completed", "balance.updated", "sync.completed")
WILDCARD = "*"
_EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_MAX_ID_PART = 2**64 - 1  # as on the server


def event_id_key(event_id: Any) -> tuple[int, int] | None:
    """``"1764090000000-3"`` -> ``(1764090000000, 3)``: ids compare numerically,
    never as strings (``"9-0"`` < ``"10-0"``). None for a missing/malformed id."""
    m = _EVENT_ID.fullmatch(event_id) if isinstance(event_id, str) else None
    if m is None:
        return None
    key = (int(m.group(1)), int(m.group(2)))
    return key if max(key) <= _MAX_ID_PART else None


class Cursor:
    """The last event id delivered; the resume point and the dedupe rule.

    Per entity, ids only increase, and the client keeps all its topics in one
    ordered stream (see :func:`subscribe_frame`), so "drop ids <= last" removes
    exactly the duplicates a resume or an at-least-once redelivery produces.
    ``older`` admits a never-seen id below the cursor (rewind of a topic added
    later) without moving the cursor back."""

    def __init__(self, last_id: str | None = None):
        if last_id is not None and event_id_key(last_id) is None:
            raise ValueError(f"malformed event id {last_id!r}")
        self.last_id = last_id
        self._last_key = event_id_key(last_id) if last_id else None
        self._seen: dict[str, None] = {}  # recent ids, oldest first

    def accept(self, event_id: Any, *, older: bool = False) -> bool:
        """True if the event is new (and advance); False for a duplicate.
        Frames without a valid id (e.g. presence) carry no cursor and always pass."""
        key = event_id_key(event_id)
        if key is None:
            return True
        if event_id in self._seen:
            return False
        newer = self._last_key is None or key > self._last_key
        if not newer and not older:
            return False
        self._seen[event_id] = None
        if len(self._seen) > 2000:
            del self._seen[next(iter(self._seen))]
        if newer:
            self._last_key = key
            self.last_id = event_id
        return True

    def advance(self, event_id: Any) -> None:
        """Move forward to a server-given start point (subscribed/SSE cursor)."""
        key = event_id_key(event_id)
        if key is not None and (self._last_key is None or key > self._last_key):
            self._last_key = key
            self.last_id = event_id


@dataclass
class TransportChooser:
    """Which transport the next connection attempt uses.

    ``auto``: WebSocket first; after ``ws_failures_before_fallback`` consecutive
    WebSocket attempts that never got as far as a confirmed subscription, SSE.
    While on SSE the WebSocket is probed (a handshake; SSE stays up meanwhile)
    every ``ws_retry_after`` seconds, and a successful probe switches back. If
    SSE failed too before it opened, or the WebSocket had worked before, the
    server was down rather than the WebSocket blocked, so the first probe comes
    after ``outage_probe_after`` seconds (SSE may come back before the client
    notices it was down too). When SSE keeps failing as well, attempts go back to the WebSocket
    (either may come back first)."""

    mode: str = "auto"  # auto | ws | sse
    ws_failures_before_fallback: int = 2
    ws_retry_after: float = 300.0
    outage_probe_after: float = 1.0
    current: str = field(init=False, default="ws")
    probe_at: float | None = field(init=False, default=None)  # when to probe the WebSocket while on SSE
    _ws_failures: int = field(init=False, default=0)
    _sse_failures: int = field(init=False, default=0)
    _sse_failed: bool = field(init=False, default=False)
    _ws_worked: bool = field(init=False, default=False)
    _ws_stalled: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "ws", "sse"):
            raise ValueError(f"transport must be auto, ws or sse, got {self.mode!r}")
        self.current = "sse" if self.mode == "sse" else "ws"

    def choose(self) -> str:
        return self.current

    def failed(self, transport: str, now: float) -> None:
        if self.mode != "auto":
            return
        self.probe_at = None
        if transport == "ws":
            self._ws_failures += 1
            if self._ws_failures >= self.ws_failures_before_fallback:
                self.current = "sse"
                self._sse_failures = 0
        else:
            self._sse_failed = True
            self._sse_failures += 1
            if self._sse_failures >= self.ws_failures_before_fallback:
                self.current = "ws"
                self._ws_failures = 0

    def opened(self, transport: str, now: float) -> None:
        if transport == "ws":
            self._ws_failures = 0
            self._ws_worked = True
            self.probe_at = None
        else:
            self._sse_failures = 0
            if self.mode == "auto":
                outage = (self._sse_failed or self._ws_worked) and not self._ws_stalled
                self.probe_at = now + (self.outage_probe_after if outage else self.ws_retry_after)
        self._sse_failed = False

    def stalled(self, now: float) -> None:
        """The WebSocket stayed open but stopped delivering (see :class:`StallWatch`):
        SSE at once, and the WebSocket is probed on the long interval until it
        delivers again (a handshake succeeds even when its push path is dead)."""
        self._ws_stalled = True
        if self.mode != "auto":
            return
        self.current = "sse"
        self._sse_failures = 0
        self.probe_at = None

    def delivered(self) -> None:
        """The WebSocket delivered an event or caught up with a pong."""
        self._ws_stalled = False

    def probed(self, reachable: bool, now: float) -> None:
        """Result of a WebSocket probe made while on SSE."""
        if reachable:
            self.current = "ws"
            self._ws_failures = 0
            self.probe_at = None
        else:
            self.probe_at = now + self.ws_retry_after


class StallWatch:
    """Detects a WebSocket whose push path stalled. ``pong.cursor`` is the
    entity's newest event id; if the newest id this client has (an event, or a
    server start point) stays behind the first cursor it was found behind for
    ``after`` seconds and ``pongs`` pongs, the stream is stalled. An event in
    flight is behind for a moment only. Only meaningful for a subscription that
    sees every id of the entity (``*``, no filters)."""

    def __init__(self, after: float = 10.0, pongs: int = 2):
        self.after = after
        self.pongs = max(2, pongs)
        self.seen: str | None = None
        self._seen_key: tuple[int, int] | None = None
        self._target: tuple[int, int] | None = None
        self._behind_since = 0.0
        self._behind_pongs = 0

    def caught_up(self, event_id: Any) -> None:
        key = event_id_key(event_id)
        if key is None:
            return
        if self._seen_key is None or key > self._seen_key:
            self._seen_key, self.seen = key, event_id
        if self._target is not None and self._seen_key >= self._target:
            self._target = None

    def pong(self, cursor: Any, now: float) -> str:
        """``ok`` (caught up), ``behind`` (within the bound) or ``stalled``."""
        key = event_id_key(cursor)
        if key is None or key == (0, 0):
            return "ok"
        if self._seen_key is not None and self._seen_key >= key:
            self._target = None
            return "ok"
        if self._target is None:
            self._target, self._behind_since, self._behind_pongs = key, now, 1
            return "behind"
        self._behind_pongs += 1
        return "stalled" if self._behind_pongs >= self.pongs and now - self._behind_since >= self.after else "behind"


def normalize_topics(topics: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(topics, str):
        topics = [t for t in topics.split(",") if t]
    out = tuple(dict.fromkeys(t.strip() for t in topics if t and t.strip()))
    if not out:
        return (WILDCARD,)
    return out


def subscribe_frame(topics: tuple[str, ...], filters: Mapping[str, Any] | None, since: str | None, rewind: int | None = None) -> dict[str, Any]:
    """One WebSocket subscription for all the wanted topics.

    Several topics become ``*`` with a ``types`` filter: one subscription means
    one replay and one ordered stream, so a single cursor resumes all of them
    (separate subscriptions would interleave one topic's replay after another
    topic's live events)."""
    filters = dict(filters or {})
    if WILDCARD in topics or len(topics) > 1:
        topic = WILDCARD
        wanted = [t for t in topics if t != WILDCARD]
        if wanted and WILDCARD not in topics:
            types = filters.get("types")
            filters["types"] = [t for t in wanted if types is None or t in types]
    else:
        topic = topics[0]
    frame: dict[str, Any] = {"type": "subscribe", "topic": topic}
    if filters:
        frame["filters"] = filters
    if since:
        frame["since"] = since
    elif rewind:
        frame["rewind"] = rewind  # the last N events first; a resume replays from the cursor instead
    return frame


def sse_query(topics: tuple[str, ...], filters: Mapping[str, Any] | None, rewind: int | None = None) -> dict[str, str]:
    params = {"topics": ",".join(topics)}
    for name in ("types", "sources"):
        values = (filters or {}).get(name)
        if values is not None:
            params[name] = ",".join(values)
    if (filters or {}).get("minAmount") is not None:
        params["minAmount"] = str(filters["minAmount"])  # type: ignore[index]
    if rewind:
        params["rewind"] = str(rewind)
    return params


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query.extend(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass
class SseMessage:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry_ms: int | None = None


class SseDecoder:
    """Line-by-line ``text/event-stream`` decoder (WHATWG rules: ``field: value``,
    one optional space, multi-line ``data`` joined by newlines, ``:`` comments,
    a blank line dispatches)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, line: str) -> SseMessage | None:
        if line == "":
            if not self._data:
                # an id with no data moves the resume point without an event
                # (the SSE server sends one first, so a client that has seen no
                # event yet still resumes from where it joined)
                cursor_id, self._event, self._id = self._id, "", None
                return SseMessage(event="", data="", id=cursor_id) if cursor_id else None
            message = SseMessage(event=self._event or "message", data="\n".join(self._data), id=self._id, retry_ms=self.retry_ms)
            self._event, self._data, self._id = "", [], None
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


def frame_from_sse(message: SseMessage) -> dict[str, Any] | None:
    """The frame an SSE message carries. The wire format is ``id:`` the event
    id, ``event:`` the topic, ``data:`` the payload only (a payload is never
    unwrapped, whatever fields it has). ``cursor`` and ``error``/``replay_gap``
    are control frames. None: ignore it."""
    event_name, event_id = message.event, message.id or None
    if message.data == "" and event_name in ("", "message") and event_id:
        return {"type": "cursor", "id": event_id}
    try:
        payload = json.loads(message.data)
    except ValueError:
        return None
    is_object = isinstance(payload, dict)
    if event_name == "cursor" or (event_name == "message" and is_object and payload.get("type") == "cursor"):
        cursor_id = (payload.get("id") if is_object else None) or event_id
        return {"type": "cursor", "id": cursor_id} if cursor_id else None
    if event_name in ("error", "replay_gap"):
        body = dict(payload) if is_object else {}
        return {"type": "error", **body, "code": body.get("code") or "replay_gap"}
    if is_object and payload.get("type") == "error" and event_name == "message":
        return payload
    return {"type": "event", "topic": event_name, "id": event_id, "data": payload}


FATAL_CODES = frozenset({"unknown_topic", "invalid_message", "forbidden", "unauthorized"})


def classify_ws_frame(frame: Any, subscribed: bool) -> str:
    """What a WebSocket frame means to the session: confirm | ack | pong |
    presence | event | gap | fatal | error | ignore."""
    if not isinstance(frame, dict):
        return "ignore"
    kind = frame.get("type")
    if kind == "subscribed":
        return "ack" if subscribed else "confirm"
    if kind == "unsubscribed":
        return "ack"
    if kind in ("pong", "presence", "event"):
        return str(kind)
    if kind == "error":
        if frame.get("code") == "replay_gap":
            return "gap"
        return "fatal" if not subscribed and frame.get("code") in FATAL_CODES else "error"
    return "ignore"


def is_replayed(event_id: Any, *, resumed: bool, session_started_ms: int) -> bool:
    """An event counts as replayed when it arrives on a resumed session and was
    published before the session began (ids start with the publish time in ms)."""
    key = event_id_key(event_id)
    return resumed and key is not None and key[0] <= session_started_ms
