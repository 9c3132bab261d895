"""One ``/metrics`` for a whole local system: this process's metrics plus the
Prometheus text of other local endpoints (``RTSTREAM_METRICS_FEDERATE``:
``component=http://127.0.0.1:P/metrics,...``, set by `rtstream dev` for the
fan-out worker and its housekeeping report).

Each part's samples get a ``component`` label and families of the same name are
merged under one HELP/TYPE, so the result stays valid exposition text. A part
that does not answer in time is skipped (its absence is visible in
``realtime_streaming_federated_up``), never an error of ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

log = logging.getLogger("rtstream_sse.federate")

FETCH_TIMEOUT_SECONDS = 1.0
MAX_BODY_BYTES = 4 * 1024 * 1024
COMPONENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)(\s+\S+)?$")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_created")
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


async def fetch(url: str, timeout: float = FETCH_TIMEOUT_SECONDS) -> str | None:
    """GET a local Prometheus endpoint (HTTP/1.1, Connection: close); None on any failure."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read(MAX_BODY_BYTES)
            while len(raw) < MAX_BODY_BYTES:
                more = await reader.read(MAX_BODY_BYTES - len(raw))
                if not more:
                    break
                raw += more
    except (OSError, TimeoutError) as exc:
        log.debug("metrics from %s not fetched: %s", url, exc)
        return None
    finally:
        if writer is not None:
            writer.close()
    head, sep, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split(b" ")
    if not sep or len(status) < 2 or status[1] != b"200" or b"transfer-encoding: chunked" in head.lower():
        return None
    return body.decode("utf-8", "replace")


@dataclass
class Family:
    name: str
    helps: dict[str, str] = field(default_factory=dict)  # by component
    type: str | None = None
    samples: list[str] = field(default_factory=list)


def _family_of(sample_name: str, current: Family | None) -> bool:
    if current is None:
        return False
    if sample_name == current.name:
        return True
    return current.type in ("histogram", "summary") and sample_name in {current.name + s for s in HISTOGRAM_SUFFIXES}


def _with_label(labels: str | None, component: str) -> str:
    label = f'component="{component}"'
    if not labels or labels == "{}":
        return "{" + label + "}"
    return "{" + label + "," + labels[1:]


def merge(parts: list[tuple[str, str]]) -> str:
    """``[(component, prometheus_text), ...]`` -> one exposition text."""
    families: dict[str, Family] = {}
    for component, text in parts:
        current: Family | None = None
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                words = line.split(None, 3)
                if len(words) >= 3 and words[1] in ("HELP", "TYPE"):
                    name = words[2]
                    current = families.setdefault(name, Family(name))
                    value = words[3] if len(words) > 3 else ""
                    if words[1] == "HELP":
                        current.helps.setdefault(component, value)
                    elif words[1] == "TYPE":
                        if current.type is not None and current.type != value:
                            log.warning("metric %s is a %s in one part and a %s in %s; %s's samples dropped", name, current.type, value, component, component)
                            current = Family(name, type=value)  # a throwaway: its samples would make the text invalid
                            continue
                        current.type = value
                continue
            match = SAMPLE.match(line)
            if match is None:
                continue
            sample_name, labels, value, stamp = match.groups()
            if not _family_of(sample_name, current):
                current = families.setdefault(sample_name, Family(sample_name))
            current.samples.append(f"{sample_name}{_with_label(labels, component)} {value}{stamp or ''}")
    lines: list[str] = []
    for family in families.values():
        if not family.samples:
            continue
        helps = list(dict.fromkeys(family.helps.values()))
        if len(helps) == 1:
            lines.append(f"# HELP {family.name} {helps[0]}")
        elif helps:  # one family, several meanings: say which part means what
            lines.append(f"# HELP {family.name} " + " | ".join(f"{c}: {h}" for c, h in family.helps.items()))
        if family.type is not None:
            lines.append(f"# TYPE {family.name} {family.type}")
        lines.extend(family.samples)
    return "\n".join(lines) + "\n"


async def federated(own_component: str, own_text: str, targets: tuple[tuple[str, str], ...], timeout: float = FETCH_TIMEOUT_SECONDS) -> str:
    """This process's text plus every target's, fetched in parallel."""
    texts = await asyncio.gather(*(fetch(url, timeout) for _, url in targets))
    parts = [(own_component, own_text)]
    up = [f"# HELP {UP} 1 if the component's metrics were read for this scrape.", f"# TYPE {UP} gauge"]
    for (component, _), text in zip(targets, texts):
        up.append(f'{UP}{{component="{component}"}} {0 if text is None else 1}')
        if text is not None:
            parts.append((component, text))
    return merge(parts) + "\n".join(up) + "\n"
