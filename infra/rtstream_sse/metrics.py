"""This process's metrics in the Prometheus text format (``GET /metrics``).

Names follow :mod:`rtstream.metrics` (dots as underscores). Kept dependency-free
and cheap on the hot path: a latency observation is one bisect and two adds.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

from rtstream import metrics as names

P = names.prometheus_name
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
        self.connections_dropped: Counter[str] = Counter()  # by reason
        self.connections_refused: Counter[str] = Counter()  # by error code
        self.replays = 0
        self.replay_gaps = 0
        self.redis_reconnects = 0
        self.invalid_entries = 0

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
        metric("realtime_streaming_sse_replays_total", "counter", "Last-Event-ID replays served.", [("", self.replays)])
        metric("realtime_streaming_sse_replay_gaps_total", "counter", "Replays answered with replay_gap.", [("", self.replay_gaps)])
        metric("realtime_streaming_sse_redis_reconnects_total", "counter", "Reconnects of the Redis reader.", [("", self.redis_reconnects)])
        metric("realtime_streaming_sse_invalid_entries_total", "counter", "Partition stream entries that could not be decoded.", [("", self.invalid_entries)])
        metric("realtime_streaming_sse_redis_connected", "gauge", "1 while the Redis reader is connected.", [("", 1 if redis_connected else 0)])
        return "\n".join(lines) + "\n"


def emf_line(namespace: str, service: str, *, active_connections: int, deliveries: int, now_ms: int) -> str:
    """One CloudWatch Embedded Metric Format record (CloudWatch Logs extracts it)."""
    import json

    return json.dumps(
        {
            "_aws": {
                "Timestamp": now_ms,
                "CloudWatchMetrics": [
                    {
                        "Namespace": namespace,
                        "Dimensions": [["ServiceName"]],
                        "Metrics": [
                            {"Name": names.ACTIVE_CONNECTIONS, "Unit": "Count"},
                            {"Name": names.DELIVERIES, "Unit": "Count"},
                        ],
                    }
                ],
            },
            "ServiceName": service,
            names.ACTIVE_CONNECTIONS: active_connections,
            names.DELIVERIES: deliveries,
        },
        separators=(",", ":"),
    )
