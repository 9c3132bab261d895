"""This process's metrics: Prometheus (``GET /metrics``, through
``prometheus_client`` with a registry of its own) and CloudWatch EMF (through
Powertools ``EphemeralMetrics``).

Names follow :mod:`rtstream.metrics` (dots as underscores). Cheap on the hot path:
plain counters, turned into metric families when scraped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rtstream import metrics as names
from rtstream.adapters.prometheus import LatencyHistogram, component_registry, counter, exposition, gauge, labelled

P = names.prometheus_name
RECONNECTS = "realtime_streaming_reconnects_total"
# CloudWatch EMF takes at most 100 values per metric in one document (Powertools
# starts a new document when a metric reaches it)
EMF_MAX_VALUES = 100
EMF_DIMENSION = "ServiceName"  # the autoscaling policy's and the alarms' dimension


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

        # what /metrics reads besides the counters (set by the server before a scrape)
        self.active_connections = 0
        self.redis_connected = False
        self.registry = component_registry(self._families)

    def render(self, *, active_connections: int, redis_connected: bool) -> str:
        self.active_connections, self.redis_connected = active_connections, redis_connected
        return exposition(self.registry)

    def _families(self) -> Iterator[Metric]:
        sse = ("sse",)
        yield labelled(GaugeMetricFamily(P(names.ACTIVE_CONNECTIONS), "Open SSE streams in this process.", labels=["transport"]),
                       [(sse, self.active_connections)])
        yield self.latency.family(P(names.MESSAGE_LATENCY_MS), "Publish-to-write latency of delivered events, ms.")
        yield labelled(CounterMetricFamily(P(names.DELIVERIES), "Event frames written to SSE clients.", labels=["transport"]), [(sse, self.deliveries)])
        yield counter("realtime_streaming_sse_events_read", "Events read from the fan-out partition streams.", self.events_read)
        yield labelled(CounterMetricFamily(P(names.CONNECTIONS_OPENED), "SSE streams opened.", labels=["transport"]), [(sse, self.connections_opened)])
        # realtime_streaming.reconnection_rate = rate(reconnects_total) / rate(connections_opened_total)
        yield labelled(CounterMetricFamily(RECONNECTS, "SSE streams opened with Last-Event-ID (resumes); over connections_opened_total it is the reconnection rate.",
                                           labels=["transport"]), [(sse, self.reconnects)])
        yield labelled(CounterMetricFamily(P(names.CONNECTIONS_DROPPED), "SSE streams closed, by reason (disconnect, slow_client, shutdown, max_age, error).",
                                           labels=["transport", "reason"]), [(("sse", r), n) for r, n in sorted(self.connections_dropped.items())])
        yield labelled(CounterMetricFamily(P(names.CONNECTIONS_REFUSED), "SSE requests refused, by error code.", labels=["transport", "code"]),
                       [(("sse", c), n) for c, n in sorted(self.connections_refused.items())])
        yield labelled(CounterMetricFamily(P(names.SECURITY_EVENTS), "Security events (agents refused presence), by event.", labels=["transport", "event"]),
                       [(("sse", e), n) for e, n in sorted(self.security_events.items())])
        yield counter("realtime_streaming_sse_replays", "Last-Event-ID replays served.", self.replays)
        yield counter("realtime_streaming_sse_replay_gaps", "Replays answered with replay_gap.", self.replay_gaps)
        yield counter("realtime_streaming_sse_redis_reconnects", "Reconnects of the Redis reader.", self.redis_reconnects)
        yield counter("realtime_streaming_sse_invalid_entries", "Partition stream entries that could not be decoded.", self.invalid_entries)
        yield gauge("realtime_streaming_sse_redis_connected", "1 while the Redis reader is connected.", 1 if self.redis_connected else 0)


def emit_emf(namespace: str, service: str, *, active_connections: int, deliveries: int, resumed: int = 0, fresh: int = 0,
             security_events: int = 0, now_ms: int | None = None) -> None:
    """One interval's CloudWatch EMF records on stdout (CloudWatch Logs extracts them),
    dimension ``ServiceName=service``. ``resumed``/``fresh``: streams opened since the
    last interval with and without Last-Event-ID; each is one value of
    ``realtime_streaming.reconnection_rate`` (1 = resume, 0 = fresh start), as the
    WebSocket side emits it (Average = share, Sum = count). Past
    :data:`EMF_MAX_VALUES` values Powertools writes further records, the gauges
    only in the first."""
    # service="" keeps Powertools' own `service` dimension (POWERTOOLS_SERVICE_NAME) out:
    # the autoscaling metric is matched on exactly [ServiceName]
    emf = EphemeralMetrics(namespace=namespace, service="")
    emf.add_dimension(name=EMF_DIMENSION, value=service)
    if now_ms is not None:
        emf.set_timestamp(now_ms)
    emf.add_metric(name=names.ACTIVE_CONNECTIONS, unit=MetricUnit.Count, value=active_connections)
    emf.add_metric(name=names.DELIVERIES, unit=MetricUnit.Count, value=deliveries)
    if security_events:
        # agents refused presence: the same metric the WebSocket handlers emit
        emf.add_metric(name=names.SECURITY_EVENTS, unit=MetricUnit.Count, value=security_events)
    for value in [names.RESUMED] * resumed + [names.FRESH] * fresh:
        emf.add_metric(name=names.RECONNECTION_RATE, unit=MetricUnit.Count, value=value)
    if emf.metric_set:  # (the last auto-written record may have taken them all)
        emf.flush_metrics()
