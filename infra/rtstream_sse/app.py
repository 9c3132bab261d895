"""The SSE server's composition root: a Starlette app.

- ``GET /events``: the stream (see :class:`EventsEndpoint`); served before the
  Starlette middleware stack on purpose, so every write to a client is one
  coroutine step into the server's ``send``, nothing wrapped around it;
- ``GET /presence``, ``/healthz``, ``/metrics``.

Nothing else: the dashboard, dev tokens and metrics federation are
`rtstream dev`'s (:mod:`rtstream_cli.dev_sse` wraps this app).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Route

from rtstream import keys, protocol
from rtstream.auth import TokenVerifier, extract_token
from rtstream.errors import BackendUnavailable, Forbidden, MethodNotAllowed, NotFound, RealtimeError, ReplayGap, TooManyConnections, Unauthorized
from rtstream.history import ZERO_CURSOR, RewindScan, id_key
from rtstream.models import Event, Principal
from rtstream.service import presence_refusal
from rtstream.settings import Settings
from rtstream.topics import PRESENCE

from . import frames
from .config import SSEConfig
from .hub import Client, Hub
from .metrics import SSEMetrics
from .presence_queue import PresenceQueue
from .query import parse_events_request
from .reader import PartitionReader

log = logging.getLogger("rtstream_sse")

STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    # proxies (nginx and friends) must not buffer the stream
    (b"x-accel-buffering", b"no"),
]


class History:
    """What a stream start needs from history, through the shared async adapter."""

    def __init__(self, client: Any, settings: Settings):
        from rtstream.adapters.redis_eventlog import AsyncRedisEventLog

        self.client = client
        self.settings = settings
        self.log = AsyncRedisEventLog(client, settings)

    async def replay(self, entity_id: str, since: str) -> list[Event]:
        """Events after ``since``; :class:`ReplayGap` if some are no longer kept."""
        return await self.log.replay(entity_id, since)

    async def rewind(self, entity_id: str, count: int, wants: Any) -> RewindScan:
        """The last ``count`` events ``wants`` accepts (the core's rewind rule)."""
        scan = RewindScan(count, wants, max_scan=self.settings.history_maxlen)
        while scan.more:
            scan.feed(await self.log.recent(entity_id, scan.page_size, before=scan.before))
        return scan

    async def last_id(self, entity_id: str) -> str | None:
        """The entity's newest history id (the cursor of a client starting now)."""
        try:
            last = await self.client.xrevrange(keys.history(entity_id, self.settings).name, count=1)
        except Exception as exc:  # redis errors and OSError
            raise BackendUnavailable(f"redis history read failed: {exc}") from exc
        if not last:
            return None
        raw = last[0][0]
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def aclose(self) -> None:
        await self.client.aclose()


def _json_error(exc: RealtimeError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.status, headers=headers)


def _error_headers(exc: RealtimeError) -> dict[str, str]:
    if isinstance(exc, Unauthorized):
        return {"www-authenticate": 'Bearer realm="rtstream"'}
    if exc.status in (429, 503):
        return {"retry-after": "5"}
    return {}


class EventsEndpoint:
    """``GET /events`` (raw ASGI).

    The request task stays alive for the whole stream but keeps almost nothing:
    parsing and the replay run in helpers whose frames (request, replayed
    frames) are gone once the stream is live; then the task only waits for the
    end while the hub writes.
    """

    def __init__(self, state: "ServerState"):
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        st = self.state
        opened = await self._open(scope, receive, send)
        if opened is None:
            return  # answered already (refusal, preflight)
        client, cursor, rewind, cors = opened
        task = asyncio.current_task()
        client.task = task
        try:
            if await self._start(client, cursor, rewind, cors, scope, receive, send):
                # The hub writes from here on. Wait for the end: the peer going
                # away, or the hub ending the response (receive() returns then too).
                while (await receive())["type"] != "http.disconnect":
                    pass
        except asyncio.CancelledError:
            if client.close_reason is None:
                raise  # not ours: the server is stopping
            task.uncancel()  # the hub ended this stream (slow client, shutdown)
        finally:
            st.hub.disconnected(client)
            await st.release(client)

    async def _open(self, scope: dict[str, Any], receive: Any, send: Any) -> tuple[Client, str | None, int | None, dict[str, str]] | None:
        """Auth, query, limits; registers the client (live events buffer from then on)."""
        st = self.state
        request = Request(scope)
        cors = st.cors_headers(request.headers.get("origin"))
        if request.method == "OPTIONS":
            await Response(status_code=204, headers={**cors, **st.preflight_headers(request)})(scope, receive, send)
            return None
        if request.method != "GET":
            await _json_error(MethodNotAllowed(f"{request.method[:16]} is not allowed on /events"), {"allow": "GET, OPTIONS", **cors})(scope, receive, send)
            return None
        try:
            if st.hub.draining:
                raise BackendUnavailable("server is shutting down; reconnect")
            principal = await st.verify(extract_token(request.query_params, request.headers))
            req = parse_events_request(request.query_params, request.headers)
            if PRESENCE in req.topics:
                st.refuse_agent_presence(principal, "sse topics=presence")
            connection_id = f"sse-{uuid.uuid4().hex}"
            await st.admit(principal, connection_id, request.client.host if request.client else "")
        except RealtimeError as exc:
            st.metrics.connections_refused[exc.code] += 1
            await _json_error(exc, {**_error_headers(exc), **cors})(scope, receive, send)
            return None
        # Streams are recycled before the registry's record would expire (it
        # assumes no connection outlives max_connection_seconds); jitter spreads them.
        age = st.settings.max_connection_seconds * random.uniform(0.9, 1.0)
        client = Client(connection_id, principal, req.topics, req.filters, send, expires_at=time.monotonic() + age)
        st.hub.add(client)
        if req.last_event_id is not None:
            st.metrics.reconnects += 1  # a resume: realtime_streaming.reconnection_rate
        return client, req.last_event_id, req.rewind, cors

    async def _start(
        self, client: Client, since: str | None, rewind: int | None, cors: dict[str, str], scope: Any, receive: Any, send: Any
    ) -> bool:
        """``retry:``, then the replay after ``since`` (or the entity's cursor and,
        with ``rewind``, its last matching events), then the live events buffered
        meanwhile. False if the stream never started."""
        st = self.state
        prefix = [frames.retry(st.config.retry_ms)]
        after = None
        replayed = 0
        try:
            if since is not None:
                st.metrics.replays += 1
                events = await st.history.replay(client.principal.entity_id, since)
                after = id_key(events[-1].id) if events else id_key(since)
                for event in events:
                    if client.wants(event):
                        prefix.append(frames.event(event))
                        replayed += 1
            elif rewind is not None:
                # The client is registered, so live events buffer meanwhile; those
                # up to the scan's cursor were considered by it (the seam).
                # The cursor frame comes after the rewound events (whose ids are
                # older), so the stream's Last-Event-ID ends at the seam.
                scan = await st.history.rewind(client.principal.entity_id, rewind, client.wants)
                prefix.extend(frames.event(event) for event in scan.events)
                replayed = len(scan.events)
                if scan.cursor:
                    prefix.append(frames.cursor(scan.cursor))
                    after = id_key(scan.cursor)
            else:
                entity_id = client.principal.entity_id
                cursor = st.hub.known_cursor(entity_id)
                if cursor is None:
                    cursor = await st.history.last_id(entity_id)
                    st.hub.note_cursor(entity_id, cursor)
                # "0-0" for an entity without history: the client can still resume
                cursor = cursor or ZERO_CURSOR
                prefix.append(frames.cursor(cursor))
                after = id_key(cursor)
        except ReplayGap as gap:
            # Tell the client to reload state, then carry on with live events.
            st.metrics.replay_gaps += 1
            prefix.append(frames.error(gap.to_frame()))
            after = None
        except RealtimeError as exc:
            st.hub.drop(client, "error", cancel=False)
            st.metrics.connections_refused[exc.code] += 1
            await _json_error(exc, {**_error_headers(exc), **cors})(scope, receive, send)
            return False
        if client.close_reason is not None:  # gone while we read history
            return False
        headers = STREAM_HEADERS + [(k.encode(), v.encode()) for k, v in cors.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        st.hub.go_live(client, b"".join(prefix), after, replayed)
        return True


class ServerState:
    """Everything the routes share; built by :func:`create_app`."""

    def __init__(
        self,
        settings: Settings,
        config: SSEConfig,
        *,
        redis_url: str,
        verifier: Any,
        service: Any,
        presence: Any,
        redis_factory: Any,
        event_log: Any = None,
    ):
        self.settings = settings
        self.config = config
        self.redis_url = redis_url
        self.verifier = verifier
        self.service = service
        self.presence = presence
        self.event_log = event_log  # sync EventLog: presence events (without a service)
        self.redis_factory = redis_factory
        self.metrics = SSEMetrics()
        self.hub = Hub(config, self.metrics)
        self.reader = PartitionReader(redis_factory, settings, self.hub, self.metrics, block_ms=config.read_block_ms, count=config.read_count)
        self.history: History | None = None
        # This process applies its streams' presence itself (batched, off the
        # connect path) unless a given service does it in connect/disconnect.
        own_presence = presence is not None and (service is None or getattr(service, "presence", None) is None)
        self.presence_queue = PresenceQueue(presence, event_log) if own_presence else None
        self._verify_inline = getattr(verifier, "algorithm", "HS256") == "HS256"
        self._tasks: list[asyncio.Task] = []

    # ---- auth and limits --------------------------------------------------------

    async def verify(self, token: str | None) -> Principal:
        if self._verify_inline:
            return self.verifier.verify(token)  # HS256: microseconds, no I/O
        return await asyncio.to_thread(self.verifier.verify, token)  # JWKS may fetch keys

    async def admit(self, principal: Principal, connection_id: str, source_ip: str) -> None:
        """Per-user and per-entity limits: through the service (shared with the
        WebSocket side: atomic counters in the registry) when configured, else
        this process's own counts. The presence join is queued, not awaited."""
        s = self.settings
        if self.service is not None:
            await asyncio.to_thread(self.service.connect, principal, connection_id, transport="sse", source_ip=source_ip)
        else:
            if self.hub.user_connections(principal.user_id) >= s.max_connections_per_user:
                raise TooManyConnections(f"at most {s.max_connections_per_user} concurrent connections per user")
            if self.hub.entity_connections(principal.entity_id) >= s.max_connections_per_entity:
                raise TooManyConnections(f"at most {s.max_connections_per_entity} concurrent connections per entity")
        if self.presence_queue is not None:
            self.presence_queue.join(principal.entity_id, principal.user_id, connection_id)

    def refuse_agent_presence(self, principal: Principal, route: str) -> None:
        """Raise Forbidden for an agent (the service's one agent boundary), counted
        as a security event like the WebSocket refusals."""
        refusal = presence_refusal(principal, route)
        if refusal is not None:
            self.metrics.security_events[refusal.security_event or ""] += 1
            raise Forbidden(refusal.frames[0]["message"])

    async def release(self, client: Client) -> None:
        p = client.principal
        if self.presence_queue is not None:
            self.presence_queue.leave(p.entity_id, p.user_id, client.connection_id)
        if self.service is None:
            return
        try:
            await asyncio.to_thread(self.service.disconnect, client.connection_id, principal=p, transport="sse")
        except Exception as exc:  # the record expires by TTL anyway
            log.warning("could not remove SSE connection %s from the registry: %s", client.connection_id, exc)

    # ---- CORS (only when RTSTREAM_ALLOWED_ORIGINS is set) -------------------------------

    def cors_headers(self, origin: str | None) -> dict[str, str]:
        allowed = self.config.allowed_origins
        if not origin or not allowed:
            return {}
        if "*" in allowed or origin in allowed:
            return {"access-control-allow-origin": origin, "vary": "Origin"}
        return {}

    def preflight_headers(self, request: Request) -> dict[str, str]:
        if not self.cors_headers(request.headers.get("origin")):
            return {}
        return {
            "access-control-allow-methods": "GET, OPTIONS",
            "access-control-allow-headers": "authorization, last-event-id, cache-control",
            "access-control-max-age": "600",
        }

    # ---- lifecycle ------------------------------------------------------------------------

    async def _history_when_redis_answers(self) -> None:
        """Redis did not answer at start: once it does, rebuild the history client
        for what it is (a cluster needs a cluster client)."""
        from rtstream.adapters.redis_client import detect

        while await detect(self.redis_url, attempts=8) is None:
            pass
        stale, self.history = self.history, History(self.redis_factory(retry=True), self.settings)
        if stale is not None:
            with contextlib.suppress(Exception):
                await stale.aclose()

    async def start(self) -> None:
        from rtstream.adapters.redis_client import detect

        # standalone or cluster: asked off the event loop; a node that does not
        # answer yet gets a standalone history client, replaced once it answers
        known = await detect(self.redis_url)
        self.history = History(self.redis_factory(retry=True), self.settings)
        self._tasks = [
            asyncio.create_task(self.reader.run(), name="sse-redis-reader"),
            asyncio.create_task(self._ticks(), name="sse-heartbeat"),
        ]
        if known is None:
            self._tasks.append(asyncio.create_task(self._history_when_redis_answers(), name="sse-redis-mode"))
        if self.presence is not None:
            self._tasks.append(asyncio.create_task(self._presence_beats(), name="sse-presence"))
        if self.presence_queue is not None:
            self._tasks.append(asyncio.create_task(self.presence_queue.run(), name="sse-presence-changes"))
        if self.config.emf_interval_seconds > 0:
            self._tasks.append(asyncio.create_task(self._emf(), name="sse-emf"))

    async def _emf(self) -> None:
        """Active connections per task for CloudWatch (autoscaling tracks its average)."""
        import sys

        from .metrics import emit_emf

        m = self.metrics
        sent = opened = resumed = security = 0
        while True:
            await asyncio.sleep(self.config.emf_interval_seconds)
            delta, sent = m.deliveries - sent, m.deliveries
            new_opened, opened = m.connections_opened - opened, m.connections_opened
            new_resumed, resumed = m.reconnects - resumed, m.reconnects
            new_security, security = m.security_events.total() - security, m.security_events.total()
            emit_emf(self.config.emf_namespace, self.config.emf_service, active_connections=self.hub.count, deliveries=delta,
                     resumed=new_resumed, fresh=max(0, new_opened - new_resumed), security_events=new_security)
            sys.stdout.flush()  # Powertools prints; CloudWatch Logs (and tests) read the stream as it comes

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_seconds)
            try:
                self.hub.tick()
            except Exception:  # never let one bad client stop the heartbeats
                log.exception("heartbeat tick failed")

    async def _presence_beats(self) -> None:
        """Keep this process's SSE connections alive in the presence store (its
        entries expire after presence_ttl_seconds without a heartbeat)."""
        interval = max(1.0, self.settings.presence_ttl_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            by_entity: dict[str, list[tuple[str, str, str]]] = {}
            for c in self.hub.clients():
                if c.close_reason is None:
                    by_entity.setdefault(c.principal.entity_id, []).append((c.principal.user_id, c.connection_id, "sse"))
            try:
                await asyncio.to_thread(self._touch_all, by_entity)
            except Exception as exc:
                log.warning("presence heartbeats failed: %s", exc)

    def _touch_all(self, by_entity: dict[str, list[tuple[str, str, str]]]) -> None:
        """One batch refresh per entity (a heartbeat per connection read the
        entity's whole member set each time: O(N^2) for N connections)."""
        for entity_id, members in by_entity.items():
            try:
                self.presence.touch(entity_id, members)
            except RealtimeError as exc:
                log.warning("presence refresh of entity %s failed: %s", entity_id, exc.code)

    def drain(self) -> int:
        """SIGTERM: refuse new streams, tell every client to reconnect, end streams."""
        return self.hub.shutdown()

    async def stop(self) -> None:
        self.hub.shutdown()
        await self.reader.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.presence_queue is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.presence_queue.flush(), 5)  # the ended streams' leaves
        if self.history is not None:
            await self.history.aclose()


class SSEApplication(Starlette):
    """Starlette app whose ``/events`` bypasses the middleware stack (hot path)."""

    def __init__(self, state: ServerState, **kwargs: Any):
        super().__init__(**kwargs)
        self.rt = state
        self._events = EventsEndpoint(state)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/events":
            await self._events(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    config: SSEConfig | None = None,
    redis_url: str | None = None,
    registry: Any = None,
    service: Any = None,
    presence: Any = None,
    verifier: Any = None,
    event_log: Any = None,
    redis_factory: Any = None,
) -> SSEApplication:
    """The SSE app. ``registry`` (a ConnectionRegistry) or a ready ``service``
    (RealtimeService) makes limits shared with the WebSocket side; ``presence``
    (a PresenceStore) answers ``/presence``; ``event_log`` (sync EventLog) lets the
    service publish presence events. Without a registry, limits are per process."""
    config = config or SSEConfig.from_env()
    redis_url = redis_url or settings.redis_url
    verifier = verifier or TokenVerifier(settings)
    if service is None and registry is not None:
        from rtstream.service import RealtimeService

        # presence=None: the SSE server applies its streams' presence in batches (PresenceQueue)
        service = RealtimeService(registry=registry, settings=settings, event_log=event_log, presence=None)
    if redis_factory is None:
        from redis.asyncio.retry import Retry
        from redis.backoff import EqualJitterBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        from rtstream.adapters.redis_client import async_client

        socket_timeout = config.read_block_ms / 1000 + 10  # longer than an XREAD BLOCK

        def redis_factory(*, retry: bool = False) -> Any:
            # The reader handles errors itself (backoff, resume, counted); history
            # reads are idempotent, so a dropped pooled connection is retried.
            extra: dict[str, Any] = {}
            if retry:
                extra = {"retry": Retry(EqualJitterBackoff(cap=1.0, base=0.05), 3), "retry_on_error": [RedisConnectionError, RedisTimeoutError]}
            else:
                extra = {"retry": Retry(EqualJitterBackoff(), 0)}
            return async_client(redis_url, socket_connect_timeout=5, socket_timeout=socket_timeout, socket_keepalive=True, **extra)

    state = ServerState(settings, config, redis_url=redis_url, verifier=verifier, service=service, presence=presence,
                        redis_factory=redis_factory, event_log=event_log)

    async def healthz(request: Request) -> Response:
        # Redis reachability and the shared reader's progress (contract: rtstream_sse.health)
        from .health import health

        status, body = health(state.reader, draining=state.hub.draining, connections=state.hub.count,
                              block_seconds=config.read_block_ms / 1000, grace_seconds=config.health_grace_seconds)
        return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})

    async def metrics(request: Request) -> Response:
        text = state.metrics.render(active_connections=state.hub.count, redis_connected=state.reader.connected)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def presence_route(request: Request) -> Response:
        try:
            principal = await state.verify(extract_token(None, request.headers) or request.query_params.get("access_token"))
            state.refuse_agent_presence(principal, "GET /presence")
            if state.presence is None:
                # TODO(issue 7): a presence store is required; without one there is no entity-wide answer.
                raise BackendUnavailable("presence store not configured")
            users = await asyncio.to_thread(state.presence.online, principal.entity_id)
        except RealtimeError as exc:
            return _json_error(exc, _error_headers(exc))
        return JSONResponse(protocol.presence_reply(users), headers={"cache-control": "no-store"})

    async def events_placeholder(request: Request) -> Response:  # pragma: no cover - served by EventsEndpoint
        return PlainTextResponse("", status_code=404)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    middleware = []
    if config.allowed_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.allowed_origins),
                allow_methods=["GET", "OPTIONS"],
                allow_headers=["authorization", "last-event-id", "cache-control"],
            )
        )
    routes = [
        Route("/events", events_placeholder, name="events_url"),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/presence", presence_route),
    ]
    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own refusals (unknown path, method) as coded JSON, like every other refusal
        status = getattr(exc, "status_code", 500)
        error: RealtimeError = NotFound("no such route") if status == 404 else MethodNotAllowed("method not allowed on this route")
        if status not in (404, 405):
            error = RealtimeError(getattr(exc, "detail", None) or "request refused")
            error.status = status
        return _json_error(error, dict(getattr(exc, "headers", None) or {}))

    app = SSEApplication(state, routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.router.redirect_slashes = False  # "/events/" is no route: a coded 404, not an empty 307
    return app
