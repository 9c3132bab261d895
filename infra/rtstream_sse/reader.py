"""The process's one Redis reader: ``XREAD BLOCK`` over every fan-out partition
stream (no consumer group: every SSE process needs every event), dispatching
events to the hub by entity. Replay and ``changed`` entries are for the
WebSocket fan-out and are skipped.

On any Redis error it reconnects with capped, jittered backoff and resumes
from the last ids it read, so nothing published meanwhile is missed.

Redis Cluster: one XREAD may only name streams of one hash slot, and each
partition stream has its own (``keys.slot_tag``), so against a cluster client
the reader runs one blocking XREAD per slot, concurrently; the first failure
stops them all and the reconnect resumes each from its last id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from rtstream import keys
from rtstream.adapters.redis_client import clustered
from rtstream.backoff import backoff_delay
from rtstream.fanout import decode_entry
from rtstream.models import Event
from rtstream.settings import Settings

from .hub import Delivery, Hub, delivery_for
from .metrics import SSEMetrics

log = logging.getLogger("rtstream_sse.reader")

BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 5.0



class PartitionReader:
    def __init__(
        self,
        client_factory: Any,
        settings: Settings,
        hub: Hub,
        metrics: SSEMetrics,
        *,
        block_ms: int = 5000,
        count: int = 500,
    ):
        """``client_factory()`` -> a new ``redis.asyncio.Redis`` (bytes replies)."""
        self.client_factory = client_factory
        self.hub = hub
        self.metrics = metrics
        self.block_ms = block_ms
        self.count = count
        self.streams = [keys.fanout_stream(p).name.encode() for p in range(max(1, settings.fanout_partitions))]
        # stream -> last id read; resolved to concrete ids once, then advanced
        self.last_ids: dict[bytes, bytes] | None = None
        self.connected = False
        # for /healthz: when Redis last answered this reader (monotonic; starts now, so
        # a reader that never connects turns unhealthy too), and since when it fails
        self.progress_at = time.monotonic()
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self._stopping = False
        self._client: Any = None

    async def _start_ids(self, client: Any) -> dict[bytes, bytes]:
        """Concrete ids (not ``$``), so a reconnect resumes exactly where we were.
        A missing stream starts at 0-0: whatever is added to it later is new."""
        out: dict[bytes, bytes] = {}
        for name in self.streams:
            last = await client.xrevrange(name, count=1)
            out[name] = last[0][0] if last else b"0-0"
        return out

    async def run(self) -> None:
        attempt = 0
        while not self._stopping:
            client = None
            try:
                # made per attempt: a cluster is recognised once its node answers
                client = self._client = self.client_factory()
                if self.last_ids is None:
                    self.last_ids = await self._start_ids(client)
                else:
                    await client.ping()
                if attempt:
                    log.info("redis reader reconnected after %d attempt(s)", attempt)
                self.connected = True
                self._progressed()
                attempt = 0
                await self._read(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # redis errors, OSError, timeouts: reconnect
                if self._stopping:
                    break
                self.connected = False
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.redis_reconnects += 1
                delay = backoff_delay(attempt, base=BACKOFF_BASE_SECONDS, cap=BACKOFF_CAP_SECONDS, floor=BACKOFF_BASE_SECONDS / 2)
                attempt += 1
                log.warning("redis reader error (%s: %s); reconnecting in %.2fs", type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
            finally:
                self.connected = False
                try:
                    if client is not None:
                        await client.aclose()
                except Exception:
                    pass

    async def _read(self, client: Any) -> None:
        if not clustered(client):
            await self._read_streams(client, self.streams)
            return
        from redis.crc import key_slot

        by_slot: dict[int, list[bytes]] = {}
        for name in self.streams:
            by_slot.setdefault(key_slot(name), []).append(name)
        async with asyncio.TaskGroup() as readers:
            for names in by_slot.values():
                readers.create_task(self._read_streams(client, names))

    async def _read_streams(self, client: Any, names: list[bytes]) -> None:
        assert self.last_ids is not None
        while not self._stopping:
            reply = await client.xread({name: self.last_ids[name] for name in names}, count=self.count, block=self.block_ms)
            self._progressed()
            if reply:
                self.handle(reply)

    def _progressed(self) -> None:
        self.progress_at = time.monotonic()
        self.failing_since = None
        self.last_error = None

    def handle(self, reply: Any) -> None:
        """One XREAD reply: advance the ids, group events by entity, dispatch."""
        assert self.last_ids is not None
        hub = self.hub
        for stream, entries in _stream_items(reply):
            if not entries:
                continue
            self.last_ids[stream] = entries[-1][0]
            batch: dict[str, list[Delivery]] = {}
            for entry_id, fields in entries:
                if fields.get(b"kind") != b"event":
                    continue  # replay/changed: WebSocket fan-out control entries
                entity = fields.get(b"entity", b"").decode()
                self.metrics.events_read += 1
                if not hub.has_clients(entity):
                    continue
                try:
                    event = decode_entry(entry_id, fields)
                except (ValueError, KeyError) as exc:
                    self.metrics.invalid_entries += 1
                    log.warning("undecodable partition entry %r: %s", entry_id, exc)
                    continue
                if isinstance(event, Event):
                    batch.setdefault(entity, []).append(delivery_for(event))
            for entity, deliveries in batch.items():
                hub.dispatch(entity, deliveries)

    async def stop(self) -> None:
        self._stopping = True


def _stream_items(reply: Any) -> list[tuple[bytes, list[Any]]]:
    """XREAD reply (RESP2, the client default): ``[[stream, [(id, fields), ...]], ...]``."""
    return [(stream, entries) for stream, entries in reply]
