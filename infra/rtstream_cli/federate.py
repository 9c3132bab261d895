"""One ``/metrics`` for the whole `rtstream dev` system: the SSE server's
metrics plus those of the other local endpoints (``RTSTREAM_METRICS_FEDERATE``:
``component=http://127.0.0.1:P/metrics,...``, set by `rtstream dev` for the
fan-out worker and its housekeeping report). Dev only: the production SSE
server serves its own metrics and nothing else.

Each part is parsed with prometheus_client's parser; every sample gets a
``component`` label and families of the same name are merged under one
HELP/TYPE, rendered again by prometheus_client, so the result is valid
exposition text. A part that does not answer in time (or is not valid text) is
skipped, visible in ``realtime_streaming_federated_up``, never an error of
``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Iterable, Iterator
from urllib.parse import urlsplit

import httpx
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("rtstream_cli.federate")

FETCH_TIMEOUT_SECONDS = 1.0
COMPONENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
UP = "realtime_streaming_federated_up"


def parse_targets(raw: str) -> tuple[tuple[str, str], ...]:
    """``"worker=http://h:p/metrics,housekeeping=http://h:q/metrics"`` -> pairs.
    Only plain ``http://`` URLs; a bad entry is a configuration error."""
    out: list[tuple[str, str]] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not COMPONENT.match(name.strip()):
            raise ValueError(f"RTSTREAM_METRICS_FEDERATE entries are component=http://host:port/path, got {item!r}")
        url = url.strip()
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"RTSTREAM_METRICS_FEDERATE: {url!r} is not an http://host:port/path URL")
        out.append((name.strip(), url))
    return tuple(out)


async def fetch(http: httpx.AsyncClient, url: str) -> str | None:
    """The text of one local Prometheus endpoint; None on any failure."""
    try:
        response = await http.get(url)
    except httpx.HTTPError as exc:
        log.debug("metrics from %s not fetched: %s", url, exc)
        return None
    return response.text if response.status_code == 200 else None


def _families(component: str, text: str) -> list[Metric]:
    try:
        return list(text_string_to_metric_families(text))
    except ValueError as exc:  # not exposition text: the part is left out, not the scrape
        log.warning("metrics of %s are not valid exposition text (%s); left out", component, exc)
        return []


class _Merged(Collector):
    def __init__(self, metrics: Iterable[Metric]):
        self._metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def merge(parts: list[tuple[str, str]], extra: Iterable[Metric] = ()) -> str:
    """``[(component, prometheus_text), ...]`` -> one exposition text."""
    merged: dict[str, Metric] = {}
    helps: dict[str, dict[str, str]] = {}
    for component, text in parts:
        for family in _families(component, text):
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            elif target.type != family.type:
                log.warning("metric %s is a %s in one part and a %s in %s; %s's samples dropped",
                            family.name, target.type, family.type, component, component)
                continue
            if family.documentation:
                helps.setdefault(family.name, {}).setdefault(component, family.documentation)
            for sample in family.samples:
                target.add_sample(sample.name, {"component": component, **sample.labels}, sample.value, sample.timestamp)
    for name, by_component in helps.items():
        meanings = list(dict.fromkeys(by_component.values()))
        # one family, several meanings: say which part means what
        merged[name].documentation = meanings[0] if len(meanings) == 1 else " | ".join(
            f"{component}: {text}" for component, text in by_component.items())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([*(m for m in merged.values() if m.samples), *extra]))
    return generate_latest(registry).decode("utf-8")


async def federated(own_component: str, own_text: str, targets: tuple[tuple[str, str], ...],
                    timeout: float = FETCH_TIMEOUT_SECONDS) -> str:
    """This process's text plus every target's, fetched in parallel."""
    async with httpx.AsyncClient(timeout=timeout) as http:
        texts = await asyncio.gather(*(fetch(http, url) for _, url in targets))
    up = GaugeMetricFamily(UP, "1 if the component's metrics were read for this scrape.", labels=["component"])
    parts = [(own_component, own_text)]
    for (component, _), text in zip(targets, texts):
        up.add_metric([component], 0 if text is None else 1)
        if text is not None:
            parts.append((component, text))
    return merge(parts, extra=[up])
