"""The worker's metrics: in-process counters + latency histogram, exposed as
Prometheus text (``GET /metrics`` on ``RTSTREAM_WORKER_METRICS_PORT``) and
flushed periodically as CloudWatch EMF through Powertools ``Metrics``.

EMF carries at most 100 values per metric per document, so each flush sends a
reservoir sample of the latencies observed since the last one plus the counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from bisect import bisect_left

from rtstream import metrics as names

log = logging.getLogger("rtstream_fanout")

LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000)
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
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.owned_partitions = 0
        self._since_flush = {key: 0 for key in COUNTERS}
        self._reservoir: list[float] = []
        self._seen = 0

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n
        self._since_flush[key] += n

    def observe_latency(self, ms: float, n: int = 1) -> None:
        """``n`` deliveries of one event posted ``ms`` after it was published."""
        self.buckets[bisect_left(LATENCY_BUCKETS_MS, ms)] += n
        self.latency_sum += ms * n
        self.latency_count += n
        self._seen += 1
        if len(self._reservoir) < EMF_SAMPLES:
            self._reservoir.append(ms)
        else:
            j = random.randrange(self._seen)
            if j < EMF_SAMPLES:
                self._reservoir[j] = ms

    def prometheus(self) -> str:
        p = names.prometheus_name
        lines: list[str] = []
        for key, (name, help_text) in COUNTERS.items():
            lines += [f"# HELP {p(name)}_total {help_text}", f"# TYPE {p(name)}_total counter", f"{p(name)}_total {self.counts[key]}"]
        lat = p(names.MESSAGE_LATENCY_MS)
        lines += [f"# HELP {lat} Publish-to-post latency of delivered events, ms.", f"# TYPE {lat} histogram"]
        cumulative = 0
        for bound, n in zip(LATENCY_BUCKETS_MS, self.buckets):
            cumulative += n
            lines.append(f'{lat}_bucket{{le="{bound:g}"}} {cumulative}')
        lines += [f'{lat}_bucket{{le="+Inf"}} {self.latency_count}', f"{lat}_sum {self.latency_sum:.3f}", f"{lat}_count {self.latency_count}"]
        owned = "realtime_streaming_fanout_owned_partitions"
        lines += [f"# TYPE {owned} gauge", f"{owned} {self.owned_partitions}"]
        return "\n".join(lines) + "\n"

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


async def serve_prometheus(metrics: WorkerMetrics, port: int, host: str = "127.0.0.1", health=None) -> asyncio.AbstractServer:
    """A tiny ``GET /metrics`` and ``GET /healthz`` endpoint. ``health()`` returns
    ``(healthy, body)``: 200 or 503 with the body as JSON (without it: always ok)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if path.startswith(b"/metrics"):
                body, status, ctype = metrics.prometheus().encode(), "200 OK", "text/plain; version=0.0.4"
            elif path.startswith(b"/healthz"):
                healthy, report = health() if health is not None else (True, {"status": "ok"})
                body = json.dumps(report, separators=(",", ":")).encode()
                status, ctype = ("200 OK" if healthy else "503 Service Unavailable"), "application/json"
            else:
                body, status, ctype = b"not found\n", "404 Not Found", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
