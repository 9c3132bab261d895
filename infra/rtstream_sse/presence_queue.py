"""Presence joins and leaves of this process's SSE streams, off the request path.

A stream's connect used to wait for two Redis scripts run from a worker thread
(the heartbeat, then the ``presence`` event): thread hops and round trips that
held every connect for milliseconds while the event loop was busy accepting
others. Here a connect only queues its join; one task applies whatever has
queued in ONE worker-thread hop with one pipelined round trip for the presence
steps and one for the events they cause, in order (a leave never overtakes its
join). Best effort, like before: presence must never refuse or break a stream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from rtstream.errors import RealtimeError
from rtstream.topics import PRESENCE

log = logging.getLogger("rtstream_sse")

MAX_BATCH = 500


class PresenceQueue:
    def __init__(self, presence: Any, event_log: Any, *, max_batch: int = MAX_BATCH):
        self.presence = presence
        self.event_log = event_log
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[str, str, str, str, str]] = asyncio.Queue()
        self._busy = False

    def join(self, entity_id: str, user_id: str, connection_id: str) -> None:
        self._queue.put_nowait(("beat", entity_id, user_id, connection_id, "sse"))

    def leave(self, entity_id: str, user_id: str, connection_id: str) -> None:
        self._queue.put_nowait(("leave", entity_id, user_id, connection_id, "sse"))

    @property
    def idle(self) -> bool:
        return self._queue.empty() and not self._busy

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await self._apply(batch)

    async def flush(self) -> None:
        """Apply what is queued now (server stop)."""
        while not self._queue.empty():
            await self._apply([self._queue.get_nowait()])

    async def _apply(self, batch: list[tuple[str, str, str, str, str]]) -> None:
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        self._busy = True
        try:
            await asyncio.to_thread(self._apply_sync, batch)
        except Exception as exc:  # noqa: BLE001 - best effort, logged
            log.warning("presence update of %d stream(s) failed: %s", len(batch), exc)
        finally:
            self._busy = False

    def _apply_sync(self, batch: list[tuple[str, str, str, str, str]]) -> None:
        many = getattr(self.presence, "apply_many", None)
        if many is not None:
            results = many(batch)
        else:  # stores without a batch form (the in-memory twin)
            results = []
            for op, entity_id, user_id, connection_id, transport in batch:
                step = self.presence.heartbeat if op == "beat" else self.presence.leave
                results.append(step(entity_id, user_id, connection_id, transport))
        if self.event_log is None:
            return
        events = [(step[1], PRESENCE, data, "rtstream", False) for step, changes in zip(batch, results) for data in changes or ()]
        if not events:
            return
        append_many = getattr(self.event_log, "append_many", None)
        if append_many is not None:
            append_many(events)
            return
        for entity_id, topic, data, source, record_history in events:
            try:
                self.event_log.append(entity_id, topic, data, source, record_history=record_history)
            except RealtimeError as exc:
                log.warning("presence event for entity %s not published: %s", entity_id, exc.code)
