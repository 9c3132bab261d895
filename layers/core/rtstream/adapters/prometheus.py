"""Prometheus exposition through ``prometheus_client``: one ``CollectorRegistry``
per component (never the library's global one, so components and tests do not
leak into each other), the text format rendered by the library, and the worker's
``/metrics`` + ``/healthz`` endpoint on the library's WSGI server.

The components count in plain ints on their hot paths (a delivery is one add, a
latency observation one bisect and two adds, with a count ``n`` for a batch,
which ``prometheus_client.Histogram`` cannot take); a custom collector turns
them into metric families when scraped.
"""

from __future__ import annotations

import asyncio
import json
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.registry import Collector

from .. import metrics as names
from ..hygiene import HousekeepingReport

# Upper bounds of the latency histograms, ms.
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000)
HEALTH_TIMEOUT_SECONDS = 5.0  # a loop that cannot answer /healthz within this is unhealthy

Families = Callable[[], Iterable[Metric]]


class LatencyHistogram:
    """Cumulative latency buckets, cheap to observe; exposed as a histogram family."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_MS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last = +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value_ms: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value_ms)] += n
        self.total += value_ms * n
        self.count += n

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts):
            cumulative += n
            buckets.append((f"{bound:g}", cumulative))
        buckets.append(("+Inf", self.count))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


LabelledFamily = TypeVar("LabelledFamily", CounterMetricFamily, GaugeMetricFamily)


def labelled(family: LabelledFamily, samples: Iterable[tuple[tuple[str, ...], float]]) -> LabelledFamily:
    """``family`` (built with ``labels=``) with one sample per (label values, value)."""
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


class _CallbackCollector(Collector):
    def __init__(self, families: Families):
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families()


def component_registry(families: Families) -> CollectorRegistry:
    """A registry of its own whose one collector yields ``families()`` per scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_CallbackCollector(families))
    return registry


def exposition(registry: CollectorRegistry) -> str:
    """The registry in the Prometheus text format (version 0.0.4)."""
    return generate_latest(registry).decode()


class MetricsEndpoint:
    """The running ``/metrics`` + ``/healthz`` server; closes like an asyncio server."""

    def __init__(self, httpd: ThreadingWSGIServer):
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="metrics-endpoint", daemon=True)
        self._thread.start()
        self._stopper: threading.Thread | None = None

    @property
    def sockets(self) -> list[Any]:
        return [self._httpd.socket]

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        if self._stopper is None:
            self._stopper = threading.Thread(target=self._stop, daemon=True)
            self._stopper.start()

    def _stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    async def wait_closed(self) -> None:
        self.close()
        assert self._stopper is not None
        await asyncio.to_thread(self._stopper.join)


async def serve_prometheus(registry: CollectorRegistry, port: int, host: str = "127.0.0.1",
                           health: Callable[[], tuple[bool, dict[str, Any]]] | None = None) -> MetricsEndpoint:
    """``GET /metrics`` (``prometheus_client``'s WSGI app) and ``GET /healthz`` on a
    server thread. ``health()`` returns ``(healthy, body)`` and runs on the calling
    event loop (it reads the loop's state): 200 or 503 with the body as JSON;
    without it, always ok."""
    loop = asyncio.get_running_loop()
    metrics_app = make_wsgi_app(registry)

    async def _health() -> tuple[bool, dict[str, Any]]:
        return health() if health is not None else (True, {"status": "ok"})

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path.startswith("/metrics"):
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path.startswith("/healthz"):
            try:
                healthy, report = asyncio.run_coroutine_threadsafe(_health(), loop).result(HEALTH_TIMEOUT_SECONDS)
            except Exception as exc:  # noqa: BLE001 - a loop that cannot answer is unhealthy
                healthy, report = False, {"status": "unhealthy", "reasons": [f"health check failed: {type(exc).__name__}"]}
            body = json.dumps(report, separators=(",", ":")).encode()
            start_response("200 OK" if healthy else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    httpd = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    return MetricsEndpoint(httpd)


def housekeeping_families(report: HousekeepingReport) -> Iterable[Metric]:
    """A housekeeping run (``/metrics`` of `rtstream dev`): the active-connections
    gauge per transport and the sweep counts of that run."""
    if report.active:
        yield labelled(GaugeMetricFamily(names.prometheus_name(names.ACTIVE_CONNECTIONS), "Live connections in the registry, by transport.",
                                         labels=["transport"]), (((t,), n) for t, n in report.active.items()))
    for metric, value, help_text in (
        (names.STALE_CONNECTIONS_SWEPT, report.connections_swept, "Stale connection records removed by the last housekeeping run."),
        (names.STALE_SUBSCRIPTIONS_SWEPT, report.subscriptions_swept, "Stale subscription records removed by the last housekeeping run."),
        (names.STALE_PRESENCE_SWEPT, report.presence_expired, "Users announced offline by the last presence sweep."),
    ):
        yield gauge(names.prometheus_name(metric), help_text, value)
