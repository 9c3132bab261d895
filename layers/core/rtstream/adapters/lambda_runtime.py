"""Composition root of the Lambda handlers: what a cold start builds, once.

Each handler module creates one :class:`LambdaRuntime` at import (reading only
the environment, no I/O); the vendor clients are created on first use, so the
import stays cheap (boto3, redis and the X-Ray SDK cost hundreds of ms) and a
handler that never touches Redis never connects to it.

Wiring, from the environment (names in :mod:`rtstream.settings`):

- DynamoDB (``CONNECTIONS_TABLE``, ``SUBSCRIPTIONS_TABLE``) through boto3, with
  the region, credentials and ``AWS_ENDPOINT_URL`` (LocalStack, MiniStack,
  moto) of the function's environment;
- Redis (``REDIS_URL``): event log (history / fan-out), rate limiter, presence;
- JWT: ``RTSTREAM_JWT_SECRET``, or the SSM SecureString named by
  ``RTSTREAM_JWT_SECRET_PARAM`` (read once), or ``RTSTREAM_JWKS_URL``;
- the Management API (``RTSTREAM_MANAGEMENT_ENDPOINT``, else derived from the
  event's domain and stage) to close a flooding client.

The function's environment is ``os.environ`` on Lambda. A local host that runs
several functions in one process (the gateway emulator) gives each function its
own mapping through :data:`FUNCTION_ENVIRONMENT` while it imports and invokes
it, so nothing changes the process environment.
"""

from __future__ import annotations

import contextvars
import functools
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..errors import Unauthorized
from ..models import ROLES, Principal, is_identifier
from ..settings import Settings

if TYPE_CHECKING:  # imported on first use below: a cold start pays only for what it touches
    from ..auth import TokenVerifier
    from ..hygiene import Housekeeping
    from ..ports import ConnectionRegistry, EventLog, PresenceStore, Pusher, RateLimiter
    from ..service import RealtimeService

T = TypeVar("T")

# Powertools Logger correlation id: the API Gateway connection id.
CONNECTION_ID_PATH = "requestContext.connectionId"
JWT_SECRET_PARAM_ENV = "RTSTREAM_JWT_SECRET_PARAM"
# Socket timeouts: a handler must answer well within API Gateway's 29 s.
_REDIS_TIMEOUT_S = 2.0

# Set by a local host around a function's import and invocations; unset on Lambda.
FUNCTION_ENVIRONMENT: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "rtstream_function_environment", default=None)


def function_environment() -> Mapping[str, str]:
    """This function's environment: the host's mapping, else ``os.environ``."""
    env = FUNCTION_ENVIRONMENT.get()
    return os.environ if env is None else env


def principal_from_event(event: Mapping[str, Any]) -> Principal:
    """The principal the authorizer proved, from ``requestContext.authorizer``.

    API Gateway copies the authorizer's context onto every event of the
    connection; it is trusted, but still checked so a misconfigured route
    (no authorizer) fails closed.
    """
    context = (event.get("requestContext") or {}).get("authorizer") or {}
    try:
        principal = Principal.from_context(context)
    except (KeyError, TypeError) as exc:
        raise Unauthorized("no authorizer context on this connection") from exc
    if not is_identifier(principal.user_id) or not is_identifier(principal.entity_id) or principal.role not in ROLES:
        raise Unauthorized("invalid authorizer context")
    return principal


def connection_id_of(event: Mapping[str, Any]) -> str:
    return str((event.get("requestContext") or {}).get("connectionId") or "")


def management_endpoint_of(event: Mapping[str, Any], settings: Settings) -> str:
    if settings.management_endpoint:
        return settings.management_endpoint
    ctx = event.get("requestContext") or {}
    return f"https://{ctx.get('domainName')}/{ctx.get('stage')}"


class LambdaRuntime:
    """Settings now; clients, ports and the service on first use (then cached)."""

    def __init__(self, env: Mapping[str, str] | None = None, *, settings: Settings | None = None):
        """``settings``: given by a host that has them already (``rtstream dev``
        runs the bridge on its own Redis); otherwise read from ``env`` (the
        function's environment: see :func:`function_environment`)."""
        self.env = dict(function_environment() if env is None else env)
        self.settings = Settings.from_env(self.env) if settings is None else settings
        # REDIS_URL unset in the environment: no Redis ports (settings.redis_url has a default)
        self.redis_url = self.settings.redis_url if settings is not None or self.settings.runtime.uses_redis else ""
        self._lock = threading.RLock()
        self._cache: dict[str, Any] = {}

    def _once(self, name: str, build: Callable[[], T]) -> T:
        if name not in self._cache:
            with self._lock:
                if name not in self._cache:
                    self._cache[name] = build()
        return cast(T, self._cache[name])

    # ---- vendor clients ----------------------------------------------------------

    def boto3_client(self, service: str, **kwargs: Any) -> Any:
        key = f"boto3:{service}:{sorted(kwargs.items())}"

        def build() -> Any:
            import boto3
            from botocore.config import Config

            config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=2, read_timeout=5)
            env = self.env  # the function's environment, not necessarily this process's
            session = boto3.session.Session(
                aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"), aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                aws_session_token=env.get("AWS_SESSION_TOKEN"),
                region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"))
            options = {"endpoint_url": env.get("AWS_ENDPOINT_URL") or None, **kwargs}
            return session.client(service, config=config, **options)

        return self._once(key, build)

    def redis(self) -> Any:
        def build() -> Any:
            from .redis_client import sync_client

            return sync_client(
                self.redis_url, socket_connect_timeout=_REDIS_TIMEOUT_S, socket_timeout=_REDIS_TIMEOUT_S, health_check_interval=30
            )

        return self._once("redis", build) if self.redis_url else None

    # ---- ports -----------------------------------------------------------------------

    def registry(self) -> ConnectionRegistry:
        def build() -> ConnectionRegistry:
            from .dynamodb import DynamoDBRegistry

            from ..service import TTL_SLACK_SECONDS

            return DynamoDBRegistry(
                self.boto3_client("dynamodb"),
                connections_table=self.settings.connections_table,
                subscriptions_table=self.settings.subscriptions_table,
                connection_ttl_seconds=self.settings.max_connection_seconds + TTL_SLACK_SECONDS,
            )

        return self._once("registry", build)

    def event_log(self) -> EventLog | None:
        def build() -> EventLog | None:
            client = self.redis()
            if client is None:
                return None
            from .redis_eventlog import RedisEventLog

            return RedisEventLog(client, self.settings)

        return self._once("event_log", build)

    def rate_limiter(self) -> RateLimiter | None:
        def build() -> RateLimiter | None:
            client = self.redis()
            if client is None:
                return None
            from .redis_limits import RedisRateLimiter

            return RedisRateLimiter(client)

        return self._once("rate_limiter", build)

    def presence(self) -> PresenceStore | None:
        def build() -> PresenceStore | None:
            client = self.redis()
            if client is None:
                return None
            from .redis_limits import RedisPresence

            return RedisPresence(client, self.settings)

        return self._once("presence", build)

    def service(self) -> RealtimeService:
        def build() -> RealtimeService:
            from ..service import RealtimeService

            return RealtimeService(
                registry=self.registry(),
                settings=self.settings,
                event_log=self.event_log(),
                rate_limiter=self.rate_limiter(),
                presence=self.presence(),
            )

        return self._once("service", build)

    def housekeeping(self) -> Housekeeping:
        def build() -> Housekeeping:
            from ..hygiene import Housekeeping

            return Housekeeping(registry=self.registry(), presence=self.presence(), event_log=self.event_log())

        return self._once("housekeeping", build)

    def pusher(self, endpoint: str) -> Pusher:
        def build() -> Pusher:
            from .management_api import ApiGatewayPusher

            return ApiGatewayPusher(self.boto3_client("apigatewaymanagementapi", endpoint_url=endpoint))

        return self._once(f"pusher:{endpoint}", build)

    # ---- tokens ------------------------------------------------------------------------

    def jwt_secret(self) -> str:
        """``RTSTREAM_JWT_SECRET``, else the SSM SecureString named by
        ``RTSTREAM_JWT_SECRET_PARAM`` (fetched once per cold start)."""

        def build() -> str:
            if self.settings.jwt_secret:
                return self.settings.jwt_secret
            name = self.settings.jwt_secret_param  # RTSTREAM_JWT_SECRET_PARAM
            if not name:
                return ""
            from .dynamodb import translate_error  # the same botocore -> coded error mapping

            try:
                reply = self.boto3_client("ssm").get_parameter(Name=name, WithDecryption=True)
            except Exception as exc:
                translated = translate_error(exc)
                if translated is exc:
                    raise
                raise translated from exc
            return reply["Parameter"]["Value"]

        return self._once("jwt_secret", build)

    def verifier(self) -> TokenVerifier:
        def build() -> TokenVerifier:
            from ..auth import TokenVerifier

            settings = self.settings if self.settings.jwks_url else self.settings.replace(jwt_secret=self.jwt_secret())
            return TokenVerifier(settings)

        return self._once("verifier", build)


def lazy_tracer(service: str | None = None) -> Callable[[Callable], Callable]:
    """``Tracer().capture_lambda_handler``, built on the first invocation.

    Instantiating a Powertools Tracer imports the X-Ray SDK (~300 ms here); doing
    it at import would double the handler's cold import. Tracing is still on
    from the first invocation.
    """

    def decorate(handler: Callable) -> Callable:
        traced: list[Callable] = []
        lock = threading.Lock()

        @functools.wraps(handler)
        def wrapper(event: Any, context: Any) -> Any:
            if not traced:
                with lock:
                    if not traced:
                        from aws_lambda_powertools import Tracer

                        traced.append(Tracer(service=service).capture_lambda_handler(handler, capture_response=False))
            return traced[0](event, context)

        return wrapper

    return decorate
