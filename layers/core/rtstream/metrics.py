"""Metric names: the seed's observability contract, in one place.

CloudWatch (EMF through Powertools) uses the dotted names in namespace
``NAMESPACE``; Prometheus uses the same names with dots as underscores. A test
checks that every metric an alarm or dashboard in ``template.yaml`` names is
emitted somewhere in the code.
"""

from __future__ import annotations

NAMESPACE = "RealtimeStreaming"

ACTIVE_CONNECTIONS = "realtime_streaming.active_connections"
MESSAGE_LATENCY_MS = "realtime_streaming.message_latency_ms"
RECONNECTION_RATE = "realtime_streaming.reconnection_rate"
CONNECTIONS_OPENED = "realtime_streaming.connections_opened"
CONNECTIONS_DROPPED = "realtime_streaming.connections_dropped"
DELIVERIES = "realtime_streaming.deliveries"
DELIVERY_ERRORS = "realtime_streaming.delivery_errors"
CONNECTIONS_PRUNED = "realtime_streaming.connections_pruned"
RATE_LIMITED = "realtime_streaming.rate_limited"
CONNECTIONS_REFUSED = "realtime_streaming.connections_refused"
INVALID_EVENTS = "realtime_streaming.invalid_events"
SECURITY_EVENTS = "realtime_streaming.security_events"
# every $disconnect (normal or not); CONNECTIONS_DROPPED counts only abnormal ones
CONNECTIONS_CLOSED = "realtime_streaming.connections_closed"
MESSAGES = "realtime_streaming.messages"  # inbound WebSocket messages handled
AUTHORIZED = "realtime_streaming.authorized"  # handshakes the authorizer accepted
BRIDGED_EVENTS = "realtime_streaming.bridged_events"  # EventBridge events published
BRIDGED_DUPLICATES = "realtime_streaming.bridged_duplicates"  # EventBridge redeliveries ignored
# fan-out worker counters (infra/rtstream_fanout names them literally today)
FANOUT_EVENTS = "realtime_streaming.fanout_events"
RAW_INGESTED = "realtime_streaming.raw_ingested"
DELIVERY_RETRIES = "realtime_streaming.delivery_retries"
REPLAYS = "realtime_streaming.replays"
REPLAY_GAPS = "realtime_streaming.replay_gaps"
REDIS_RECONNECTS = "realtime_streaming.redis_reconnects"
# work entries moved to the dead-letter stream (keys.dead_letter_stream); alarmed
DEAD_LETTERS = "realtime_streaming.dead_letters"
ALARM_DEAD_LETTERS = "realtime_streaming.dead_letters"
REPLAYS_ABANDONED = "realtime_streaming.replays_abandoned"  # replay stopped at a 410
# housekeeping (rtstream.hygiene): stale registry records removed
STALE_CONNECTIONS_SWEPT = "realtime_streaming.stale_connections_swept"
STALE_SUBSCRIPTIONS_SWEPT = "realtime_streaming.stale_subscriptions_swept"
STALE_PRESENCE_SWEPT = "realtime_streaming.stale_presence_swept"

# Dimensions. Powertools adds ``service`` (POWERTOOLS_SERVICE_NAME) to every EMF
# document: the Lambdas run as SERVICE_LAMBDAS, the fan-out worker as SERVICE_WORKER.
SERVICE_LAMBDAS = "realtime-streaming"
SERVICE_WORKER = "fanout-worker"
SERVICE_SSE = "sse"
TRANSPORT = "transport"
TRANSPORTS = ("websocket", "sse")

# Alarms and dashboards (names from the seed)
ALARM_CONNECTION_DROP_HIGH = "realtime_streaming.connection_drop_high"
ALARM_LATENCY_DEGRADED = "realtime_streaming.latency_degraded"
DASHBOARD_HEALTH = "realtime_streaming_health"
DASHBOARD_PERFORMANCE = "realtime_streaming_performance"


# Reconnection rate: at the first subscribe of a WebSocket connection, 1 when the
# client resumes (the subscribe carries ``since``: it has seen events before) and 0
# for a fresh start. Average over a period = share of connections that were
# reconnects; Sum = number of reconnects. SSE: 1 for a request with Last-Event-ID.
RESUMED = 1
FRESH = 0

# WebSocket close codes API Gateway reports in $disconnect
# (requestContext.disconnectStatusCode / disconnectReason).
NORMAL_CLOSE_CODES = frozenset({1000, 1001})
# API Gateway (and the local emulator) closes idle and over-age connections with
# 1001 "Going away"; a browser leaving a page sends 1001 without that reason.
SERVER_TIMEOUT_REASONS = frozenset({"going away"})


# A connection this close to the maximum connection life was closed by the limit.
MAX_AGE_SLACK_SECONDS = 5


def is_abnormal_close(status_code: int | None, reason: str | None, *, age_seconds: float | None = None, max_age_seconds: float | None = None) -> bool:
    """A drop worth alarming on: anything but a normal close by either side
    (1000, or a client's 1001), including idle and max-age timeouts and a
    missing status (the TCP connection just went away). ``age_seconds`` (from
    the event's connectedAt / requestTimeEpoch) recognises the max-age close
    whatever its status says."""
    if age_seconds is not None and max_age_seconds and age_seconds >= max_age_seconds - MAX_AGE_SLACK_SECONDS:
        return True
    if status_code is None or status_code not in NORMAL_CLOSE_CODES:
        return True
    return status_code == 1001 and (reason or "").strip().lower() in SERVER_TIMEOUT_REASONS


def prometheus_name(name: str) -> str:
    """``realtime_streaming.message_latency_ms`` -> ``realtime_streaming_message_latency_ms``."""
    return name.replace(".", "_")
