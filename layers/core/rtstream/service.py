"""The WebSocket use cases, transport-independent: connect, disconnect, and one
client message in, reply frames out. Every I/O goes through the ports.

Security rules enforced here (and only here, so every runtime gets them):

- the entity of a subscription is ALWAYS the principal's, never the frame's;
- subscriptions per connection, connections per user and per entity are capped;
- agents may only subscribe, unsubscribe and ping; nobody may publish,
  broadcast or disconnect others over a client connection (``forbidden``); an
  agent trying, or exceeding the subscription limit, is a security event;
- inbound messages are rate limited per connection; a connection that keeps
  flooding is flagged for closing.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import protocol
from .errors import Forbidden, InvalidMessage, NotSubscribed, PolicyViolation, RateLimited, RealtimeError, TooManyConnections, TooManySubscriptions
from .history import ZERO_CURSOR
from .models import Connection, Principal, Subscription
from .ports import Clock, ConnectionRegistry, EventLog, PresenceStore, RateLimiter, SystemClock
from .settings import Settings
from .topics import PRESENCE

security_log = logging.getLogger("rtstream.security")
log = logging.getLogger("rtstream.service")

# Agents act for users but may only follow events (seed: allowed_operations = subscribe_to_updates).
AGENT_ALLOWED = (protocol.Subscribe, protocol.Unsubscribe, protocol.Ping)
# API Gateway never keeps a connection longer than max_connection_seconds; the
# slack covers clock skew and the $disconnect that may arrive late.
TTL_SLACK_SECONDS = 300


@dataclass(frozen=True, slots=True)
class Reply:
    """Frames to answer with; ``close`` when the transport should drop the connection.

    ``resumed`` is set on the connection's first subscribe: True when the client
    resumes (``since``), False for a fresh start (``realtime_streaming.reconnection_rate``).
    ``security_event`` names a security event the transport should count."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    close: bool = False
    resumed: bool | None = None
    security_event: str | None = None


AGENT_FORBIDDEN_OPERATION = "agent_forbidden_operation"


def agent_refusal(principal: Principal, action: str, error: Forbidden) -> Reply:
    """An agent refused: the security log line and the security event every
    transport counts (WebSocket frames here, the SSE routes through
    :func:`presence_refusal`)."""
    # ids and the action only: never the frame (it may carry anything) or a token
    security_log.warning("agent %s of entity %s attempted a forbidden operation: %s", principal.user_id, principal.entity_id, action)
    return Reply([error.to_frame()], security_event=AGENT_FORBIDDEN_OPERATION)


def presence_refusal(principal: Principal, route: str = "presence") -> Reply | None:
    """The one agent boundary for presence, on every route (WebSocket ``presence``
    frame, ``GET /presence``, SSE ``topics=presence``): None when allowed."""
    if not principal.is_agent:
        return None
    return agent_refusal(principal, route, Forbidden("agents may not read presence"))


class RealtimeService:
    def __init__(
        self,
        *,
        registry: ConnectionRegistry,
        settings: Settings,
        event_log: EventLog | None = None,
        rate_limiter: RateLimiter | None = None,
        presence: PresenceStore | None = None,
        clock: Clock = SystemClock(),
    ):
        self.registry = registry
        self.settings = settings
        self.event_log = event_log
        self.rate_limiter = rate_limiter
        self.presence = presence
        self.clock = clock

    # ---- connection lifecycle --------------------------------------------------

    def connect(
        self,
        principal: Principal,
        connection_id: str,
        *,
        transport: str = "websocket",
        source_ip: str = "",
        now_ms: int | None = None,
    ) -> Connection:
        now_ms = self.clock.now_ms() if now_ms is None else now_ms
        now_s = now_ms // 1000
        s = self.settings
        connection = Connection(
            connection_id=connection_id,
            principal=principal,
            transport=transport,  # type: ignore[arg-type]
            connected_at_ms=now_ms,
            source_ip=source_ip,
            expires_at=now_s + s.max_connection_seconds + TTL_SLACK_SECONDS,
        )
        # One atomic admission against both limits: constant cost, exact under concurrency.
        try:
            self.registry.admit_connection(connection, max_per_user=s.max_connections_per_user, max_per_entity=s.max_connections_per_entity)
        except TooManyConnections as exc:
            security_log.warning("connection refused for user %s of entity %s: %s", principal.user_id, principal.entity_id, exc.message)
            raise
        if self.presence is not None:
            self._presence_change(principal.entity_id, lambda p: p.heartbeat(principal.entity_id, principal.user_id, connection_id, transport))
        return connection

    def disconnect(self, connection_id: str, *, principal: Principal | None = None, transport: str = "websocket") -> Connection | None:
        """Remove the connection and its subscriptions. ``principal`` (from the
        transport's own context) lets presence be cleared even when the record
        is already gone (expired or never written)."""
        try:
            subscriptions = self.registry.connection_subscriptions(connection_id)
        except RealtimeError as exc:
            # only for the change notices: the removal (and the slots' release) still runs
            log.warning("subscriptions of %s unreadable on disconnect: %s", connection_id, exc.code)
            subscriptions = []
        connection = self.registry.remove_connection(connection_id)
        if self.event_log is not None:
            by_entity: dict[str, list[str]] = {}
            for sub in subscriptions:
                by_entity.setdefault(sub.entity_id, []).append(sub.topic)
            for entity_id, topics in by_entity.items():
                self._notify_changed(entity_id, sorted(set(topics)), connection_id)
        who = connection.principal if connection is not None else principal
        how = connection.transport if connection is not None else transport
        if who is not None and self.presence is not None:
            self._presence_change(who.entity_id, lambda p: p.leave(who.entity_id, who.user_id, connection_id, how))
        return connection

    # ---- messages --------------------------------------------------------------

    def handle_message(self, connection_id: str, principal: Principal, body: str | bytes) -> list[dict[str, Any]]:
        """Reply frames for one client message; coded errors become error frames."""
        return self.handle(connection_id, principal, body).frames

    def handle(self, connection_id: str, principal: Principal, body: str | bytes) -> Reply:
        if self.rate_limiter is not None and not self._allow(connection_id):
            return self._refused(connection_id, Reply([RateLimited(f"more than {self.settings.rate_per_second:g} messages/s").to_frame()]))
        try:
            frame = protocol.parse_client_frame(body, max_bytes=self.settings.max_frame_bytes)
        except RealtimeError as exc:
            return Reply([exc.to_frame()])
        if isinstance(frame, protocol.PrivilegedAction) or (principal.is_agent and not isinstance(frame, AGENT_ALLOWED)):
            return self._refused(connection_id, self._forbidden(principal, frame))
        if isinstance(frame, protocol.Subscribe) and frame.topic == PRESENCE:
            refusal = presence_refusal(principal, "subscribe presence")
            if refusal is not None:
                return self._refused(connection_id, refusal)
        try:
            if isinstance(frame, protocol.Subscribe):
                frames, resumed = self._subscribe(connection_id, principal, frame)
                return Reply(frames, resumed=resumed)
            return Reply(self._dispatch(connection_id, principal, frame))
        except TooManySubscriptions as exc:
            if not principal.is_agent:
                return Reply([exc.to_frame()])
            security_log.warning(
                "excessive subscriptions by agent %s of entity %s (limit %d)", principal.user_id, principal.entity_id, self.settings.max_subscriptions
            )
            return Reply([exc.to_frame()], security_event="agent_excessive_subscriptions")
        except RealtimeError as exc:
            return Reply([exc.to_frame()])

    def _refused(self, connection_id: str, reply: Reply) -> Reply:
        """A refusal that counts toward closing (rate limited, an agent's forbidden
        operation). The refusal that reaches the limit answers ``policy_violation``
        (the reason a 1008 close would carry) and asks the transport to close."""
        if self.rate_limiter is None or not self._too_many_violations(connection_id):
            return reply
        error = PolicyViolation(f"closing the connection: more than {self.settings.rate_violations_before_close} refused messages")
        return Reply([error.to_frame()], close=True, security_event=reply.security_event)

    def _forbidden(self, principal: Principal, frame: protocol.ClientFrame) -> Reply:
        if isinstance(frame, protocol.PrivilegedAction):
            error = Forbidden(f"'{frame.action}' is not allowed on a client connection")
            action = frame.action
        else:
            error = Forbidden("agents may only subscribe, unsubscribe and ping")
            action = type(frame).__name__.lower()
        if not principal.is_agent:
            return Reply([error.to_frame()])
        return agent_refusal(principal, action, error)

    def _dispatch(self, connection_id: str, principal: Principal, frame: protocol.ClientFrame) -> list[dict[str, Any]]:
        """Unsubscribe, ping and presence (subscribe and refusals are handled in :meth:`handle`)."""
        if isinstance(frame, protocol.Unsubscribe):
            return self.unsubscribe(connection_id, principal, frame.topic)
        if isinstance(frame, protocol.Ping):
            if self.presence is not None:
                # a ping is the WebSocket heartbeat; it may also expire others' stale entries
                self._presence_change(principal.entity_id, lambda p: p.heartbeat(principal.entity_id, principal.user_id, connection_id, "websocket"))
            # the newest id lets the client see that its push path stalled (it resumes when behind for long)
            return [protocol.pong(self.clock.now_ms(), self._cursor(principal.entity_id))]
        users = self.presence.online(principal.entity_id) if self.presence is not None else []
        return [protocol.presence_reply(users)]

    def subscribe(self, connection_id: str, principal: Principal, frame: protocol.Subscribe) -> list[dict[str, Any]]:
        return self._subscribe(connection_id, principal, frame)[0]

    def _subscribe(self, connection_id: str, principal: Principal, frame: protocol.Subscribe) -> tuple[list[dict[str, Any]], bool | None]:
        """Reply frames, and whether this first subscribe of the connection resumes
        (None when it is not the first)."""
        entity_id = principal.entity_id  # never from the frame
        if (frame.since is not None or frame.rewind is not None) and self.event_log is None:
            raise InvalidMessage("'since' replay and 'rewind' are not available on this endpoint")
        # both are answered by the fan-out's replay lane (pending until then)
        via_replay = frame.since is not None or frame.rewind is not None
        existing = self.registry.connection_subscriptions(connection_id)
        others = {s.topic for s in existing if s.topic != frame.topic}
        if len(others) >= self.settings.max_subscriptions:
            raise TooManySubscriptions(f"at most {self.settings.max_subscriptions} subscriptions per connection")
        subscription = Subscription(
            connection_id=connection_id,
            entity_id=entity_id,
            topic=frame.topic,
            user_id=principal.user_id,
            filters=frame.filters,
            pending_replay=uuid.uuid4().hex if via_replay else None,
            expires_at=self._expires_at(connection_id),
        )
        # Read before the subscription exists: every event delivered live is newer,
        # so a client may resume from here even if it receives nothing first.
        cursor = self._cursor(entity_id) if not via_replay else ""
        self.registry.put_subscription(subscription)
        if not via_replay:
            self._notify_changed(entity_id, [frame.topic], connection_id)
            return [protocol.subscribed(frame.topic, cursor)], self._first_subscribe(connection_id, existing, resumed=False)
        assert self.event_log is not None
        try:
            # The fan-out answers `subscribed`, the replay (or rewind), then live events (DESIGN.md "Replay seam").
            if frame.rewind is not None:
                self.event_log.request_replay(subscription, "", rewind=frame.rewind)
            else:
                assert frame.since is not None
                self.event_log.request_replay(subscription, frame.since)
        except RealtimeError:
            # A pending subscription nobody will activate would silently drop events.
            self.registry.remove_subscription(connection_id, entity_id, frame.topic)
            raise
        return [], self._first_subscribe(connection_id, existing, resumed=frame.since is not None)

    def _first_subscribe(self, connection_id: str, existing: list[Subscription], *, resumed: bool) -> bool | None:
        """``resumed`` if this is the connection's first subscribe, else None. The
        claim is atomic (concurrent first subscribes count once); a registry
        error only loses the figure, never the subscription."""
        if existing:
            return None
        try:
            return resumed if self.registry.claim_first_subscribe(connection_id) else None
        except RealtimeError as exc:
            log.warning("first-subscribe claim failed (%s); reconnection not counted", exc.code)
            return None

    def unsubscribe(self, connection_id: str, principal: Principal, topic: str) -> list[dict[str, Any]]:
        if not self.registry.remove_subscription(connection_id, principal.entity_id, topic):
            raise NotSubscribed(f"not subscribed to {topic}")
        self._notify_changed(principal.entity_id, [topic], connection_id)
        return [protocol.unsubscribed(topic)]

    # ---- helpers ---------------------------------------------------------------

    def _expires_at(self, connection_id: str) -> int:
        connection = self.registry.get_connection(connection_id)
        if connection is not None and connection.expires_at:
            return connection.expires_at
        return self.clock.now_ms() // 1000 + self.settings.max_connection_seconds + TTL_SLACK_SECONDS

    def _allow(self, connection_id: str) -> bool:
        assert self.rate_limiter is not None
        try:
            return self.rate_limiter.allow(connection_id, self.settings.rate_per_second, self.settings.rate_burst)
        except RealtimeError as exc:
            # Fail open: a limiter outage must not take the whole API down with it.
            log.warning("rate limiter unavailable (%s); message allowed", exc.code)
            return True

    def _too_many_violations(self, connection_id: str) -> bool:
        assert self.rate_limiter is not None
        try:
            count = self.rate_limiter.record_violation(connection_id)
        except RealtimeError as exc:
            log.warning("rate limiter unavailable (%s); violation not counted", exc.code)
            return False
        if count < max(1, self.settings.rate_violations_before_close):
            return False
        security_log.warning("connection %s keeps sending refused messages (%d refusals); closing it", connection_id, count)
        return True

    def _cursor(self, entity_id: str) -> str:
        """The entity's newest event id, ``"0-0"`` when it has none yet (a resume
        from it replays everything published since), or "" when history is
        unreadable (the subscription still works live; only the resume hint is missing)."""
        if self.event_log is None:
            return ""
        try:
            return self.event_log.last_id(entity_id) or ZERO_CURSOR
        except RealtimeError as exc:
            log.warning("no resume cursor for entity %s: %s", entity_id, exc.code)
            return ""

    def _notify_changed(self, entity_id: str, topics: list[str], connection_id: str) -> None:
        """Tell subscriber caches; if that fails they refresh on their own TTL, so the
        change itself (already stored) still stands."""
        if self.event_log is None:
            return
        try:
            self.event_log.notify_changed(entity_id, topics, connection_id)
        except RealtimeError as exc:
            log.warning("subscription change of entity %s not queued: %s", entity_id, exc.code)

    def _presence_change(self, entity_id: str, change: Any) -> None:
        if self.presence is None:
            return
        try:
            changes = change(self.presence)
        except RealtimeError as exc:
            log.warning("presence store unavailable for entity %s: %s", entity_id, exc.code)
            return
        self._publish_presence(entity_id, changes)

    def _publish_presence(self, entity_id: str, changes: list[dict[str, Any]]) -> None:
        """Best effort: a presence event must never refuse a connect or a disconnect."""
        if self.event_log is None:
            return
        for data in changes:
            try:
                self.event_log.append(entity_id, PRESENCE, data, "rtstream", record_history=False)
            except RealtimeError as exc:
                log.warning("presence event for entity %s not published: %s", entity_id, exc.code)
