"""The fan-out worker: Redis work streams -> subscribed connections.

- Ingest: ``PSUBSCRIBE *:entity:*``; every raw publish is validated and
  recorded through the append script, guarded by a dedup key so N workers
  record it once. Invalid ones are logged and counted.
- Ownership: partition ``p`` is processed only by the holder of its lease
  (``SET NX PX``, renewed, released on stop). One owner = no double delivery
  and per-entity order; a dead owner's lease expires and a survivor takes over.
- Processing: consumer group ``fanout``, one fixed consumer name per partition,
  so a new owner first drains what the previous one read but did not ack
  (the pending entries), then reads new entries; entries are handled in order
  and acknowledged one by one.
- Per event: subscribers of ``(entity, topic)`` and ``(entity, '*')`` (cached;
  every subscription change is an entry of the same ordered stream, which
  invalidates the cache at the right point), filtered by
  :func:`rtstream.fanout.plan_event`, posted concurrently over a pooled,
  pipelined HTTP client; 410 prunes the connection, 429/5xx are retried with
  capped, jittered backoff.
- Per replay entry: ``subscribed``, the replayed history or ``replay_gap``, in
  order, then the subscription is activated.

Every Redis loop reconnects by itself with capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from rtstream import keys
from rtstream.adapters.redis_eventlog import AsyncRedisEventLog
from rtstream.errors import RealtimeError, ReplayGap
from rtstream.fanout import MarkerSet, SubscriberCache, decode_entry, lookup_topics, plan_event, replay_frames
from rtstream.models import Event, Subscription
from rtstream.publishing import parse_raw, raw_digest
from rtstream.settings import Settings
from rtstream.streams import ReplayRequest, SubscriptionsChanged

from .metrics import WorkerMetrics
from .poster import BROKEN, ManagementPoster

log = logging.getLogger("rtstream_fanout")

RETRYABLE_REDIS = (redis.ConnectionError, redis.TimeoutError, OSError)
# an entry that fails this often for a non-backend reason is skipped (logged, counted)
POISON_ATTEMPTS = 5

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def backoff_s(attempt: int, base: float = 0.05, cap: float = 5.0) -> float:
    """Capped exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 16))))


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def retryable(status: int) -> bool:
    return status == BROKEN or status == 429 or status >= 500


@dataclass
class Lease:
    partition: int
    valid_until: float  # monotonic seconds
    active: bool = True
    task: asyncio.Task | None = None

    def valid(self, margin_s: float) -> bool:
        return self.active and time.monotonic() + margin_s < self.valid_until


class FanoutWorker:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: Any,
        poster: ManagementPoster,
        redis_url: str | None = None,
        worker_id: str | None = None,
        metrics: WorkerMetrics | None = None,
        lease_ms: int | None = None,
        batch: int = 100,
        block_ms: int = 500,
        max_post_attempts: int = 10,
        ingest: bool = True,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.poster = poster
        self.redis_url = redis_url or settings.redis_url
        self.worker_id = worker_id or default_worker_id()
        self.metrics = metrics or WorkerMetrics()
        self.lease_ms = lease_ms or (keys.fanout_lease(0).ttl_seconds or 10) * 1000
        # renew well inside the lease; stop processing before it could lapse
        self.renew_interval_s = max(0.05, min(1.0, self.lease_ms / 4000))
        self.lease_margin_s = min(2.0, self.lease_ms / 3000)
        self.batch = batch
        self.block_ms = block_ms
        self.max_post_attempts = max_post_attempts
        self.ingest_enabled = ingest
        self.cache = SubscriberCache()
        self.markers = MarkerSet()
        self.leases: dict[int, Lease] = {}
        self._retiring: dict[int, asyncio.Task] = {}  # consumers of lost leases, still finishing
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.redis: aioredis.Redis | None = None
        self.log: AsyncRedisEventLog | None = None

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        # socket_timeout above the XREADGROUP block time; connects fail fast
        self.redis = aioredis.Redis.from_url(
            self.redis_url, socket_connect_timeout=3, socket_timeout=max(10.0, self.block_ms / 1000 + 5), health_check_interval=15
        )
        self.log = AsyncRedisEventLog(self.redis, self.settings)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._tasks.append(asyncio.create_task(self._lease_loop(), name="fanout-leases"))
        if self.ingest_enabled:
            self._tasks.append(asyncio.create_task(self._ingest_loop(), name="fanout-ingest"))
        log.info("fan-out worker %s started (%d partitions)", self.worker_id, self.settings.fanout_partitions)

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Stop reading, let in-flight entries finish, release the leases."""
        self._stopping.set()
        consumers = [lease.task for lease in self.leases.values() if lease.task is not None] + list(self._retiring.values())
        waiting = [t for t in self._tasks + consumers if not t.done()]
        if waiting:
            done, pending = await asyncio.wait(waiting, timeout=timeout_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for p in list(self.leases):
            try:
                await self._release(keys=[keys.fanout_lease(p).name], args=[self.worker_id])
            except Exception:  # noqa: BLE001 - best effort: the lease expires anyway
                pass
        self.leases.clear()
        self.metrics.owned_partitions = 0
        await self.poster.close()
        if self.redis is not None:
            await self.redis.aclose()
        log.info("fan-out worker %s stopped", self.worker_id)

    async def _sleep_or_stop(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # ---- leases ---------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        assert self.redis is not None
        failures = 0
        while not self._stopping.is_set():
            try:
                for p in range(self.settings.fanout_partitions):
                    if self._stopping.is_set():
                        break
                    name = keys.fanout_lease(p).name
                    lease = self.leases.get(p)
                    now = time.monotonic()
                    if lease is not None:
                        if await self._renew(keys=[name], args=[self.worker_id, self.lease_ms]):
                            lease.valid_until = now + self.lease_ms / 1000
                        else:
                            log.warning("lost the lease of partition %d", p)
                            self._drop_lease(p)
                    elif self._retiring_busy(p):
                        continue  # the previous consumer of p is finishing its entry: never two at once
                    elif await self.redis.set(name, self.worker_id, nx=True, px=self.lease_ms):
                        lease = Lease(p, now + self.lease_ms / 1000)
                        self.leases[p] = lease
                        lease.task = asyncio.create_task(self._consume(lease), name=f"fanout-p{p}")
                        log.info("worker %s owns partition %d", self.worker_id, p)
                self.metrics.owned_partitions = len(self.leases)
                failures = 0
            except RETRYABLE_REDIS as exc:
                failures += 1
                self.metrics.add("redis_reconnects")
                log.warning("lease loop: redis unavailable (%s); retrying", exc)
                await self._sleep_or_stop(backoff_s(failures))
                continue
            except Exception:  # noqa: BLE001 - the lease loop must outlive any error
                failures += 1
                log.exception("lease loop: unexpected error; retrying")
                await self._sleep_or_stop(backoff_s(failures))
                continue
            await self._sleep_or_stop(self.renew_interval_s)

    def _drop_lease(self, p: int) -> None:
        lease = self.leases.pop(p, None)
        if lease is not None:
            lease.active = False  # the consumer finishes its current entry and exits
            if lease.task is not None and not lease.task.done():
                self._retiring[p] = lease.task

    def _retiring_busy(self, p: int) -> bool:
        task = self._retiring.get(p)
        if task is None:
            return False
        if task.done():
            del self._retiring[p]
            return False
        return True

    # ---- partition consumer -----------------------------------------------------------

    async def _consume(self, lease: Lease) -> None:
        assert self.redis is not None
        stream = keys.fanout_stream(lease.partition).name
        consumer = f"p{lease.partition}"
        pending_from: str | None = "0"  # first the entries a previous owner left unacked
        failures = 0
        group_ready = False
        current: Any = None  # entry being handled, for poison detection
        poison: tuple[Any, int] = (None, 0)
        while lease.active and not self._stopping.is_set():
            if not lease.valid(self.lease_margin_s):
                await self._sleep_or_stop(self.renew_interval_s)
                continue
            try:
                if not group_ready:
                    await self._ensure_group(stream)
                    group_ready = True
                if pending_from is not None:
                    reply = await self.redis.xreadgroup(keys.FANOUT_GROUP, consumer, {stream: pending_from}, count=self.batch)
                else:
                    reply = await self.redis.xreadgroup(keys.FANOUT_GROUP, consumer, {stream: ">"}, count=self.batch, block=self.block_ms)
                entries = reply[0][1] if reply else []
                if pending_from is not None and not entries:
                    pending_from = None
                    continue
                for entry_id, fields in entries:
                    if not lease.valid(self.lease_margin_s) or self._stopping.is_set():
                        break
                    current = entry_id
                    if fields:
                        await self._handle(entry_id, fields)
                    await self.redis.xack(stream, keys.FANOUT_GROUP, entry_id)
                    current = None
                    if pending_from is not None:
                        pending_from = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                failures = 0
            except RETRYABLE_REDIS as exc:
                failures += 1
                self.metrics.add("redis_reconnects")
                log.warning("partition %d: redis unavailable (%s); retrying", lease.partition, exc)
                pending_from = "0"  # re-read what was not acked, in order
                await self._sleep_or_stop(backoff_s(failures))
            except RealtimeError as exc:
                # a backend (DynamoDB, Redis script) failed mid-entry: retry it, in order
                failures += 1
                log.warning("partition %d: %s (%s); retrying the entry", lease.partition, exc.code, exc)
                pending_from = "0"
                await self._sleep_or_stop(backoff_s(failures))
            except redis.ResponseError as exc:
                failures += 1
                log.error("partition %d: redis error %s", lease.partition, exc)
                pending_from = "0"
                group_ready = False  # e.g. NOGROUP after the stream was deleted
                await self._sleep_or_stop(backoff_s(failures))
            except Exception:  # noqa: BLE001 - a bug must not silently stop a partition
                failures += 1
                log.exception("partition %d: unexpected error handling entry %r", lease.partition, current)
                poison = (current, poison[1] + 1) if current is not None and current == poison[0] else (current, 1)
                if current is not None and poison[1] >= POISON_ATTEMPTS:
                    # the same entry keeps failing for a non-backend reason: skip it, keep the partition moving
                    self.metrics.add("invalid_events")
                    log.error("partition %d: skipping entry %r after %d failures", lease.partition, current, poison[1])
                    try:
                        await self.redis.xack(stream, keys.FANOUT_GROUP, current)
                    except RETRYABLE_REDIS:
                        pass
                    poison = (None, 0)
                pending_from = "0"
                await self._sleep_or_stop(backoff_s(failures))

    async def _ensure_group(self, stream: str) -> None:
        assert self.redis is not None
        try:
            # from the start: events queued before any worker existed are delivered too
            await self.redis.xgroup_create(stream, keys.FANOUT_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _handle(self, entry_id: Any, fields: dict) -> None:
        try:
            entry = decode_entry(entry_id, fields)
        except (ValueError, KeyError, TypeError) as exc:
            self.metrics.add("invalid_events")
            log.warning("skipping undecodable work entry %r: %s", entry_id, exc)
            return
        if isinstance(entry, Event):
            self.metrics.add("events")
            subs = await self._subscribers(entry)
            plan = plan_event(entry, subs, self.markers)
            if plan.connection_ids:
                await self._deliver(plan.connection_ids, plan.data, entry.published_at_ms)
        elif isinstance(entry, ReplayRequest):
            await self._replay(entry)
        elif isinstance(entry, SubscriptionsChanged):
            self.cache.invalidate(entry.entity_id, entry.topics)

    async def _subscribers(self, event: Event) -> list[Subscription]:
        topics = lookup_topics(event)
        found: list[Subscription] = []
        missing = []
        now = time.monotonic()
        for topic in topics:
            cached = self.cache.get(event.entity_id, topic, now)
            if cached is None:
                missing.append(topic)
            else:
                found += cached
        if missing:
            fetched = await asyncio.gather(*(asyncio.to_thread(self.registry.subscribers, event.entity_id, t) for t in missing))
            for topic, subs in zip(missing, fetched):
                self.cache.put(event.entity_id, topic, subs, now)
                found += subs
        return found

    # ---- delivery ------------------------------------------------------------------------

    async def _deliver(self, connection_ids: Sequence[str], data: bytes, published_at_ms: int) -> None:
        ids = list(connection_ids)
        attempt = 0
        while ids:
            statuses = await self.poster.post_many(ids, data)
            ok = sum(1 for s in statuses if 200 <= s < 300)
            if ok:
                self.metrics.add("deliveries", ok)
                if published_at_ms:
                    self.metrics.observe_latency(max(0.0, time.time() * 1000 - published_at_ms), ok)
            gone = [cid for cid, s in zip(ids, statuses) if s == 410]
            retry = [cid for cid, s in zip(ids, statuses) if retryable(s)]
            refused = len(ids) - ok - len(gone) - len(retry)
            if refused:
                self.metrics.add("delivery_errors", refused)
                log.warning("%d posts refused (e.g. status %s)", refused, next(s for s in statuses if not (200 <= s < 300) and s != 410 and not retryable(s)))
            if gone:
                await self._prune(gone)
            attempt += 1
            if retry and attempt < self.max_post_attempts and not self._stopping.is_set():
                self.metrics.add("retries", len(retry))
                await asyncio.sleep(backoff_s(attempt, base=0.05, cap=2.0))
                ids = retry
                continue
            if retry:
                self.metrics.add("delivery_errors", len(retry))
                log.warning("giving up on %d posts after %d attempts", len(retry), attempt)
            break

    async def _prune(self, connection_ids: list[str]) -> None:
        for cid in connection_ids:
            self.cache.remove_connection(cid)
        results = await asyncio.gather(*(asyncio.to_thread(self.registry.remove_connection, cid) for cid in connection_ids), return_exceptions=True)
        pruned = sum(1 for r in results if not isinstance(r, BaseException))
        self.metrics.add("pruned", pruned)
        for cid, r in zip(connection_ids, results):
            if isinstance(r, BaseException):
                log.warning("could not prune connection %s: %s", cid, r)
            else:
                log.info("pruned stale connection %s (410 Gone)", cid)

    async def _replay(self, req: ReplayRequest) -> None:
        assert self.log is not None
        try:
            replayed: list[Event] | ReplayGap = await self.log.replay(req.entity_id, req.since, req.until)
        except ReplayGap as gap:
            replayed = gap
            self.metrics.add("replay_gaps")
        frames = replay_frames(req, replayed)
        delivered = await self._post_in_order(req.connection_id, frames)
        self.metrics.add("replays")
        if delivered is None:
            return  # gone: pruned, nothing to activate
        self.metrics.add("deliveries", max(0, delivered - 1))
        await asyncio.to_thread(self.registry.clear_pending_replay, req.connection_id, req.entity_id, req.topic, req.marker)
        self.markers.add(req.marker)
        self.cache.invalidate(req.entity_id, [req.topic])

    async def _post_in_order(self, connection_id: str, frames: list[bytes]) -> int | None:
        """Post frames to one connection in order; number delivered, None if gone."""
        statuses = await self.poster.post_in_order(connection_id, frames)
        delivered = 0
        for i, status in enumerate(statuses):
            if 200 <= status < 300:
                delivered += 1
                continue
            if status == 410:
                await self._prune([connection_id])
                return None
            # retry the rest one by one, in order
            for frame in frames[i:]:
                for attempt in range(self.max_post_attempts):
                    s = await self.poster.post(connection_id, frame)
                    if 200 <= s < 300:
                        delivered += 1
                        break
                    if s == 410:
                        await self._prune([connection_id])
                        return None
                    if not retryable(s):
                        self.metrics.add("delivery_errors")
                        break
                    self.metrics.add("retries")
                    await asyncio.sleep(backoff_s(attempt + 1, cap=2.0))
                else:
                    self.metrics.add("delivery_errors")
            break
        return delivered

    # ---- raw ingest -----------------------------------------------------------------------

    async def _ingest_loop(self) -> None:
        assert self.redis is not None
        failures = 0
        while not self._stopping.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(keys.RAW_CHANNEL_PATTERN)
                failures = 0
                while not self._stopping.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None and message.get("type") == "pmessage":
                        await self._ingest(message["channel"], message["data"])
            except RETRYABLE_REDIS as exc:
                failures += 1
                self.metrics.add("redis_reconnects")
                log.warning("ingest: redis unavailable (%s); resubscribing", exc)
                await self._sleep_or_stop(backoff_s(failures))
            except Exception:  # noqa: BLE001 - ingest must outlive any error
                failures += 1
                log.exception("ingest: unexpected error; resubscribing")
                await self._sleep_or_stop(backoff_s(failures))
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - the connection may already be gone
                    pass

    async def _ingest(self, channel: bytes | str, payload: bytes | str) -> None:
        assert self.log is not None
        try:
            pub = parse_raw(channel, payload)
        except RealtimeError as exc:
            self.metrics.add("invalid_events")
            shown = channel.decode(errors="replace") if isinstance(channel, bytes) else channel
            log.warning("invalid raw publish on %r: %s: %s", shown[:120], exc.code, exc.message[:300])
            return
        digest = raw_digest(channel, payload)
        for attempt in range(5):
            try:
                if await self.log.ingest_once(digest, pub.entity_id, pub.topic, pub.data, pub.source) is not None:
                    self.metrics.add("ingested")
                return
            except RealtimeError as exc:
                log.warning("ingest of %s failed (%s); retrying", pub.topic, exc)
                await asyncio.sleep(backoff_s(attempt + 1, cap=1.0))
        self.metrics.add("delivery_errors")
        log.error("dropped a raw publish on %s:entity:%s after retries", pub.topic, pub.entity_id)
