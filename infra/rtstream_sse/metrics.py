"""This process's metrics in the Prometheus text format (``GET /metrics``).

Names follow :mod:`rtstream.metrics` (dots as underscores). Kept dependency-free
and cheap on the hot path: a latency observation is one bisect and two adds.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

from rtstream import metrics as names

P = names.prometheus_name
RECONNECTS = "realtime_streaming_reconnects_total"
# CloudWatch EMF takes at most 100 values per metric in one document
EMF_MAX_VALUES = 100
# Upper bounds of the latency histogram, ms.
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000)


class LatencyHistogram:
    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_MS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last = +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value_ms: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value_ms)] += n
        self.total += value_ms * n
        self.count += n

    def lines(self, name: str) -> list[str]:
        out = [f"# HELP {name} Publish-to-write latency of delivered events, ms.", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts):
            cumulative += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.total:.3f}")
        out.append(f"{name}_count {self.count}")
        return out


class SSEMetrics:
    def __init__(self) -> None:
        self.latency = LatencyHistogram()
        self.deliveries = 0  # event frames written to clients
        self.events_read = 0  # events read from the partition streams
        self.connections_opened = 0
        self.reconnects = 0  # streams opened with Last-Event-ID (resumes)
        self.connections_dropped: Counter[str] = Counter()  # by reason
        self.connections_refused: Counter[str] = Counter()  # by error code
        self.replays = 0
        self.replay_gaps = 0
        self.redis_reconnects = 0
        self.invalid_entries = 0
        self.security_events: Counter[str] = Counter()  # by event (agent refusals)

    def render(self, *, active_connections: int, redis_connected: bool) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {value:g}")

        metric(P(names.ACTIVE_CONNECTIONS), "gauge", "Open SSE streams in this process.", [('{transport="sse"}', active_connections)])
        lines.extend(self.latency.lines(P(names.MESSAGE_LATENCY_MS)))
        metric(P(names.DELIVERIES) + "_total", "counter", "Event frames written to SSE clients.", [('{transport="sse"}', self.deliveries)])
        metric("realtime_streaming_sse_events_read_total", "counter", "Events read from the fan-out partition streams.", [("", self.events_read)])
        metric(P(names.CONNECTIONS_OPENED) + "_total", "counter", "SSE streams opened.", [('{transport="sse"}', self.connections_opened)])
        # realtime_streaming.reconnection_rate = rate(reconnects_total) / rate(connections_opened_total)
        metric(
            RECONNECTS,
            "counter",
            "SSE streams opened with Last-Event-ID (resumes); over connections_opened_total it is the reconnection rate.",
            [('{transport="sse"}', self.reconnects)],
        )
        metric(
            P(names.CONNECTIONS_DROPPED) + "_total",
            "counter",
            "SSE streams closed, by reason (disconnect, slow_client, shutdown, max_age, error).",
            [(f'{{transport="sse",reason="{r}"}}', n) for r, n in sorted(self.connections_dropped.items())],
        )
        metric(
            P(names.CONNECTIONS_REFUSED) + "_total",
            "counter",
            "SSE requests refused, by error code.",
            [(f'{{transport="sse",code="{c}"}}', n) for c, n in sorted(self.connections_refused.items())],
        )
        metric(
            P(names.SECURITY_EVENTS) + "_total",
            "counter",
            "Security events (agents refused presence), by event.",
            [(f'{{transport="sse",event="{e}"}}', n) for e, n in sorted(self.security_events.items())],
        )
        metric("realtime_streaming_sse_replays_total", "counter", "Last-Event-ID replays served.", [("", self.replays)])
        metric("realtime_streaming_sse_replay_gaps_total", "counter", "Replays answered with replay_gap.", [("", self.replay_gaps)])
        metric("realtime_streaming_sse_redis_reconnects_total", "counter", "Reconnects of the Redis reader.", [("", self.redis_reconnects)])
        metric("realtime_streaming_sse_invalid_entries_total", "counter", "Partition stream entries that could not be decoded.", [("", self.invalid_entries)])
        metric("realtime_streaming_sse_redis_connected", "gauge", "1 while the Redis reader is connected.", [("", 1 if redis_connected else 0)])
        return "\n".join(lines) + "\n"


def emf_line(
    namespace: str,
    service: str,
    *,
    active_connections: int | None,
    deliveries: int | None,
    now_ms: int,
    reconnections: list[int] | tuple[int, ...] = (),
    security_events: int = 0,
) -> str:
    """One CloudWatch Embedded Metric Format record (CloudWatch Logs extracts it).
    ``reconnections``: one value per stream opened since the last record, 1 for a
    resume (Last-Event-ID) and 0 for a fresh start, as the WebSocket side emits
    ``realtime_streaming.reconnection_rate`` (Average = share, Sum = count); at
    most :data:`EMF_MAX_VALUES` (see :func:`emf_lines`). None omits a metric."""
    import json

    values: dict[str, object] = {}
    if active_connections is not None:
        values[names.ACTIVE_CONNECTIONS] = active_connections
    if deliveries is not None:
        values[names.DELIVERIES] = deliveries
    if reconnections:
        if len(reconnections) > EMF_MAX_VALUES:
            raise ValueError(f"at most {EMF_MAX_VALUES} reconnection values per EMF record")
        values[names.RECONNECTION_RATE] = list(reconnections)
    if security_events:
        # agents refused presence: the same metric the WebSocket handlers emit
        values[names.SECURITY_EVENTS] = security_events
    return json.dumps(
        {
            "_aws": {
                "Timestamp": now_ms,
                "CloudWatchMetrics": [
                    {
                        "Namespace": namespace,
                        "Dimensions": [["ServiceName"]],
                        "Metrics": [{"Name": name, "Unit": "Count"} for name in values],
                    }
                ],
            },
            "ServiceName": service,
            **values,
        },
        separators=(",", ":"),
    )


def emf_lines(namespace: str, service: str, *, active_connections: int, deliveries: int, resumed: int, fresh: int, now_ms: int,
              security_events: int = 0) -> list[str]:
    """The records of one EMF interval: the first carries the gauges and counts,
    further ones the reconnection values beyond the first hundred."""
    values = [names.RESUMED] * resumed + [names.FRESH] * fresh
    chunks = [values[i : i + EMF_MAX_VALUES] for i in range(0, len(values), EMF_MAX_VALUES)] or [[]]
    lines = [emf_line(namespace, service, active_connections=active_connections, deliveries=deliveries, now_ms=now_ms, reconnections=chunks[0],
                      security_events=security_events)]
    lines += [emf_line(namespace, service, active_connections=None, deliveries=None, now_ms=now_ms, reconnections=chunk) for chunk in chunks[1:]]
    return lines
