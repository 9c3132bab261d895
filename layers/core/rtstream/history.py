"""Per-entity history: entry format and the pure replay rule shared by every reader.

History is one stream per entity (``keys.history``). Its entries carry the event
fields; the stream id is the event id (the replay cursor). Readers (the fan-out
worker, the SSE server, Lambdas; sync or async Redis clients, or the in-memory
log) fetch two things in one atomic step and hand them to :func:`replay_events`:

- the stream's *horizon*: the highest id that is no longer retained. The append
  script keeps it next to the stream (``keys.history_horizon``): the last id it
  trimmed, or, when a history stream is (re)created after expiring, the new
  stream's first id, so ids from an expired stream are recognised as lost too;
- the entries with ``since < id <= until`` (``XRANGE key (since until``).

Rule: anything after ``since`` is gone iff ``since < horizon``, or the stream no
longer exists at all (expired with its TTL). Ids compare numerically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidMessage, ReplayGap
from .models import Event, iso_timestamp, parse_event_id

EventId = tuple[int, int]
ZERO_ID: EventId = (0, 0)
# The cursor of an entity that has no history yet (``subscribed.cursor``, SSE).
ZERO_CURSOR = "0-0"


def id_key(event_id: str) -> EventId:
    """Numeric sort key of an id; "" / "0" count as the beginning of time."""
    if event_id in ("", "0", "-"):
        return ZERO_ID
    return parse_event_id(event_id)


def format_id(key: EventId) -> str:
    return f"{key[0]}-{key[1]}"


def require_cursor(since: Any) -> str:
    """A client's replay cursor, validated (coded error, never a ValueError)."""
    if not isinstance(since, str):
        raise InvalidMessage("since must be an event id string like '1764090000000-0'")
    try:
        parse_event_id(since)
    except ValueError as exc:
        raise InvalidMessage(str(exc)) from None
    return since


# ---- entries ------------------------------------------------------------------


def entry_fields(topic: str, data: Mapping[str, Any], source: str, published_at_ms: int) -> dict[str, str]:
    """Fields of one history entry (the id is the stream's own)."""
    return {
        "topic": topic,
        "source": source,
        "ts": iso_timestamp(published_at_ms),
        "pub": str(published_at_ms),
        "data": json.dumps(data, separators=(",", ":"), ensure_ascii=False),
    }


def _s(fields: Mapping[Any, Any], name: str) -> str:
    value = fields.get(name, fields.get(name.encode()))
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def event_from_entry(entity_id: str, entry_id: str | bytes, fields: Mapping[Any, Any]) -> Event:
    """A history entry (bytes or str keys/values, dict or flat list) -> Event."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    if isinstance(fields, (list, tuple)):
        fields = dict(zip(fields[0::2], fields[1::2]))
    return Event(
        id=entry_id,
        entity_id=entity_id,
        topic=_s(fields, "topic"),
        data=json.loads(_s(fields, "data") or "{}"),
        source=_s(fields, "source") or "unknown",
        timestamp=_s(fields, "ts"),
        published_at_ms=int(_s(fields, "pub") or 0),
    )


# ---- replay -------------------------------------------------------------------


def check_retained(since: str, *, exists: bool, horizon: str | None) -> None:
    """Raise :class:`ReplayGap` when an event after ``since`` may have been dropped."""
    if not exists:
        raise ReplayGap(f"history before {since} has expired; reload state")
    if horizon and id_key(since) < id_key(horizon):
        raise ReplayGap(f"history after {since} is no longer retained (oldest lost id {horizon}); reload state")


def replay_events(
    entity_id: str,
    since: str,
    until: str | None,
    *,
    exists: bool,
    horizon: str | None,
    entries: Iterable[tuple[Any, Any]],
) -> list[Event]:
    """Events with ``since < id <= until`` in id order. ``until`` None = no upper
    bound; ``until == ""`` = the entity had no history when the replay was
    requested, so a cursor into it refers to expired history (gap).

    ``entries`` are ``(id, fields)`` pairs as XRANGE returns them (extra ones
    outside the bounds are ignored, so a reader may over-fetch).
    """
    lower = id_key(since)
    if lower == ZERO_ID:
        return _replay_from_start(entity_id, until, exists=exists, horizon=horizon, entries=entries)
    if until == "":
        check_retained(since, exists=False, horizon=None)
    upper = id_key(until) if until is not None else None
    if upper is not None and upper <= lower:
        # Nothing was published after the cursor when the replay was requested:
        # nothing can be missing, whatever the stream looks like now.
        return []
    check_retained(since, exists=exists, horizon=horizon)
    out: list[Event] = []
    for entry_id, fields in entries:
        event = event_from_entry(entity_id, entry_id, fields)
        key = parse_event_id(event.id)
        if key <= lower or (upper is not None and key > upper):
            continue
        out.append(event)
    out.sort(key=lambda e: parse_event_id(e.id))
    return out


def _replay_from_start(entity_id: str, until: str | None, *, exists: bool, horizon: str | None, entries: Iterable[tuple[Any, Any]]) -> list[Event]:
    """Replay after ``"0-0"``, the cursor handed out for an entity without history.

    Such a client saw nothing, so no history is no gap: everything retained is
    after its cursor. A stream created afresh records its own first id as the
    horizon (ids of an expired predecessor are lost); that first entry is still
    here, so it is no gap for this cursor either. Only trimming loses events the
    client never saw: then the horizon is an id that is no longer retained."""
    if until == "" or not exists:
        return []
    upper = id_key(until) if until is not None else None
    events = sorted((event_from_entry(entity_id, i, f) for i, f in entries), key=lambda e: parse_event_id(e.id))
    if horizon and (not events or parse_event_id(events[0].id) != id_key(horizon)):
        check_retained(ZERO_CURSOR, exists=True, horizon=horizon)
    return [e for e in events if upper is None or parse_event_id(e.id) <= upper]


def parse_replay_reply(reply: Any) -> tuple[bool, str | None, list[tuple[Any, Any]]]:
    """Decode the reply of the Redis replay script: ``{exists, horizon, entries}``."""
    exists_raw, horizon_raw, entries = reply[0], reply[1], reply[2] or []
    exists = bool(int(exists_raw))
    horizon = horizon_raw.decode() if isinstance(horizon_raw, bytes) else (horizon_raw or None)
    if horizon in ("0-0", ""):
        horizon = None
    return exists, horizon, [(e[0], e[1]) for e in entries]


# ---- rewind: the last N matching events ----------------------------------------

MAX_REWIND = 100
# History read per step of a rewind scan, newest first: most rewinds (few
# filters) finish in one page; a selective filter reads a few more.
REWIND_PAGE = 200


def require_rewind(value: Any) -> int:
    """A client's ``rewind`` count: an integer 1..MAX_REWIND (JSON number or query
    text of digits only), else a coded :class:`InvalidMessage`."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > 3:
            raise InvalidMessage(f"rewind must be an integer from 1 to {MAX_REWIND}, got {value[:16]!r}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REWIND:
        raise InvalidMessage(f"rewind must be an integer from 1 to {MAX_REWIND}")
    return value


class RewindScan:
    """The rewind rule, without I/O: the last ``count`` events of an entity that
    ``wants`` accepts, read newest first in pages through
    :meth:`rtstream.ports.EventLog.recent`; every reader drives it the same way::

        scan = RewindScan(count, wants)
        while scan.more:
            scan.feed(log.recent(entity_id, scan.page_size, before=scan.before))
        scan.events   # oldest first
        scan.cursor   # the entity's newest id when the scan began ("" if none)

    The seam with live events: every event with id <= ``cursor`` was considered
    by the scan (it is either among ``events`` or older than all of them), so a
    reader that buffers live events from before the scan drops those with id <=
    ``cursor`` and delivers the rest: no gap, no duplicate.
    """

    def __init__(self, count: int, wants: Any, *, page_size: int = REWIND_PAGE, max_scan: int | None = None):
        self.count = count
        self.wants = wants
        self.page_size = page_size
        # never read more than history can hold (the caller passes history_maxlen)
        self.max_scan = max_scan
        self.scanned = 0
        self.before: str | None = None
        self.cursor = ""
        self.more = True
        self._newest_first: list[Event] = []

    def feed(self, page: Iterable[Event]) -> None:
        """One page from ``recent``: events with id < ``before``, newest first."""
        page = list(page)
        if self.before is None and page:
            self.cursor = page[0].id
        for event in page:
            if self.wants(event):
                self._newest_first.append(event)
                if len(self._newest_first) >= self.count:
                    break
        self.scanned += len(page)
        if page:
            self.before = page[-1].id
        if len(page) < self.page_size or len(self._newest_first) >= self.count or (self.max_scan is not None and self.scanned >= self.max_scan):
            self.more = False

    @property
    def events(self) -> list[Event]:
        return self._newest_first[::-1]
