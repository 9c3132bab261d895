"""In-memory implementations of the ports: real behaviour, one process.

Used by the core's own tests and anywhere a single process is the whole system.
Imports are lazy so that ``rtstream.inmemory.eventlog`` (owned separately) may
be absent without breaking the others.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InMemoryRegistry", "InMemoryRateLimiter", "InMemoryPresence", "InMemoryEventLog", "InMemoryPusher", "ManualClock"]

_WHERE = {
    "InMemoryRegistry": "registry",
    "InMemoryRateLimiter": "limits",
    "InMemoryPresence": "limits",
    "ManualClock": "limits",
    "InMemoryEventLog": "eventlog",
    "InMemoryPusher": "pusher",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
