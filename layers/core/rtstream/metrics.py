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

# Alarms and dashboards (names from the seed)
ALARM_CONNECTION_DROP_HIGH = "realtime_streaming.connection_drop_high"
ALARM_LATENCY_DEGRADED = "realtime_streaming.latency_degraded"
DASHBOARD_HEALTH = "realtime_streaming_health"
DASHBOARD_PERFORMANCE = "realtime_streaming_performance"


def prometheus_name(name: str) -> str:
    """``realtime_streaming.message_latency_ms`` -> ``realtime_streaming_message_latency_ms``."""
    return name.replace(".", "_")
