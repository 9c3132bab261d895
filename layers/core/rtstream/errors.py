"""Coded errors: the only exceptions the core raises or lets cross a port.

Adapters translate vendor errors (botocore ``ClientError``, redis errors, JWT
errors) into these at their edge, so handlers map one small set to replies.
The codes are part of the public contract.
"""

from __future__ import annotations


class RealtimeError(Exception):
    code = "internal_error"
    # HTTP-ish status used by transports that need one (authorizer, SSE, @connections)
    status = 500

    def __init__(self, message: str | None = None, *, code: str | None = None):
        super().__init__(message or self.__class__.__doc__ or self.code)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)

    def to_frame(self) -> dict:
        """The error as the server->client frame of the protocol."""
        return {"type": "error", "code": self.code, "message": self.message}


class InvalidMessage(RealtimeError):
    """The message is not a valid frame."""

    code = "invalid_message"
    status = 400


class MessageTooLarge(InvalidMessage):
    """The message is larger than allowed."""

    code = "message_too_large"
    status = 413


class UnknownTopic(RealtimeError):
    """The topic is not one of the known topics."""

    code = "unknown_topic"
    status = 400


class InvalidPayload(RealtimeError):
    """The event payload does not match its topic's schema."""

    code = "invalid_payload"
    status = 400


class Unauthorized(RealtimeError):
    """The token is missing or invalid."""

    code = "unauthorized"
    status = 401


class Forbidden(RealtimeError):
    """The caller may not do this."""

    code = "forbidden"
    status = 403


class RateLimited(RealtimeError):
    """Too many messages; slow down."""

    code = "rate_limited"
    status = 429


class PolicyViolation(RealtimeError):
    """Too many refused messages: the server is closing this connection (WebSocket
    close code 1008 semantics; API Gateway itself can only close with 1000, so
    this frame, sent just before the close, carries the reason)."""

    code = "policy_violation"
    status = 429


class TooManySubscriptions(RealtimeError):
    """The connection has reached its subscription limit."""

    code = "too_many_subscriptions"
    status = 429


class TooManyConnections(RealtimeError):
    """The user or entity has reached its connection limit."""

    code = "too_many_connections"
    status = 429


class NotSubscribed(RealtimeError):
    """The connection is not subscribed to this topic."""

    code = "not_subscribed"
    status = 404


class NotFound(RealtimeError):
    """No such resource (HTTP routes of the SSE server)."""

    code = "not_found"
    status = 404


class MethodNotAllowed(RealtimeError):
    """The HTTP method is not allowed on this route."""

    code = "method_not_allowed"
    status = 405


class ReplayGap(RealtimeError):
    """The cursor is older than the retained history; reload state."""

    code = "replay_gap"
    status = 409


class ConnectionGone(RealtimeError):
    """The connection no longer exists (API Gateway 410)."""

    code = "gone"
    status = 410


class Throttled(RealtimeError):
    """A backend throttled the request; retry with backoff."""

    code = "throttled"
    status = 429


class BackendUnavailable(RealtimeError):
    """A backend (DynamoDB, Redis, API Gateway) failed; retry later."""

    code = "unavailable"
    status = 503
