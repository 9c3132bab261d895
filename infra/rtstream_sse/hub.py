"""The process's SSE clients and how bytes reach them.

The one Redis reader hands each batch of events to :meth:`Hub.dispatch`, which
encodes every event once (:class:`Delivery`) and writes it to each matching
client of the entity. Clients with equal topics and filters share one joined
body per batch, so most clients cost a dict lookup and one write.

Writes are *eager*: the hub steps the ASGI ``send`` coroutine itself. When the
transport accepts the bytes at once (the normal case), the write completes
without a task switch; when it applies backpressure, the rest of that send
continues in a task and the frames that arrive meanwhile wait in the client's
bounded ``pending`` list, then go out as one chunk (coalescing). A client whose
pending frames or bytes exceed the limit is closed: it reconnects with
``Last-Event-ID`` and replays, so memory stays bounded and nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from rtstream.history import EventId, id_key
from rtstream.models import Event, Filters, Principal
from rtstream.topics import PRESENCE

from . import frames
from .config import SSEConfig
from .metrics import SSEMetrics

log = logging.getLogger("rtstream_sse.hub")

Send = Callable[[dict[str, Any]], Awaitable[None]]
BODY = "http.response.body"


class Delivery:
    """One frame, encoded once and shared by every client that gets it."""

    __slots__ = ("event", "key", "data", "published_at_ms")

    def __init__(self, data: bytes, event: Event | None = None, key: EventId | None = None, published_at_ms: int = 0):
        self.event = event
        # history id as a sort key; None for frames outside the replay order
        # (heartbeats, presence events, which are not kept in history)
        self.key = key
        self.data = data
        self.published_at_ms = published_at_ms


def delivery_for(event: Event) -> Delivery:
    if event.topic == PRESENCE:
        return Delivery(frames.presence(event), event, None, event.published_at_ms)
    return Delivery(frames.event(event), event, id_key(event.id), event.published_at_ms)


HEARTBEAT = Delivery(frames.HEARTBEAT)


class Client:
    __slots__ = (
        "connection_id",
        "principal",
        "topics",
        "filters",
        "unfiltered",
        "subscription_key",
        "send",
        "replaying",
        "pending",
        "pending_bytes",
        "inflight",
        "inflight_frames",
        "task",
        "close_reason",
        "completed",
        "expires_at",
        "seam",
    )

    def __init__(self, connection_id: str, principal: Principal, topics: frozenset[str], filters: Filters, send: Send, *, expires_at: float):
        self.connection_id = connection_id
        self.principal = principal
        self.topics = topics
        self.filters = filters
        self.unfiltered = filters.empty
        self.subscription_key = (topics, filters)
        self.send = send
        # True until the replay (or cursor) has been sent: live frames wait in pending
        self.replaying = True
        self.pending: list[Delivery] = []
        self.pending_bytes = 0
        self.inflight: asyncio.Future | None = None  # a send that met backpressure
        self.inflight_frames: list[Delivery] | None = None
        # the request's task: cancelled to end a stream that cannot be ended properly
        self.task: asyncio.Task | None = None
        self.close_reason: str | None = None
        self.completed = False  # the response was ended properly (final chunk written)
        self.expires_at = expires_at  # monotonic time after which the stream is recycled
        # last history id sent by the replay: live events up to it are duplicates
        # until the reader has caught up past it
        self.seam: EventId | None = None

    def wants(self, event: Event) -> bool:
        return event.topic in self.topics and (self.unfiltered or self.filters.matches(event.topic, event.source, event.data))


async def _resume(coro: Any, yielded: Any) -> None:
    """Finish a coroutine that :meth:`Hub._write` started eagerly and that
    suspended on backpressure: the same stepping an asyncio Task does."""
    try:
        while True:
            if yielded is None:  # bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
            else:
                await asyncio.wait((yielded,))
            yielded = coro.send(None)
    except StopIteration:
        return
    except BaseException:
        coro.close()
        raise


class Hub:
    def __init__(self, config: SSEConfig, metrics: SSEMetrics, *, monotonic: Callable[[], float] = time.monotonic):
        self.config = config
        self.metrics = metrics
        self.monotonic = monotonic
        # entity -> subscription key -> connection id -> client: one batch's
        # selection is computed once per key, and a key that wants none of the
        # batch (a presence event among `*` subscribers) costs O(1), not O(clients)
        self.by_entity: dict[str, dict[Any, dict[str, Client]]] = {}
        self.entity_counts: Counter[str] = Counter()
        self.by_user: Counter[str] = Counter()
        # entity -> (key, id) of its newest event known here, while it has clients:
        # a stream starting now takes it as its cursor instead of reading Redis
        # (a round trip per connect). Every event after it is dispatched after
        # the stream registered, so it is exact.
        self.cursors: dict[str, tuple[EventId, str]] = {}
        self.count = 0
        self.draining = False

    # ---- membership --------------------------------------------------------------

    def user_connections(self, user_id: str) -> int:
        return self.by_user[user_id]

    def entity_connections(self, entity_id: str) -> int:
        return self.entity_counts[entity_id]

    def add(self, client: Client) -> None:
        """Register before reading history: live events from now on are buffered."""
        entity_id = client.principal.entity_id
        self.by_entity.setdefault(entity_id, {}).setdefault(client.subscription_key, {})[client.connection_id] = client
        self.entity_counts[entity_id] += 1
        self.by_user[client.principal.user_id] += 1
        self.count += 1
        self.metrics.connections_opened += 1

    def _unregister(self, client: Client) -> None:
        entity_id = client.principal.entity_id
        groups = self.by_entity.get(entity_id)
        group = groups.get(client.subscription_key) if groups is not None else None
        if group is None or group.pop(client.connection_id, None) is None:
            return
        if not group:
            del groups[client.subscription_key]  # type: ignore[union-attr]
            if not groups:
                del self.by_entity[entity_id]
                self.cursors.pop(entity_id, None)
        self.entity_counts[entity_id] -= 1
        if self.entity_counts[entity_id] <= 0:
            del self.entity_counts[entity_id]
        user = client.principal.user_id
        self.by_user[user] -= 1
        if self.by_user[user] <= 0:
            del self.by_user[user]
        self.count -= 1

    def clients(self) -> Iterable[Client]:
        return [c for groups in self.by_entity.values() for group in groups.values() for c in group.values()]

    # ---- going live after the replay ---------------------------------------------

    def go_live(self, client: Client, prefix: bytes, after: EventId | None, replayed: int = 0) -> None:
        """Send ``prefix`` (retry, cursor or replay) then the live frames buffered
        meanwhile, skipping those the replay already covered (id <= ``after``), and
        switch the client to direct writes. Synchronous: no event can slip between."""
        if client.close_reason is not None:
            return
        buffered = client.pending
        if after is not None:
            buffered = [d for d in buffered if d.key is None or d.key > after]
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "go_live %s after=%s replayed=%d buffered=%s kept=%s",
                client.connection_id, after, replayed, [d.key for d in client.pending], [d.key for d in buffered],
            )
        client.pending = []
        client.pending_bytes = 0
        client.replaying = False
        client.seam = after
        self.metrics.deliveries += replayed
        self._write(client, prefix + b"".join(d.data for d in buffered), buffered)

    # ---- the hot path --------------------------------------------------------------

    def has_clients(self, entity_id: str) -> bool:
        return entity_id in self.by_entity

    def known_cursor(self, entity_id: str) -> str | None:
        """The entity's newest event id known here; "" = known to have none yet;
        None = unknown (read history)."""
        known = self.cursors.get(entity_id)
        return known[1] if known is not None else None

    def note_cursor(self, entity_id: str, event_id: str | None) -> None:
        """Remember ``event_id`` (read from history; None = the entity has no
        events) as the entity's newest, unless a newer one is known; only for
        entities with clients here."""
        if entity_id not in self.by_entity:
            return
        event_id = event_id or ""
        key = id_key(event_id)
        known = self.cursors.get(entity_id)
        if known is None or key > known[0]:
            self.cursors[entity_id] = (key, event_id)

    def dispatch(self, entity_id: str, deliveries: list[Delivery]) -> None:
        """Write one entity's new events (in id order) to its clients."""
        groups = self.by_entity.get(entity_id)
        if not groups:
            return
        for d in reversed(deliveries):
            if d.key is not None and d.event is not None:
                known = self.cursors.get(entity_id)
                if known is None or d.key > known[0]:
                    self.cursors[entity_id] = (d.key, d.event.id)
                break
        for group in tuple(groups.values()):
            first = next(iter(group.values()), None)
            if first is None:
                continue
            # every client of a key wants the same frames: select once per key
            selected = [d for d in deliveries if first.wants(d.event)]  # type: ignore[arg-type]
            if not selected:
                continue
            selected_body = b"".join(d.data for d in selected)
            # one message dict shared by every client of the key (the server only reads it)
            shared = {"type": BODY, "body": selected_body, "more_body": True}
            for client in tuple(group.values()):
                if client.close_reason is not None:
                    continue
                chosen, body, message = selected, selected_body, shared
                if client.seam is not None and not client.replaying:
                    chosen, body = self._past_seam(client, deliveries, chosen)
                    message = {"type": BODY, "body": body, "more_body": True}
                if not chosen:
                    continue
                if client.inflight is None and not client.replaying:
                    self._write(client, body, chosen, message)
                else:
                    self._enqueue(client, chosen, len(body))

    @staticmethod
    def _past_seam(client: Client, deliveries: list[Delivery], chosen: list[Delivery]) -> tuple[list[Delivery], bytes]:
        """The reader may still be behind the history the client was sent: drop what
        the replay already covered. Ids of one entity arrive in order, so once one
        is past the seam, all later ones are."""
        seam = client.seam
        kept = [d for d in chosen if d.key is None or d.key > seam]  # type: ignore[operator]
        if any(d.key is not None and d.key > seam for d in deliveries):  # type: ignore[operator]
            client.seam = None
        return kept, b"".join(d.data for d in kept)

    def _write(self, client: Client, body: bytes, sent: list[Delivery], message: dict[str, Any] | None = None) -> None:
        coro = client.send(message or {"type": BODY, "body": body, "more_body": True})
        try:
            yielded = coro.send(None)
        except StopIteration:
            self._delivered(sent)
            return
        except Exception as exc:  # the server refused the message: the stream is unusable
            log.warning("write to SSE client %s failed: %s", client.connection_id, exc)
            self.drop(client, "error")
            return
        # Backpressure: the transport's buffer is full; finish this send in a task.
        client.inflight_frames = sent
        task = asyncio.ensure_future(_resume(coro, yielded))
        client.inflight = task
        task.add_done_callback(lambda t, c=client: self._flushed(c, t))

    def _flushed(self, client: Client, task: asyncio.Future) -> None:
        client.inflight = None
        if client.close_reason is not None:
            return
        if task.cancelled() or task.exception() is not None:
            self.drop(client, "error")
            return
        if client.inflight_frames:
            self._delivered(client.inflight_frames)
        client.inflight_frames = None
        if client.pending and not client.replaying:
            pending, client.pending, client.pending_bytes = client.pending, [], 0
            self._write(client, b"".join(d.data for d in pending), pending)

    def _enqueue(self, client: Client, chosen: list[Delivery], size: int) -> None:
        client.pending.extend(chosen)
        client.pending_bytes += size
        if len(client.pending) > self.config.max_pending_frames or client.pending_bytes > self.config.max_pending_bytes:
            log.info(
                "closing slow SSE client %s (user %s): %d frames / %d bytes pending",
                client.connection_id,
                client.principal.user_id,
                len(client.pending),
                client.pending_bytes,
            )
            self.drop(client, "slow_client")

    def _delivered(self, sent: list[Delivery]) -> None:
        if not sent:
            return
        now_ms = time.time() * 1000.0
        observe = self.metrics.latency.observe
        n = 0
        for d in sent:
            if d.published_at_ms:
                observe(now_ms - d.published_at_ms)
                n += 1
        self.metrics.deliveries += n

    # ---- closing ---------------------------------------------------------------------

    def drop(self, client: Client, reason: str, *, cancel: bool = True) -> None:
        """Stop writing to ``client`` now. Unless the response was ended properly,
        its request task is cancelled: the handler returns without a final chunk
        and the server closes the connection (EventSource then reconnects)."""
        if client.close_reason is not None:
            return
        client.close_reason = reason
        self._unregister(client)
        if client.inflight is not None:
            client.inflight.cancel()
        client.pending = []
        client.pending_bytes = 0
        self.metrics.connections_dropped[reason] += 1
        if cancel and not client.completed and client.task is not None:
            client.task.cancel()

    def disconnected(self, client: Client) -> None:
        """The peer went away or the handler is finishing (called from its task)."""
        if client.close_reason is None:
            self.drop(client, "disconnect", cancel=False)

    def end(self, client: Client, reason: str, final: bytes) -> None:
        """End the stream properly with ``final`` (a comment and a retry hint), or
        drop it when it is backlogged and cannot take more bytes now."""
        if client.close_reason is not None:
            return
        if client.inflight is not None or client.replaying:
            self.drop(client, reason)
            return
        coro = client.send({"type": BODY, "body": final, "more_body": False})
        try:
            yielded = coro.send(None)
        except StopIteration:
            client.completed = True
        except Exception:
            pass
        else:
            # Backpressure at the very end: give up on the hint, close instead.
            del yielded
            coro.close()
        self.drop(client, reason)

    # ---- periodic work ----------------------------------------------------------------

    def tick(self) -> None:
        """Heartbeat comment to every live client; recycle streams past their age."""
        now = self.monotonic()
        for client in self.clients():
            if client.close_reason is not None or client.replaying:
                continue
            if now >= client.expires_at:
                self.end(client, "max_age", frames.closing_hint("stream reached its maximum age, reconnect", self.config.retry_ms))
            elif client.inflight is None:
                self._write(client, HEARTBEAT.data, [])
            else:
                self._enqueue(client, [HEARTBEAT], len(HEARTBEAT.data))

    def shutdown(self) -> int:
        """Tell every client to reconnect (jittered, so they do not all come back at
        once) and end its stream. Returns how many were ended."""
        self.draining = True
        clients = self.clients()
        low = min(250, self.config.retry_ms)
        for client in clients:
            self.end(client, "shutdown", frames.shutdown_hint(random.randint(low, max(low, self.config.retry_ms))))
        return len(clients)
