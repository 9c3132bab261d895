"""SSE-specific configuration from the environment (the shared names live in
:class:`rtstream.settings.Settings`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc
    if not value >= minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class SSEConfig:
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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "SSEConfig":
        env = os.environ if env is None else env
        d = cls()
        origins = tuple(o.strip() for o in env.get("RTSTREAM_ALLOWED_ORIGINS", "").split(",") if o.strip())
        return cls(
            host=env.get("RTSTREAM_SSE_HOST", d.host) or d.host,
            port=_int(env, "RTSTREAM_SSE_PORT", d.port),
            heartbeat_seconds=_float(env, "RTSTREAM_SSE_HEARTBEAT_SECONDS", d.heartbeat_seconds, 0.01),
            retry_ms=_int(env, "RTSTREAM_SSE_RETRY_MS", d.retry_ms, 1),
            max_pending_frames=_int(env, "RTSTREAM_SSE_MAX_PENDING_FRAMES", d.max_pending_frames, 1),
            max_pending_bytes=_int(env, "RTSTREAM_SSE_MAX_PENDING_BYTES", d.max_pending_bytes, 1),
            read_block_ms=_int(env, "RTSTREAM_SSE_READ_BLOCK_MS", d.read_block_ms, 1),
            read_count=_int(env, "RTSTREAM_SSE_READ_COUNT", d.read_count, 1),
            health_grace_seconds=_float(env, "RTSTREAM_SSE_HEALTH_GRACE_SECONDS", d.health_grace_seconds),
            shutdown_grace_seconds=_float(env, "RTSTREAM_SSE_SHUTDOWN_GRACE_SECONDS", d.shutdown_grace_seconds),
            allowed_origins=origins,
            emf_interval_seconds=_float(env, "RTSTREAM_EMF_INTERVAL_S", d.emf_interval_seconds),
            emf_namespace=env.get("POWERTOOLS_METRICS_NAMESPACE", d.emf_namespace) or d.emf_namespace,
            emf_service=env.get("RTSTREAM_SERVICE_NAME", d.emf_service) or d.emf_service,
        )

    def replace(self, **changes) -> "SSEConfig":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return SSEConfig(**values)
