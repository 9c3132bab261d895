"""SSE-specific configuration: :class:`rtstream.settings.SSESettings`, read by
``Settings.from_env(own=("sse",))`` with every other variable (the README's
Configuration table lists them)."""

from __future__ import annotations

from rtstream.settings import SSESettings as SSEConfig

__all__ = ["SSEConfig"]
