"""Clients for realtime-streaming.

- :class:`RealtimeClient` (asyncio): WebSocket with SSE fallback, resume by event
  id, exactly-once delivery, backoff with jitter. For backend services, agents,
  tests and benchmarks.
- ``static/rtstream.js`` (+ ``rtstream-logic.js``): the same client as a
  dependency-free browser ES module; they are the npm package ``rtstream-client``'s
  files (``clients/js/src``, symlinked; wheels carry their content);
  ``static/dashboard.html``: the live dashboard served by the SSE service.
"""

from pathlib import Path

from .client import ClientState, RealtimeClient, ReplayGap, ServerRefused, StreamEvent, collect

STATIC_DIR = Path(__file__).resolve().parent / "static"

__all__ = ["RealtimeClient", "StreamEvent", "ReplayGap", "ClientState", "ServerRefused", "collect", "STATIC_DIR"]
