"""Configuration from the environment, read once per process (Lambda cold start,
container start) and passed down explicitly.

:meth:`Settings.from_env` reads every variable any component uses (the README's
Configuration table lists them; a test keeps the two equal): the shared limits
and names here, every process's in :class:`RuntimeSettings`, and the worker's
and the SSE server's own in :class:`WorkerSettings` and :class:`SSESettings`
(``own=("worker",)`` / ``own=("sse",)``; `rtstream dev`'s SSE wrapper's in
:class:`DevSettings`, ``own=("dev",)``), built from the same mapping.
Nothing else reads ``os.environ``."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from typing import Any, Self, TypeVar
from dataclasses import dataclass, field, fields


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    """The value, or ``default`` when unset or empty."""
    raw = env.get(name)
    return default if raw is None or raw == "" else raw


Number = TypeVar("Number", int, float)


def _number(env: Mapping[str, str], name: str, default: Number, minimum: Number | None, parse: Callable[[str], Number], kind: str) -> Number:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be {kind}, got {raw!r}") from exc
    if minimum is not None and not value >= minimum:  # (NaN is refused too)
        raise ValueError(f"{name} must be >= {minimum}, got {raw!r}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int | None = None) -> int:
    return _number(env, name, default, minimum, int, "an integer")


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float | None = None) -> float:
    return _number(env, name, default, minimum, float, "a number")


def env_choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


Frozen = TypeVar("Frozen")


def _replace(obj: Frozen, **changes: Any) -> Frozen:
    """A copy of a frozen settings dataclass with ``changes`` (of its own type: a subclass stays one)."""
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}  # type: ignore[arg-type]
    values.update(changes)
    return type(obj)(**values)


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """What every process reads besides the shared limits: logging, AWS, metrics."""

    log_level: str = "INFO"  # RTSTREAM_LOG_LEVEL
    aws_region: str = ""  # AWS_REGION, else AWS_DEFAULT_REGION
    aws_endpoint_url: str = ""  # AWS_ENDPOINT_URL (LocalStack/MiniStack/moto; boto3 reads it too)
    metrics_namespace: str = "RealtimeStreaming"  # POWERTOOLS_METRICS_NAMESPACE
    event_source: str = ""  # RTSTREAM_EVENT_SOURCE (the bridge rule's Source; `rtstream publish`)
    dev_entity: str = "demo-entity"  # RTSTREAM_DEV_ENTITY (dashboard / demo / `rtstream dev`)
    state_dir: str = ""  # RTSTREAM_STATE_DIR (`rtstream dev` instances; default ~/.cache/rtstream)
    cache_dir: str = ""  # RTSTREAM_CACHE_DIR (`deploy-local` build cache; default ~/.cache/rtstream)
    # Redis and the DynamoDB registry are optional for some processes (a Lambda
    # without Redis, an SSE task without a registry): used only when named.
    uses_redis: bool = False  # REDIS_URL set
    uses_registry: bool = False  # CONNECTIONS_TABLE set

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RuntimeSettings:
        d = cls()
        return cls(
            log_level=env_str(env, "RTSTREAM_LOG_LEVEL", d.log_level).upper(),
            aws_region=env_str(env, "AWS_REGION", "") or env_str(env, "AWS_DEFAULT_REGION", d.aws_region),
            aws_endpoint_url=env_str(env, "AWS_ENDPOINT_URL", d.aws_endpoint_url),
            metrics_namespace=env_str(env, "POWERTOOLS_METRICS_NAMESPACE", d.metrics_namespace),
            event_source=env_str(env, "RTSTREAM_EVENT_SOURCE", d.event_source),
            dev_entity=env_str(env, "RTSTREAM_DEV_ENTITY", d.dev_entity),
            state_dir=env_str(env, "RTSTREAM_STATE_DIR", d.state_dir),
            cache_dir=env_str(env, "RTSTREAM_CACHE_DIR", d.cache_dir),
            uses_redis=bool(env_str(env, "REDIS_URL", "")),
            uses_registry=bool(env_str(env, "CONNECTIONS_TABLE", "")),
        )


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """The fan-out worker's own (``python -m rtstream_fanout``)."""

    worker_id: str = ""  # RTSTREAM_WORKER_ID ("" = host-pid-random)
    management_pool: int = 8  # RTSTREAM_MANAGEMENT_POOL (HTTP connections to @connections)
    management_sign: str = "auto"  # RTSTREAM_MANAGEMENT_SIGN: auto (SigV4 for *.amazonaws.com) | 1 | 0
    lease_ms: int = 0  # RTSTREAM_FANOUT_LEASE_MS (0 = the lease key's TTL)
    stall_seconds: float = 30.0  # RTSTREAM_WORKER_STALL_S (/healthz 503 after this long without progress)
    metrics_port: int = 0  # RTSTREAM_WORKER_METRICS_PORT (0 = no /metrics, /healthz endpoint)
    metrics_host: str = "127.0.0.1"  # RTSTREAM_WORKER_METRICS_HOST
    emf_interval_seconds: float = 60.0  # RTSTREAM_EMF_INTERVAL_S (0 = off)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        d = cls()
        return cls(
            worker_id=env_str(env, "RTSTREAM_WORKER_ID", d.worker_id),
            management_pool=env_int(env, "RTSTREAM_MANAGEMENT_POOL", d.management_pool, 1),
            management_sign=env_choice(env, "RTSTREAM_MANAGEMENT_SIGN", d.management_sign, ("auto", "1", "0", "true", "false", "yes", "no")),
            lease_ms=env_int(env, "RTSTREAM_FANOUT_LEASE_MS", d.lease_ms, 0),
            stall_seconds=env_float(env, "RTSTREAM_WORKER_STALL_S", d.stall_seconds, 0.0),
            metrics_port=env_int(env, "RTSTREAM_WORKER_METRICS_PORT", d.metrics_port, 0),
            metrics_host=env_str(env, "RTSTREAM_WORKER_METRICS_HOST", d.metrics_host),
            emf_interval_seconds=env_float(env, "RTSTREAM_EMF_INTERVAL_S", d.emf_interval_seconds, 0.0),
        )


@dataclass(frozen=True, slots=True)
class SSESettings:
    """The SSE server's own (``python -m rtstream_sse``; ``rtstream_sse.config.SSEConfig``)."""

    host: str = "127.0.0.1"  # RTSTREAM_SSE_HOST
    port: int = 8090  # RTSTREAM_SSE_PORT
    heartbeat_seconds: float = 15.0  # RTSTREAM_SSE_HEARTBEAT_SECONDS
    retry_ms: int = 3000  # RTSTREAM_SSE_RETRY_MS (the `retry:` sent first)
    # Slow-client policy: frames/bytes waiting behind a blocked write before the
    # client is closed (it reconnects with Last-Event-ID and replays).
    max_pending_frames: int = 1024  # RTSTREAM_SSE_MAX_PENDING_FRAMES
    max_pending_bytes: int = 1024 * 1024  # RTSTREAM_SSE_MAX_PENDING_BYTES
    # XREAD BLOCK timeout and batch size of the process's one Redis reader
    read_block_ms: int = 5000  # RTSTREAM_SSE_READ_BLOCK_MS
    read_count: int = 500  # RTSTREAM_SSE_READ_COUNT
    # /healthz answers 503 once the reader has had no answer from Redis this long
    health_grace_seconds: float = 10.0  # RTSTREAM_SSE_HEALTH_GRACE_SECONDS
    # Seconds to wait for clients to take the shutdown hint before the server stops
    shutdown_grace_seconds: float = 5.0  # RTSTREAM_SSE_SHUTDOWN_GRACE_SECONDS
    allowed_origins: tuple[str, ...] = ()  # RTSTREAM_ALLOWED_ORIGINS (comma separated; "*" = any)
    # CloudWatch EMF line with this task's active connections every N s on stdout
    # (awslogs turns it into a metric; the autoscaling policy tracks it). 0 = off.
    emf_interval_seconds: float = 0.0  # RTSTREAM_EMF_INTERVAL_S
    emf_namespace: str = "RealtimeStreaming"  # POWERTOOLS_METRICS_NAMESPACE
    emf_service: str = "rtstream-sse"  # RTSTREAM_SERVICE_NAME (the metric's ServiceName dimension)
    uvicorn_log_level: str = "warning"  # RTSTREAM_UVICORN_LOG_LEVEL
    forwarded_allow_ips: str = "127.0.0.1"  # FORWARDED_ALLOW_IPS (proxies trusted for X-Forwarded-*)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SSESettings:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            host=env_str(env, "RTSTREAM_SSE_HOST", d.host),
            port=env_int(env, "RTSTREAM_SSE_PORT", d.port, 0),
            heartbeat_seconds=env_float(env, "RTSTREAM_SSE_HEARTBEAT_SECONDS", d.heartbeat_seconds, 0.01),
            retry_ms=env_int(env, "RTSTREAM_SSE_RETRY_MS", d.retry_ms, 1),
            max_pending_frames=env_int(env, "RTSTREAM_SSE_MAX_PENDING_FRAMES", d.max_pending_frames, 1),
            max_pending_bytes=env_int(env, "RTSTREAM_SSE_MAX_PENDING_BYTES", d.max_pending_bytes, 1),
            read_block_ms=env_int(env, "RTSTREAM_SSE_READ_BLOCK_MS", d.read_block_ms, 1),
            read_count=env_int(env, "RTSTREAM_SSE_READ_COUNT", d.read_count, 1),
            health_grace_seconds=env_float(env, "RTSTREAM_SSE_HEALTH_GRACE_SECONDS", d.health_grace_seconds, 0.0),
            shutdown_grace_seconds=env_float(env, "RTSTREAM_SSE_SHUTDOWN_GRACE_SECONDS", d.shutdown_grace_seconds, 0.0),
            allowed_origins=tuple(o.strip() for o in env_str(env, "RTSTREAM_ALLOWED_ORIGINS", "").split(",") if o.strip()),
            emf_interval_seconds=env_float(env, "RTSTREAM_EMF_INTERVAL_S", d.emf_interval_seconds, 0.0),
            emf_namespace=env_str(env, "POWERTOOLS_METRICS_NAMESPACE", d.emf_namespace),
            emf_service=env_str(env, "RTSTREAM_SERVICE_NAME", d.emf_service),
            uvicorn_log_level=env_str(env, "RTSTREAM_UVICORN_LOG_LEVEL", d.uvicorn_log_level),
            forwarded_allow_ips=env_str(env, "FORWARDED_ALLOW_IPS", d.forwarded_allow_ips),
        )

    def replace(self, **changes: Any) -> Self:
        return _replace(self, **changes)


@dataclass(frozen=True, slots=True)
class DevSettings:
    """What `rtstream dev` sets for its wrapper of the SSE server (``rtstream_cli.dev_sse``)."""

    public_ws_url: str = ""  # RTSTREAM_PUBLIC_WS_URL (dashboard config)
    public_sse_url: str = ""  # RTSTREAM_PUBLIC_SSE_URL (dashboard config; default: this request's /events)
    dashboard_dev_token: bool = False  # RTSTREAM_DASHBOARD_DEV_TOKEN=1: hand the dashboard a dev token
    # other local Prometheus endpoints its /metrics appends (rtstream_cli.federate parses them)
    metrics_federate: str = ""  # RTSTREAM_METRICS_FEDERATE=name=http://h:p/metrics,...

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DevSettings:
        d = cls()
        return cls(
            public_ws_url=env_str(env, "RTSTREAM_PUBLIC_WS_URL", d.public_ws_url),
            public_sse_url=env_str(env, "RTSTREAM_PUBLIC_SSE_URL", d.public_sse_url),
            dashboard_dev_token=env_str(env, "RTSTREAM_DASHBOARD_DEV_TOKEN", "") == "1",
            metrics_federate=env_str(env, "RTSTREAM_METRICS_FEDERATE", d.metrics_federate),
        )


PROCESS_KINDS = ("worker", "sse", "dev")


@dataclass(frozen=True, slots=True)
class Settings:
    # --- tokens (see rtstream.auth)
    jwt_secret: str = ""  # RTSTREAM_JWT_SECRET (HS256, dev)
    jwks_url: str = ""  # RTSTREAM_JWKS_URL (RS256, production)
    jwt_issuer: str = ""  # RTSTREAM_JWT_ISSUER
    jwt_audience: str = ""  # RTSTREAM_JWT_AUDIENCE
    jwt_secret_param: str = ""  # RTSTREAM_JWT_SECRET_PARAM (SSM SecureString holding the HS256 key)
    # --- storage
    connections_table: str = "rtstream-connections"  # CONNECTIONS_TABLE
    subscriptions_table: str = "rtstream-subscriptions"  # SUBSCRIPTIONS_TABLE
    redis_url: str = "redis://127.0.0.1:6379/0"  # REDIS_URL
    management_endpoint: str = ""  # RTSTREAM_MANAGEMENT_ENDPOINT (https://{api}.execute-api.{region}.amazonaws.com/{stage})
    # --- limits (contract defaults)
    max_frame_bytes: int = 32 * 1024  # RTSTREAM_MAX_FRAME_BYTES
    max_subscriptions: int = 20  # RTSTREAM_MAX_SUBSCRIPTIONS
    max_connections_per_user: int = 10  # RTSTREAM_MAX_CONNECTIONS_PER_USER
    max_connections_per_entity: int = 1000  # RTSTREAM_MAX_CONNECTIONS_PER_ENTITY
    rate_per_second: float = 10.0  # RTSTREAM_RATE_PER_SECOND
    rate_burst: int = 20  # RTSTREAM_RATE_BURST
    rate_violations_before_close: int = 20  # RTSTREAM_RATE_VIOLATIONS_BEFORE_CLOSE
    # API Gateway's hard maximum connection life; registry TTL derives from it
    max_connection_seconds: int = 7200  # RTSTREAM_MAX_CONNECTION_SECONDS
    idle_timeout_seconds: int = 600  # RTSTREAM_IDLE_TIMEOUT_SECONDS
    # --- history / fan-out
    history_maxlen: int = 1000  # RTSTREAM_HISTORY_MAXLEN (events kept per entity)
    history_ttl_seconds: int = 86400  # RTSTREAM_HISTORY_TTL_SECONDS (since last event)
    fanout_partitions: int = 4  # RTSTREAM_FANOUT_PARTITIONS
    fanout_stream_maxlen: int = 100_000  # RTSTREAM_FANOUT_STREAM_MAXLEN
    presence_ttl_seconds: int = 660  # RTSTREAM_PRESENCE_TTL_SECONDS (idle timeout + slack)
    # a publish with an idempotency key repeated within this window is one event
    idempotency_window_seconds: int = 300  # RTSTREAM_IDEMPOTENCY_WINDOW_SECONDS
    # RTSTREAM_FANOUT_PIPELINING: auto (off when signing for AWS, on otherwise) | on | off
    fanout_pipelining: str = "auto"
    # --- per process kind (built from the same environment)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    sse: SSESettings = field(default_factory=SSESettings)
    dev: DevSettings = field(default_factory=DevSettings)

    @property
    def fanout_pipelining_flag(self) -> bool | None:
        """For the @connections client: None = decide by signing (auto)."""
        return {"auto": None, "on": True, "off": False}[self.fanout_pipelining]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, own: Collection[str] = ()) -> Settings:
        """The shared and runtime variables, plus the own variables of the process
        kinds named in ``own`` (``"worker"``, ``"sse"``, ``"dev"``; :data:`PROCESS_KINDS` = all):
        a process validates what it uses, so a bad SSE variable stops the SSE
        server, not the CLI that starts it. The others keep their defaults."""
        env = os.environ if env is None else env
        unknown = set(own) - set(PROCESS_KINDS)
        if unknown:
            raise ValueError(f"unknown process kinds {sorted(unknown)}; known: {', '.join(PROCESS_KINDS)}")
        d = cls()
        return cls(
            jwt_secret=env.get("RTSTREAM_JWT_SECRET", d.jwt_secret),
            jwks_url=env.get("RTSTREAM_JWKS_URL", d.jwks_url),
            jwt_issuer=env.get("RTSTREAM_JWT_ISSUER", d.jwt_issuer),
            jwt_audience=env.get("RTSTREAM_JWT_AUDIENCE", d.jwt_audience),
            jwt_secret_param=env_str(env, "RTSTREAM_JWT_SECRET_PARAM", d.jwt_secret_param),
            connections_table=env.get("CONNECTIONS_TABLE", d.connections_table),
            subscriptions_table=env.get("SUBSCRIPTIONS_TABLE", d.subscriptions_table),
            redis_url=env.get("REDIS_URL", d.redis_url),
            management_endpoint=env.get("RTSTREAM_MANAGEMENT_ENDPOINT", d.management_endpoint),
            max_frame_bytes=env_int(env, "RTSTREAM_MAX_FRAME_BYTES", d.max_frame_bytes),
            max_subscriptions=env_int(env, "RTSTREAM_MAX_SUBSCRIPTIONS", d.max_subscriptions),
            max_connections_per_user=env_int(env, "RTSTREAM_MAX_CONNECTIONS_PER_USER", d.max_connections_per_user),
            max_connections_per_entity=env_int(env, "RTSTREAM_MAX_CONNECTIONS_PER_ENTITY", d.max_connections_per_entity),
            rate_per_second=env_float(env, "RTSTREAM_RATE_PER_SECOND", d.rate_per_second),
            rate_burst=env_int(env, "RTSTREAM_RATE_BURST", d.rate_burst),
            rate_violations_before_close=env_int(env, "RTSTREAM_RATE_VIOLATIONS_BEFORE_CLOSE", d.rate_violations_before_close),
            max_connection_seconds=env_int(env, "RTSTREAM_MAX_CONNECTION_SECONDS", d.max_connection_seconds),
            idle_timeout_seconds=env_int(env, "RTSTREAM_IDLE_TIMEOUT_SECONDS", d.idle_timeout_seconds),
            history_maxlen=env_int(env, "RTSTREAM_HISTORY_MAXLEN", d.history_maxlen),
            history_ttl_seconds=env_int(env, "RTSTREAM_HISTORY_TTL_SECONDS", d.history_ttl_seconds),
            fanout_partitions=env_int(env, "RTSTREAM_FANOUT_PARTITIONS", d.fanout_partitions),
            fanout_stream_maxlen=env_int(env, "RTSTREAM_FANOUT_STREAM_MAXLEN", d.fanout_stream_maxlen),
            presence_ttl_seconds=env_int(env, "RTSTREAM_PRESENCE_TTL_SECONDS", d.presence_ttl_seconds),
            fanout_pipelining=env_choice(env, "RTSTREAM_FANOUT_PIPELINING", d.fanout_pipelining, ("auto", "on", "off")),
            idempotency_window_seconds=env_int(env, "RTSTREAM_IDEMPOTENCY_WINDOW_SECONDS", d.idempotency_window_seconds),
            runtime=RuntimeSettings.from_env(env),
            worker=WorkerSettings.from_env(env) if "worker" in own else d.worker,
            sse=SSESettings.from_env(env) if "sse" in own else d.sse,
            dev=DevSettings.from_env(env) if "dev" in own else d.dev,
        )

    def replace(self, **changes: Any) -> Settings:
        return _replace(self, **changes)
