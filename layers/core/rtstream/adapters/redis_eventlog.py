"""Redis :class:`~rtstream.ports.EventLog`: history streams + fan-out work streams.

One Lua script per operation, loaded with ``register_script`` (EVALSHA):

- ``append.lua``: [idempotency key ``GET``/``SET EX``] + ``XADD`` history
  (trimmed to ``history_maxlen`` in small batches) + ``PEXPIRE`` + ``XADD`` the
  ``event`` entry to the entity's partition stream (``MAXLEN ~``). The horizon
  key (``keys.history_horizon``, same TTL) holds the last trimmed id, or the
  first id of a stream created afresh, so cursors into trimmed or expired
  history are recognised as gaps (see :mod:`rtstream.history`). Plain commands
  only (no ``XSETID``/``XINFO``), so the embedded fakeredis runs it too.
- ``replay.lua``: existence, horizon and ``XRANGE (since until`` in one step.
- ``request_replay.lua``: ``until`` = last history id, read atomically with the
  ``XADD`` of the ``replay`` entry.

Entry formats stay in :mod:`rtstream.streams` / :mod:`rtstream.history`: the
scripts receive ready field/value pairs and only add the ids they generate.
The ``*_call`` functions build script arguments and are shared by the sync
adapter here and the worker's ``redis.asyncio`` wrapper (:class:`AsyncRedisEventLog`).
Redis errors become :class:`BackendUnavailable`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from .. import keys, streams
from ..errors import BackendUnavailable
from ..history import entry_fields, event_from_entry, parse_replay_reply, replay_events
from ..models import Event, Subscription
from ..ports import Appended
from ..settings import Settings

_HERE = Path(__file__).resolve().parent

ScriptCall = tuple[list[str], list[str]]


@functools.cache
def lua(name: str) -> str:
    return (_HERE / f"{name}.lua").read_text()


def _flat(fields: dict[str, str]) -> list[str]:
    out: list[str] = []
    for k, v in fields.items():
        out += [k, v]
    return out


# ---- script arguments (pure) -------------------------------------------------------


def append_call(
    settings: Settings,
    entity_id: str,
    topic: str,
    data: dict[str, Any],
    source: str,
    now_ms: int,
    *,
    record_history: bool = True,
    idempotency_key: str | None = None,
) -> tuple[ScriptCall, Event]:
    """Script keys/args for an append, and the event minus its id."""
    hist = keys.history(entity_id, settings)
    part = keys.fanout_stream(keys.partition_of(entity_id, settings))
    fields = entry_fields(topic, data, source, now_ms)
    event = Event(id="", entity_id=entity_id, topic=topic, data=data, source=source, timestamp=fields["ts"], published_at_ms=now_ms)
    queued = streams.encode_event(event)
    del queued["id"]  # the script inserts the history id
    window = "0"
    call_keys = [hist.name, part.name, keys.history_horizon(entity_id, settings).name]
    if idempotency_key is not None:
        idem = keys.idempotency(entity_id, idempotency_key, settings)
        call_keys.append(idem.name)
        window = str(idem.ttl_seconds)
    hist_pairs = _flat(fields)
    args = [
        str(settings.history_maxlen),
        str((hist.ttl_seconds or 0) * 1000),
        str(settings.fanout_stream_maxlen),
        "1" if record_history else "0",
        window,
        str(len(hist_pairs) // 2),
        *hist_pairs,
        *_flat(queued),
    ]
    return (call_keys, args), event


def replay_call(settings: Settings, entity_id: str, since: str, until: str | None) -> ScriptCall:
    return [keys.history(entity_id, settings).name, keys.history_horizon(entity_id, settings).name], [since, until if until else "+"]


def request_replay_call(settings: Settings, subscription: Subscription, since: str, rewind: int = 0) -> ScriptCall:
    req = streams.ReplayRequest(
        marker=subscription.pending_replay or "",
        connection_id=subscription.connection_id,
        entity_id=subscription.entity_id,
        topic=subscription.topic,
        filters=subscription.filters,
        since=since,
        until="",
        rewind=str(rewind) if rewind else "",
    )
    fields = streams.encode_replay(req)
    del fields["until"]  # read by the script, atomically with the XADD
    # the replay lane: its own stream, so a resume never waits behind live events
    part = keys.replay_stream(keys.partition_of(subscription.entity_id, settings))
    return [keys.history(subscription.entity_id, settings).name, part.name], [str(settings.fanout_stream_maxlen), *_flat(fields)]


def recent_call(settings: Settings, entity_id: str, count: int, before: str | None) -> tuple[str, str, str, int]:
    """``XREVRANGE`` arguments of one rewind page (``(`` = exclusive, Redis >= 6.2)."""
    return keys.history(entity_id, settings).name, f"({before}" if before else "+", "-", count


def recent_events(entity_id: str, reply: Any) -> list[Event]:
    return [event_from_entry(entity_id, entry_id, fields) for entry_id, fields in reply or ()]


def changed_fields(entity_id: str, topics: Sequence[str], connection_id: str) -> dict[str, str]:
    return streams.encode_changed(streams.SubscriptionsChanged(entity_id=entity_id, topics=tuple(topics), connection_id=connection_id))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _finish_append(reply: Any, event: Event) -> Appended:
    """The script's reply: an id, or ``[id, duplicate]`` for an idempotent append."""
    duplicate = False
    if isinstance(reply, (list, tuple)):
        reply, duplicate = reply[0], bool(int(reply[1]))
    return Appended(dataclasses.replace(event, id=_text(reply)), duplicate)


def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


# ---- sync adapter ---------------------------------------------------------------------


class RedisEventLog:
    """:class:`~rtstream.ports.EventLog` over a redis-py client (injected)."""

    def __init__(self, client: "redis.Redis", settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._append = client.register_script(lua("append"))
        self._replay = client.register_script(lua("replay"))
        self._request_replay = client.register_script(lua("request_replay"))

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> "RedisEventLog":
        from .redis_client import sync_client

        return cls(sync_client(url, socket_connect_timeout=5, socket_timeout=10), settings)

    def append(self, entity_id: str, topic: str, data: dict[str, Any], source: str, *, record_history: bool = True) -> Event:
        return self._append_call(entity_id, topic, data, source, record_history=record_history).event

    def append_many(self, items: Sequence[tuple[str, str, dict[str, Any], str, bool]]) -> list[Event]:
        """Appends ``(entity, topic, data, source, record_history)`` in order, in
        one pipelined round trip (each still its own atomic script)."""
        from .redis_client import run_scripts

        calls, events = [], []
        for entity_id, topic, data, source, record_history in items:
            (k, a), event = append_call(self.settings, entity_id, topic, data, source, _now_ms(), record_history=record_history)
            calls.append((self._append, k, a))
            events.append(event)
        try:
            replies = run_scripts(self.client, calls)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"redis append failed: {exc}") from exc
        return [_finish_append(reply, event).event for reply, event in zip(replies, events)]

    def append_idempotent(self, entity_id: str, topic: str, data: dict[str, Any], source: str, idempotency_key: str) -> Appended:
        """Append unless ``idempotency_key`` was used for this entity within the
        window; then nothing is appended and the first event's id comes back."""
        return self._append_call(entity_id, topic, data, source, idempotency_key=idempotency_key)

    def _append_call(self, entity_id: str, topic: str, data: dict[str, Any], source: str, **options: Any) -> Appended:
        (k, a), event = append_call(self.settings, entity_id, topic, data, source, _now_ms(), **options)
        try:
            return _finish_append(self._append(keys=k, args=a), event)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"redis append failed: {exc}") from exc

    def replay(self, entity_id: str, since: str, until: str | None = None) -> list[Event]:
        k, a = replay_call(self.settings, entity_id, since, until)
        try:
            reply = self._replay(keys=k, args=a)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"redis replay failed: {exc}") from exc
        exists, horizon, entries = parse_replay_reply(reply)
        return replay_events(entity_id, since, until, exists=exists, horizon=horizon, entries=entries)

    def last_id(self, entity_id: str) -> str:
        try:
            last = self.client.xrevrange(keys.history(entity_id, self.settings).name, count=1)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"redis history read failed: {exc}") from exc
        return _text(last[0][0]) if last else ""

    def recent(self, entity_id: str, count: int, before: str | None = None) -> list[Event]:
        name, high, low, n = recent_call(self.settings, entity_id, count, before)
        try:
            return recent_events(entity_id, self.client.xrevrange(name, high, low, count=n))
        except redis.RedisError as exc:
            raise BackendUnavailable(f"redis history read failed: {exc}") from exc

    def request_replay(self, subscription: Subscription, since: str, rewind: int = 0) -> str:
        k, a = request_replay_call(self.settings, subscription, since, rewind)
        try:
            return _text(self._request_replay(keys=k, args=a))
        except redis.RedisError as exc:
            raise BackendUnavailable(f"redis request_replay failed: {exc}") from exc

    def notify_changed(self, entity_id: str, topics: Sequence[str], connection_id: str) -> None:
        part = keys.fanout_stream(keys.partition_of(entity_id, self.settings))
        try:
            self.client.xadd(part.name, changed_fields(entity_id, topics, connection_id), maxlen=self.settings.fanout_stream_maxlen, approximate=True)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"redis notify_changed failed: {exc}") from exc


# ---- async twin of the I/O only (same scripts, same argument builders) ---------------------


class AsyncRedisEventLog:
    """The worker's and SSE server's view: ``redis.asyncio`` client, same scripts."""

    def __init__(self, client: "redis.asyncio.Redis", settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._append = client.register_script(lua("append"))
        self._replay = client.register_script(lua("replay"))

    async def append(self, entity_id: str, topic: str, data: dict[str, Any], source: str, *, record_history: bool = True) -> Event:
        (k, a), event = append_call(self.settings, entity_id, topic, data, source, _now_ms(), record_history=record_history)
        try:
            return _finish_append(await self._append(keys=k, args=a), event).event
        except redis.RedisError as exc:
            raise BackendUnavailable(f"redis append failed: {exc}") from exc

    async def replay(self, entity_id: str, since: str, until: str | None = None) -> list[Event]:
        """Events with ``since < id <= until``; :class:`ReplayGap` when history was lost."""
        k, a = replay_call(self.settings, entity_id, since, until)
        try:
            reply = await self._replay(keys=k, args=a)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"redis replay failed: {exc}") from exc
        exists, horizon, entries = parse_replay_reply(reply)
        return replay_events(entity_id, since, until, exists=exists, horizon=horizon, entries=entries)

    async def recent(self, entity_id: str, count: int, before: str | None = None) -> list[Event]:
        name, high, low, n = recent_call(self.settings, entity_id, count, before)
        try:
            return recent_events(entity_id, await self.client.xrevrange(name, high, low, count=n))
        except redis.RedisError as exc:
            raise BackendUnavailable(f"redis history read failed: {exc}") from exc
