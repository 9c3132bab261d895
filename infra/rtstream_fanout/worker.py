"""The fan-out worker: leases, Redis stream reading, the HTTP client.

What to send is decided by :class:`rtstream.fanout_engine.FanoutEngine` (the
core); this process only feeds it and owns the Redis/HTTP side:

- Ingest: one worker at a time holds the ingest lease (``keys.ingest_lease``)
  and ``PSUBSCRIBE *:entity:*``; every raw publish is validated and appended
  once (two identical publishes are two events). Pub/sub is at-most-once: the
  publishes sent while the lease changes hands (at most a lease period when an
  owner dies) are not recorded; publishers that need more use the SDK/CLI.
- Ownership: partition ``p`` is processed only by the holder of its lease
  (``SET NX PX``, renewed, released on stop). One owner = no double delivery;
  a dead owner's lease expires and a survivor takes over, first reading what the
  previous one read but did not acknowledge.
- Per partition two readers (consumer group ``fanout``): the event stream
  ``rt:fanout:{p}`` into the engine's per-entity lanes, and the replay stream
  ``rt:replay:{p}`` into its bounded replay lane. Entries are acknowledged
  individually (batched XACK) when the engine finished them.
- Dead letters: ``XADD`` to ``keys.dead_letter_stream()`` (capped).
- Health: :meth:`FanoutWorker.health` (served at ``/healthz``).

Every Redis loop reconnects by itself with capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from rtstream import keys
from rtstream.adapters.redis_client import async_client, detect, node_client_async
from rtstream.adapters.redis_eventlog import AsyncRedisEventLog
from rtstream.backoff import backoff_delay
from rtstream.errors import BackendUnavailable, InvalidMessage, RealtimeError
from rtstream.fanout_engine import EngineLimits, FanoutEngine, strict_id_key
from rtstream.models import Event
from rtstream.ports import DeadLetter
from rtstream.publishing import parse_raw
from rtstream.settings import Settings

from .metrics import WorkerMetrics
from .poster import ManagementPoster

log = logging.getLogger("rtstream_fanout")

RETRYABLE_REDIS = (redis.ConnectionError, redis.TimeoutError, OSError)

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


# reconnect/retry delays of the worker's Redis loops (rtstream.backoff rule)
RETRY_BASE_SECONDS = 0.05
RETRY_CAP_SECONDS = 5.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Lease:
    partition: int
    valid_until: float  # monotonic seconds
    active: bool = True
    task: asyncio.Task | None = None
    replay_task: asyncio.Task | None = None

    def valid(self, margin_s: float) -> bool:
        return self.active and time.monotonic() + margin_s < self.valid_until

    def tasks(self) -> list[asyncio.Task]:
        return [t for t in (self.task, self.replay_task) if t is not None]


@dataclass
class StreamProgress:
    """Entries of one stream handed to the engine and not yet acked, and when the
    stream last made progress (an entry finished, or an idle read)."""

    held: set[str] = field(default_factory=set)
    at: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.at = time.monotonic()


class RedisHistory:
    """:class:`rtstream.ports.HistoryReader` over the async event log; Redis
    refusing an id is InvalidMessage (no retry can fix it), not unavailability."""

    def __init__(self, log: AsyncRedisEventLog, client: aioredis.Redis, settings: Settings) -> None:
        self.log = log
        self.client = client
        self.settings = settings

    async def replay(self, entity_id: str, since: str, until: str | None = None) -> list[Event]:
        strict_id_key(since)
        try:
            return await self.log.replay(entity_id, since, until)
        except BackendUnavailable as exc:
            if isinstance(exc.__cause__, redis.ResponseError):
                raise InvalidMessage(f"history refused the replay: {exc.__cause__}") from exc
            raise

    async def recent(self, entity_id: str, count: int, before: str | None = None) -> list[Event]:
        return await self.log.recent(entity_id, count, before)

    async def last_id(self, entity_id: str) -> str:
        try:
            last = await self.client.xrevrange(keys.history(entity_id, self.settings).name, count=1)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"redis history read failed: {exc}") from exc
        if not last:
            return ""
        return last[0][0].decode() if isinstance(last[0][0], bytes) else str(last[0][0])


class RedisDeadLetters:
    """:class:`rtstream.ports.DeadLetterSink`: one capped Redis stream."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def dead_letter(self, letter: DeadLetter) -> None:
        fields = {"reason": letter.reason, "entity": letter.entity_id, "entry": letter.entry_id, "lane": letter.lane}
        fields.update({f"f.{k}": v for k, v in letter.fields.items()})
        try:
            await self.client.xadd(keys.dead_letter_stream().name, fields, maxlen=keys.DEAD_LETTER_MAXLEN, approximate=True)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"redis dead-letter write failed: {exc}") from exc


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
        max_post_attempts: int = 8,
        ingest: bool = True,
        limits: EngineLimits | None = None,
        stall_s: float = 30.0,
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
        self.limits = limits or EngineLimits(max_post_attempts=max_post_attempts, rewind_max_scan=settings.history_maxlen)
        self.stall_s = stall_s
        self.ingest_enabled = ingest
        self.leases: dict[int, Lease] = {}
        self.progress: dict[str, StreamProgress] = {}
        self.redis_ok_at = 0.0  # monotonic time of the lease loop's last Redis round trip
        self._retiring: dict[int, list[asyncio.Task]] = {}  # readers of lost leases, still finishing
        self._ingest_lease_until = 0.0
        self._ingest_task: asyncio.Task | None = None
        self._to_ack: dict[str, list[str]] = {}
        self._ack_wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.redis: aioredis.Redis | None = None
        self.log: AsyncRedisEventLog | None = None
        self.engine: FanoutEngine = None  # type: ignore[assignment] - built in start()

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        # standalone or cluster client: ask the node first (until it answers or we stop)
        failures = 0
        while await detect(self.redis_url) is None and not self._stopping.is_set():
            failures += 1
            self.metrics.add("redis_reconnects")
            await self._sleep_or_stop(backoff_delay(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
        # socket_timeout above the XREADGROUP block time; connects fail fast
        self.redis = async_client(
            self.redis_url, socket_connect_timeout=3, socket_timeout=max(10.0, self.block_ms / 1000 + 5), health_check_interval=15
        )
        self.log = AsyncRedisEventLog(self.redis, self.settings)
        self.engine = FanoutEngine(
            registry=self.registry,
            history=RedisHistory(self.log, self.redis, self.settings),
            poster=self.poster,
            dead_letters=RedisDeadLetters(self.redis),
            metrics=self.metrics,
            limits=self.limits,
        )
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._tasks.append(asyncio.create_task(self._lease_loop(), name="fanout-leases"))
        self._tasks.append(asyncio.create_task(self._ack_loop(), name="fanout-acks"))
        log.info("fan-out worker %s started (%d partitions)", self.worker_id, self.settings.fanout_partitions)

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Stop reading, let in-flight entries finish, ack them, release the leases."""
        self._stopping.set()
        readers = [t for lease in self.leases.values() for t in lease.tasks()] + [t for ts in self._retiring.values() for t in ts]
        if self._ingest_task is not None:
            readers.append(self._ingest_task)
        waiting = [t for t in readers if not t.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout_s)
        if self.engine is not None:
            await self.engine.drain(timeout_s)
        self._ack_wake.set()
        leftovers = [t for t in self._tasks + readers if not t.done()]
        if leftovers:
            _, pending = await asyncio.wait(leftovers, timeout=timeout_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        names = [keys.fanout_lease(p).name for p in self.leases]
        if self._ingest_task is not None:
            names.append(keys.ingest_lease().name)
        for name in names:
            try:
                await self._release(keys=[name], args=[self.worker_id])
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
                await self.redis.ping()
                self.redis_ok_at = time.monotonic()
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
                        continue  # the previous readers of p are finishing: never two at once
                    elif await self.redis.set(name, self.worker_id, nx=True, px=self.lease_ms):
                        lease = Lease(p, now + self.lease_ms / 1000)
                        self.leases[p] = lease
                        lease.task = asyncio.create_task(self._consume(lease), name=f"fanout-p{p}")
                        lease.replay_task = asyncio.create_task(self._consume_replays(lease), name=f"fanout-replay-p{p}")
                        log.info("worker %s owns partition %d", self.worker_id, p)
                if self.ingest_enabled and not self._stopping.is_set():
                    await self._hold_ingest_lease()
                self.metrics.owned_partitions = len(self.leases)
                self.redis_ok_at = time.monotonic()
                failures = 0
            except RETRYABLE_REDIS as exc:
                failures += 1
                self.metrics.add("redis_reconnects")
                log.warning("lease loop: redis unavailable (%s); retrying", exc)
                await self._sleep_or_stop(backoff_delay(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
                continue
            except Exception:  # noqa: BLE001 - the lease loop must outlive any error
                failures += 1
                log.exception("lease loop: unexpected error; retrying")
                await self._sleep_or_stop(backoff_delay(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
                continue
            await self._sleep_or_stop(self.renew_interval_s)

    async def _hold_ingest_lease(self) -> None:
        """Take or renew the ingest lease; run the ingest loop only while held."""
        assert self.redis is not None
        name = keys.ingest_lease().name
        now = time.monotonic()
        running = self._ingest_task is not None and not self._ingest_task.done()
        if running:
            if await self._renew(keys=[name], args=[self.worker_id, self.lease_ms]):
                self._ingest_lease_until = now + self.lease_ms / 1000
            else:
                log.warning("lost the ingest lease")
                self._ingest_lease_until = 0.0  # the loop sees it and stops
        elif await self.redis.set(name, self.worker_id, nx=True, px=self.lease_ms):
            self._ingest_lease_until = now + self.lease_ms / 1000
            self._ingest_task = asyncio.create_task(self._ingest_loop(), name="fanout-ingest")
            log.info("worker %s owns raw ingest", self.worker_id)

    def _ingest_owned(self) -> bool:
        return time.monotonic() + self.lease_margin_s < self._ingest_lease_until

    def _drop_lease(self, p: int) -> None:
        lease = self.leases.pop(p, None)
        if lease is not None:
            lease.active = False  # readers stop; lanes skip (leave pending) the partition's queued entries
            busy = [t for t in lease.tasks() if not t.done()]
            if busy:
                self._retiring[p] = busy

    def _retiring_busy(self, p: int) -> bool:
        tasks = self._retiring.get(p)
        if tasks is None:
            return False
        if all(t.done() for t in tasks):
            del self._retiring[p]
            return False
        return True

    # ---- partition readers ---------------------------------------------------------------

    async def _consume(self, lease: Lease) -> None:
        """Read the partition's event stream into the engine's per-entity lanes."""
        stream = keys.fanout_stream(lease.partition).name
        await self._read_stream(lease, stream, self._submit_event)

    async def _consume_replays(self, lease: Lease) -> None:
        """Read the partition's replay requests; each is answered concurrently."""
        stream = keys.replay_stream(lease.partition).name
        await self._read_stream(lease, stream, self._submit_replay)

    async def _read_stream(self, lease: Lease, stream: str, submit) -> None:
        """XREADGROUP loop: first the entries a previous owner left unacked, then new
        ones. Entries already handed to the engine (not yet acked) are never handed
        over twice; a Redis failure re-reads the pending list."""
        assert self.redis is not None
        consumer = f"p{lease.partition}"
        # fresh per ownership: entries a lost lease left unacked must be read again
        progress = self.progress[stream] = StreamProgress()
        pending_from: str | None = "0"
        failures = 0
        group_ready = False
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
                if not entries and not progress.held:
                    progress.touch()  # idle and nothing held: healthy
                for entry_id, fields in entries:
                    if not lease.valid(self.lease_margin_s) or self._stopping.is_set():
                        break
                    entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    if pending_from is not None:
                        pending_from = entry_id
                    if entry_id in progress.held:
                        continue  # still being handled (re-read after a Redis failure)
                    if not fields:
                        # trimmed away while pending: nothing left to handle
                        await self.redis.xack(stream, keys.FANOUT_GROUP, entry_id)
                        continue
                    progress.held.add(entry_id)
                    await submit(lease, stream, entry_id, fields, progress)
                failures = 0
            except RETRYABLE_REDIS as exc:
                failures += 1
                self.metrics.add("redis_reconnects")
                log.warning("%s: redis unavailable (%s); retrying", stream, exc)
                pending_from = "0"
                await self._sleep_or_stop(backoff_delay(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
            except redis.ResponseError as exc:
                failures += 1
                log.error("%s: redis error %s", stream, exc)
                pending_from = "0"
                group_ready = False  # e.g. NOGROUP after the stream was deleted
                await self._sleep_or_stop(backoff_delay(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
            except Exception:  # noqa: BLE001 - a bug must not silently stop a partition
                failures += 1
                log.exception("%s: unexpected error", stream)
                pending_from = "0"
                await self._sleep_or_stop(backoff_delay(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))

    def _acker(self, lease: Lease, stream: str, entry_id: str, progress: "StreamProgress"):
        def done() -> None:
            # acks are batched by the ack loop; the entry stays "held" until acked
            progress.touch()
            self._to_ack.setdefault(stream, []).append(entry_id)
            self._ack_wake.set()

        return done

    async def _submit_event(self, lease: Lease, stream: str, entry_id: str, fields: dict, progress: "StreamProgress") -> None:
        async def fetch(entry_id: str) -> dict | None:
            assert self.redis is not None
            try:
                found = await self.redis.xrange(stream, entry_id, entry_id)
            except RETRYABLE_REDIS as exc:
                raise BackendUnavailable(f"redis read failed: {exc}") from exc
            return found[0][1] if found else None

        await self.engine.submit(entry_id, fields, self._acker(lease, stream, entry_id, progress), fetch=fetch, owned=lambda: lease.active)

    async def _submit_replay(self, lease: Lease, stream: str, entry_id: str, fields: dict, progress: "StreamProgress") -> None:
        await self.engine.replay_slot_free()
        self.engine.start_replay(entry_id, fields, self._acker(lease, stream, entry_id, progress))

    async def _ack_loop(self) -> None:
        """XACK what the engine finished, in batches (one round trip per stream)."""
        failures = 0
        while not (self._stopping.is_set() and not self._to_ack and self._engine_idle()):
            try:
                await asyncio.wait_for(self._ack_wake.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
            self._ack_wake.clear()
            batch, self._to_ack = self._to_ack, {}
            if not batch:
                continue
            assert self.redis is not None
            try:
                pipe = self.redis.pipeline(transaction=False)
                for stream, ids in batch.items():
                    pipe.xack(stream, keys.FANOUT_GROUP, *ids)
                await pipe.execute()
                failures = 0
                for stream, ids in batch.items():
                    held = self.progress[stream].held
                    held.difference_update(ids)
            except RETRYABLE_REDIS as exc:
                failures += 1
                log.warning("ack: redis unavailable (%s); retrying", exc)
                for stream, ids in batch.items():
                    self._to_ack.setdefault(stream, []).extend(ids)
                await asyncio.sleep(backoff_delay(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))

    def _engine_idle(self) -> bool:
        return self.engine.in_flight == 0 and self.engine.replays_running == 0

    async def _ensure_group(self, stream: str) -> None:
        assert self.redis is not None
        try:
            # from the start: events queued before any worker existed are delivered too
            await self.redis.xgroup_create(stream, keys.FANOUT_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---- health ---------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict]:
        """``/healthz``: Redis reachable (the lease loop's last round trip) and every
        owned stream either idle or making progress within ``stall_s``."""
        now = time.monotonic()
        reasons = []
        redis_age = now - self.redis_ok_at if self.redis_ok_at else None
        if redis_age is None or redis_age > self.stall_s:
            reasons.append("redis unreachable" if redis_age is not None else "redis not reached yet")
        stalled = []
        for lease in self.leases.values():
            for stream in (keys.fanout_stream(lease.partition).name, keys.replay_stream(lease.partition).name):
                progress = self.progress.get(stream)
                if progress is not None and progress.held and now - progress.at > self.stall_s:
                    stalled.append(stream)
        if stalled:
            reasons.append("no progress on " + ", ".join(stalled))
        body = {
            "status": "ok" if not reasons else "unhealthy",
            "worker": self.worker_id,
            "partitions": sorted(self.leases),
            "ingest": self._ingest_task is not None and not self._ingest_task.done(),
            "inFlight": self.engine.in_flight if self.engine is not None else 0,  # None: start() still asks Redis
            "replays": self.engine.replays_running if self.engine is not None else 0,
            "reasons": reasons,
        }
        return not reasons, body

    # ---- raw ingest -----------------------------------------------------------------------

    async def _ingest_loop(self) -> None:
        """Raw PUBLISH -> history, while this worker holds the ingest lease."""
        assert self.redis is not None
        failures = 0
        while not self._stopping.is_set() and self._ingest_owned():
            # a plain connection to the URL's node: a cluster client has no classic
            # pub/sub, and a cluster's PUBLISH reaches every node's subscribers
            node = node_client_async(self.redis_url, socket_connect_timeout=3, socket_timeout=10, health_check_interval=15)
            pubsub = node.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(keys.RAW_CHANNEL_PATTERN)
                failures = 0
                while not self._stopping.is_set() and self._ingest_owned():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None and message.get("type") == "pmessage":
                        await self._ingest(message["channel"], message["data"])
            except RETRYABLE_REDIS as exc:
                failures += 1
                self.metrics.add("redis_reconnects")
                log.warning("ingest: redis unavailable (%s); resubscribing", exc)
                await self._sleep_or_stop(backoff_delay(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
            except Exception:  # noqa: BLE001 - ingest must outlive any error
                failures += 1
                log.exception("ingest: unexpected error; resubscribing")
                await self._sleep_or_stop(backoff_delay(failures, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
            finally:
                try:
                    await pubsub.aclose()
                    await node.aclose()
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
        for attempt in range(5):
            try:
                await self.log.append(pub.entity_id, pub.topic, pub.data, pub.source)
                self.metrics.add("ingested")
                return
            except RealtimeError as exc:
                log.warning("ingest of %s failed (%s); retrying", pub.topic, exc)
                await asyncio.sleep(backoff_delay(attempt + 1, base=RETRY_BASE_SECONDS, cap=1.0))
        self.metrics.add("delivery_errors")
        log.error("dropped a raw publish on %s:entity:%s after retries", pub.topic, pub.entity_id)
