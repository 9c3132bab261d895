"""The worker's metrics: in-process counters + latency histogram, exposed through
``prometheus_client`` (``GET /metrics`` on ``RTSTREAM_WORKER_METRICS_PORT``, its own
registry) and flushed periodically as CloudWatch EMF through Powertools ``Metrics``.

EMF carries at most 100 values per metric per document, so each flush sends a
reservoir sample of the latencies observed since the last one plus the counts.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

from prometheus_client.core import Metric

from rtstream import metrics as names
from rtstream.adapters.prometheus import LatencyHistogram, component_registry, counter, exposition, gauge

log = logging.getLogger("rtstream_fanout")

EMF_SAMPLES = 100

COUNTERS = {
    "deliveries": (names.DELIVERIES, "Event frames posted to connections."),
    "delivery_errors": (names.DELIVERY_ERRORS, "Posts that failed after retries or were refused."),
    "pruned": (names.CONNECTIONS_PRUNED, "Connections removed after 410 Gone."),
    "invalid_events": (names.INVALID_EVENTS, "Raw publishes or stream entries refused as invalid."),
    "events": (names.FANOUT_EVENTS, "Events read from the partition streams."),
    "ingested": (names.RAW_INGESTED, "Raw PUBLISHes recorded in history by this worker."),
    "retries": (names.DELIVERY_RETRIES, "Posts retried after 429/5xx."),
    "replays": (names.REPLAYS, "Replay requests answered."),
    "replay_gaps": (names.REPLAY_GAPS, "Replay requests answered with replay_gap."),
    "redis_reconnects": (names.REDIS_RECONNECTS, "Redis connection losses recovered."),
    "dead_letters": (names.DEAD_LETTERS, "Work entries moved to the dead-letter stream."),
    "replays_abandoned": (names.REPLAYS_ABANDONED, "Replays stopped at the first 410 (connection gone)."),
}


class WorkerMetrics:
    def __init__(self) -> None:
        self.counts = {key: 0 for key in COUNTERS}
        self.latency = LatencyHistogram()
        self.owned_partitions = 0
        self._since_flush = {key: 0 for key in COUNTERS}
        self._reservoir: list[float] = []
        self._seen = 0
        self.registry = component_registry(self._families)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n
        self._since_flush[key] += n

    def observe_latency(self, ms: float, n: int = 1) -> None:
        """``n`` deliveries of one event posted ``ms`` after it was published."""
        self.latency.observe(ms, n)
        self._seen += 1
        if len(self._reservoir) < EMF_SAMPLES:
            self._reservoir.append(ms)
        else:
            j = random.randrange(self._seen)
            if j < EMF_SAMPLES:
                self._reservoir[j] = ms

    def _families(self) -> Iterator[Metric]:
        p = names.prometheus_name
        for key, (name, help_text) in COUNTERS.items():
            yield counter(p(name), help_text, self.counts[key])
        yield self.latency.family(p(names.MESSAGE_LATENCY_MS), "Publish-to-post latency of delivered events, ms.")
        yield gauge("realtime_streaming_fanout_owned_partitions", "Partitions this worker holds the lease of.", self.owned_partitions)

    def prometheus(self) -> str:
        return exposition(self.registry)

    def flush_emf(self, emf) -> None:
        """Add what happened since the last flush to a Powertools ``Metrics`` and flush it."""
        from aws_lambda_powertools.metrics import MetricUnit

        if not self._reservoir and not any(self._since_flush.values()):
            return
        for ms in self._reservoir:
            emf.add_metric(name=names.MESSAGE_LATENCY_MS, unit=MetricUnit.Milliseconds, value=ms)
        for key, n in self._since_flush.items():
            if n:
                emf.add_metric(name=COUNTERS[key][0], unit=MetricUnit.Count, value=n)
        emf.flush_metrics()
        self._reservoir = []
        self._seen = 0
        self._since_flush = {key: 0 for key in COUNTERS}
