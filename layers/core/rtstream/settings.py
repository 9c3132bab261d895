"""Configuration from the environment, read once per process (Lambda cold start,
container start) and passed down explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


@dataclass(frozen=True, slots=True)
class Settings:
    # --- tokens (see rtstream.auth)
    jwt_secret: str = ""  # RTSTREAM_JWT_SECRET (HS256, dev)
    jwks_url: str = ""  # RTSTREAM_JWKS_URL (RS256, production)
    jwt_issuer: str = ""  # RTSTREAM_JWT_ISSUER
    jwt_audience: str = ""  # RTSTREAM_JWT_AUDIENCE
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

    @property
    def fanout_pipelining_flag(self) -> bool | None:
        """For the @connections client: None = decide by signing (auto)."""
        return {"auto": None, "on": True, "off": False}[self.fanout_pipelining]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        d = cls()
        return cls(
            jwt_secret=env.get("RTSTREAM_JWT_SECRET", d.jwt_secret),
            jwks_url=env.get("RTSTREAM_JWKS_URL", d.jwks_url),
            jwt_issuer=env.get("RTSTREAM_JWT_ISSUER", d.jwt_issuer),
            jwt_audience=env.get("RTSTREAM_JWT_AUDIENCE", d.jwt_audience),
            connections_table=env.get("CONNECTIONS_TABLE", d.connections_table),
            subscriptions_table=env.get("SUBSCRIPTIONS_TABLE", d.subscriptions_table),
            redis_url=env.get("REDIS_URL", d.redis_url),
            management_endpoint=env.get("RTSTREAM_MANAGEMENT_ENDPOINT", d.management_endpoint),
            max_frame_bytes=_int(env, "RTSTREAM_MAX_FRAME_BYTES", d.max_frame_bytes),
            max_subscriptions=_int(env, "RTSTREAM_MAX_SUBSCRIPTIONS", d.max_subscriptions),
            max_connections_per_user=_int(env, "RTSTREAM_MAX_CONNECTIONS_PER_USER", d.max_connections_per_user),
            max_connections_per_entity=_int(env, "RTSTREAM_MAX_CONNECTIONS_PER_ENTITY", d.max_connections_per_entity),
            rate_per_second=_float(env, "RTSTREAM_RATE_PER_SECOND", d.rate_per_second),
            rate_burst=_int(env, "RTSTREAM_RATE_BURST", d.rate_burst),
            rate_violations_before_close=_int(env, "RTSTREAM_RATE_VIOLATIONS_BEFORE_CLOSE", d.rate_violations_before_close),
            max_connection_seconds=_int(env, "RTSTREAM_MAX_CONNECTION_SECONDS", d.max_connection_seconds),
            idle_timeout_seconds=_int(env, "RTSTREAM_IDLE_TIMEOUT_SECONDS", d.idle_timeout_seconds),
            history_maxlen=_int(env, "RTSTREAM_HISTORY_MAXLEN", d.history_maxlen),
            history_ttl_seconds=_int(env, "RTSTREAM_HISTORY_TTL_SECONDS", d.history_ttl_seconds),
            fanout_partitions=_int(env, "RTSTREAM_FANOUT_PARTITIONS", d.fanout_partitions),
            fanout_stream_maxlen=_int(env, "RTSTREAM_FANOUT_STREAM_MAXLEN", d.fanout_stream_maxlen),
            presence_ttl_seconds=_int(env, "RTSTREAM_PRESENCE_TTL_SECONDS", d.presence_ttl_seconds),
            fanout_pipelining=_choice(env, "RTSTREAM_FANOUT_PIPELINING", d.fanout_pipelining, ("auto", "on", "off")),
            idempotency_window_seconds=_int(env, "RTSTREAM_IDEMPOTENCY_WINDOW_SECONDS", d.idempotency_window_seconds),
        )

    def replace(self, **changes) -> "Settings":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)
