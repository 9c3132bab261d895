"""SSE-specific configuration: :class:`rtstream.settings.SSESettings` (read by
``Settings.from_env`` with every other variable) with the federation targets
parsed and validated."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from rtstream.settings import SSESettings

from .federate import parse_targets


@dataclass(frozen=True, slots=True)
class SSEConfig(SSESettings):
    # Other local Prometheus endpoints whose metrics /metrics appends, each labelled
    # component=<name> (`rtstream dev`: the fan-out worker, housekeeping).
    metrics_federate: tuple[tuple[str, str], ...] = ()  # type: ignore[assignment]  # RTSTREAM_METRICS_FEDERATE, parsed

    @classmethod
    def from_settings(cls, sse: SSESettings) -> SSEConfig:
        values = {f.name: getattr(sse, f.name) for f in fields(SSESettings)}
        values["metrics_federate"] = parse_targets(sse.metrics_federate)
        return cls(**values)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SSEConfig:
        return cls.from_settings(SSESettings.from_env(os.environ if env is None else env))
