"""Ports: the small interfaces the core talks to.

Each has an in-memory implementation in :mod:`rtstream.inmemory` (for tests and
the core's own logic) and a real adapter in :mod:`rtstream.adapters`. Adapters
raise only :mod:`rtstream.errors` types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from .models import Connection, Event, JsonObject, Publication, Subscription


@runtime_checkable
class ConnectionRegistry(Protocol):
    """Connections and their subscriptions (DynamoDB on AWS)."""

    def add_connection(self, connection: Connection) -> None:
        """Record a connection without checking limits (it still holds its slots)."""
        ...

    def admit_connection(self, connection: Connection, *, max_per_user: int | None, max_per_entity: int | None) -> None:
        """Record the connection if its user and its entity hold fewer than their
        limits (``None`` = unlimited), else raise ``TooManyConnections``. Atomic:
        N concurrent admissions against a limit L admit exactly min(N, L). Constant
        cost whatever the entity holds. A connection holds its slots until
        :meth:`remove_connection` (its ``$disconnect``, or housekeeping's sweep
        once it expired); a retried admission of the same id takes none."""
        ...

    def get_connection(self, connection_id: str) -> Connection | None: ...

    def remove_connection(self, connection_id: str) -> Connection | None:
        """Delete the connection and every subscription of it, release its
        admission slots; return what was removed."""
        ...

    def count_user_connections(self, user_id: str, now_s: int) -> int:
        """Live (not expired) connections of a user, counted from the records
        (diagnostics and tests; admission uses the counters)."""
        ...

    def count_entity_connections(self, entity_id: str, now_s: int) -> int: ...

    def put_subscription(self, subscription: Subscription) -> None: ...

    def remove_subscription(self, connection_id: str, entity_id: str, topic: str) -> bool: ...

    def connection_subscriptions(self, connection_id: str) -> list[Subscription]: ...

    def subscribers(self, entity_id: str, topic: str) -> list[Subscription]:
        """Subscriptions to exactly ``topic`` (``*`` is its own topic): one Query."""
        ...

    def clear_pending_replay(self, connection_id: str, entity_id: str, topic: str, marker: str) -> None:
        """Activate a subscription whose replay marker the fan-out has reached."""
        ...

    def claim_first_subscribe(self, connection_id: str) -> bool:
        """True exactly once per connection (atomic): decides whether a subscribe
        is the connection's first, which tells a resume from a fresh start."""
        ...

    # ---- housekeeping (rtstream.hygiene) --------------------------------------

    def count_connections(self, now_s: int) -> dict[str, int]:
        """Connections of every entity by transport, from the admission counters
        (records held until swept), at a cost that does not grow with the table."""
        ...

    def stale_connections(self, now_s: int, limit: int) -> list[str]:
        """Ids of up to ``limit`` connection records past their TTL (reading only
        what expired, not the table)."""
        ...

    def stale_subscriptions(self, now_s: int, limit: int) -> list[Subscription]:
        """Up to ``limit`` subscription records past their TTL (their connection
        record may be gone already)."""
        ...

    def repair_counters(self, now_s: int, limit: int) -> tuple[int, int]:
        """Recount up to ``limit`` admission counters that may have drifted (a
        connect killed between its writes); ``(checked, corrected)``."""
        ...


class Appended(NamedTuple):
    """What an idempotent append did: the event (for a repeat, with the first
    event's id) and whether it was a repeat."""

    event: Event
    duplicate: bool


@runtime_checkable
class EventLog(Protocol):
    """Per-entity history plus the fan-out work streams (Redis on AWS)."""

    def append(self, entity_id: str, topic: str, data: JsonObject, source: str, *, record_history: bool = True) -> Event:
        """Assign an id, record in history, queue for fan-out: atomically."""
        ...

    def append_idempotent(self, entity_id: str, topic: str, data: JsonObject, source: str, idempotency_key: str) -> "Appended":
        """:meth:`append` once per ``idempotency_key`` and entity within
        ``Settings.idempotency_window_seconds``: a repeat appends nothing and
        returns the first event's id (``duplicate`` set). Atomic."""
        ...

    def replay(self, entity_id: str, since: str, until: str | None = None) -> list[Event]:
        """Events with ``since < id <= until`` in order; :class:`ReplayGap` if
        anything after ``since`` is no longer retained."""
        ...

    def last_id(self, entity_id: str) -> str:
        """The entity's newest history id ("" when none): the cursor of a client starting now."""
        ...

    def recent(self, entity_id: str, count: int, before: str | None = None) -> list[Event]:
        """Up to ``count`` retained history events with id < ``before`` (None: from
        the newest), newest first: one page of a rewind
        (:class:`rtstream.history.RewindScan`). Expired history reads as empty."""
        ...

    def request_replay(self, subscription: Subscription, since: str, rewind: int = 0) -> str:
        """Queue a ``replay`` entry for ``subscription`` (whose ``pending_replay``
        is the marker) on its partition's replay lane, with ``until`` = the
        entity's last history id read atomically; returns the stream entry id.
        ``rewind`` > 0 (``since`` ""): the last ``rewind`` matching events instead."""
        ...

    def notify_changed(self, entity_id: str, topics: Sequence[str], connection_id: str) -> None:
        """Queue a ``changed`` entry: subscriptions of ``entity_id`` to ``topics`` changed."""
        ...


@runtime_checkable
class Publisher(Protocol):
    """Publishes one validated event (the Redis event log, or EventBridge whose
    bridge Lambda makes the same Redis publication); returns its id."""

    def put(self, publication: Publication) -> str: ...


@runtime_checkable
class Pusher(Protocol):
    """Sends one message to one connection (API Gateway @connections on AWS)."""

    def post(self, connection_id: str, data: bytes) -> None:
        """Raises ConnectionGone (410), Throttled (429), BackendUnavailable (5xx)."""
        ...

    def delete(self, connection_id: str) -> None: ...


@runtime_checkable
class RateLimiter(Protocol):
    """Inbound message limits per connection (Redis on AWS: shared by every invocation)."""

    def allow(self, connection_id: str, rate_per_second: float, burst: int) -> bool:
        """Take one token from the connection's bucket; False when empty."""
        ...

    def record_violation(self, connection_id: str) -> int:
        """Count one refused message; returns the recent count (decides a close)."""
        ...


@runtime_checkable
class PresenceStore(Protocol):
    """Live connections per entity, expiring without heartbeats (see rtstream.presence).

    ``heartbeat`` and ``leave`` return the presence payloads (join/leave/changed)
    the change caused, for the service to publish on the ``presence`` topic."""

    def heartbeat(self, entity_id: str, user_id: str, connection_id: str, transport: str) -> list[JsonObject]: ...

    def leave(self, entity_id: str, user_id: str, connection_id: str, transport: str) -> list[JsonObject]: ...

    def touch(self, entity_id: str, members: Sequence[tuple[str, str, str]]) -> None:
        """Refresh many already-announced connections ``(user, connection, transport)`` at once."""
        ...

    def online(self, entity_id: str) -> list[JsonObject]:
        """``[{"userId", "connections", "transports"}]`` of live (unexpired) connections."""
        ...

    def sweep(self) -> dict[str, list[JsonObject]]:
        """Drop expired members of every entity; ``{entity: presence changes}``
        for the entities where something expired (their ``offline`` events)."""
        ...


@runtime_checkable
class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        import time

        return time.time_ns() // 1_000_000


Events = Sequence[Event]


# ---- the fan-out engine's ports (rtstream.fanout_engine) ---------------------------


@runtime_checkable
class HistoryReader(Protocol):
    """Async read of an entity's history (Redis on AWS). Errors: ReplayGap when
    history after ``since`` is lost, InvalidMessage for an id the store refuses,
    BackendUnavailable when the store is unreachable."""

    async def replay(self, entity_id: str, since: str, until: str | None = None) -> list[Event]: ...

    async def last_id(self, entity_id: str) -> str:
        """The entity's newest history id ("" when none)."""
        ...

    async def recent(self, entity_id: str, count: int, before: str | None = None) -> list[Event]:
        """One rewind page, as :meth:`EventLog.recent` (newest first, id < ``before``)."""
        ...


@runtime_checkable
class AsyncPoster(Protocol):
    """Posts to ``@connections`` and returns HTTP statuses (0 = no answer): the
    engine decides (2xx delivered, 410 gone, 429/5xx/0 retried, else refused)."""

    async def post_many(self, connection_ids: Sequence[str], data: bytes) -> list[int]: ...

    async def post(self, connection_id: str, data: bytes) -> int: ...

    async def post_in_order(self, connection_id: str, frames: Sequence[bytes]) -> list[int]: ...


@runtime_checkable
class DeadLetterSink(Protocol):
    """Where entries go that the fan-out cannot handle (Redis stream on AWS)."""

    async def dead_letter(self, letter: "DeadLetter") -> None: ...


@runtime_checkable
class FanoutMetrics(Protocol):
    """Counters (keys of the worker's metric table) and the latency histogram."""

    def add(self, key: str, n: int = 1) -> None: ...

    def observe_latency(self, ms: float, n: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A work entry given up on: why, whose, and the entry exactly as read."""

    reason: str
    entity_id: str
    entry_id: str
    lane: str  # "events" or "replay"
    fields: dict[str, str] = field(default_factory=dict)
