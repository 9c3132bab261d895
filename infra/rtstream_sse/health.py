"""``GET /healthz``: whether this SSE task can serve, for the ALB target group and
the ECS container health check (a task that answers 503 is replaced).

Contract (JSON body, ``cache-control: no-store``):

- 200 ``{"status": "ok", "redis": "connected" | "reconnecting", "connections": n,
  "lastReadAgoSeconds": s}``: Redis answered the shared reader recently. A blip
  shorter than the grace period stays 200 (``redis: "reconnecting"``): the reader
  resumes from its last ids, nothing is lost, replacing the task would not help.
- 503 ``{"status": "unhealthy", "code": "redis_unavailable", "message": …,
  "failingSeconds": s, …}``: the reader's Redis calls have failed for longer than
  the grace period (``RTSTREAM_SSE_HEALTH_GRACE_SECONDS``, default 10).
- 503 ``{"status": "unhealthy", "code": "reader_stalled", …}``: the reader is
  connected but no ``XREAD`` has returned for longer than the block timeout plus
  the grace period (a blocked connection, a dead reader task).
- 503 ``{"status": "draining", "code": "draining", …}``: SIGTERM received.
"""

from __future__ import annotations

import time
from typing import Any


def health(reader: Any, *, draining: bool, connections: int, block_seconds: float, grace_seconds: float,
           now: float | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for a :class:`~rtstream_sse.reader.PartitionReader`'s state."""
    now = time.monotonic() if now is None else now
    idle = max(0.0, now - reader.progress_at)
    body: dict[str, Any] = {
        "status": "ok",
        "redis": "connected" if reader.connected else "reconnecting",
        "connections": connections,
        "lastReadAgoSeconds": round(idle, 3),
    }
    if draining:
        return 503, {**body, "status": "draining", "code": "draining", "message": "shutting down; clients reconnect elsewhere"}
    if not reader.connected and idle > grace_seconds:
        failing = now - (reader.failing_since if reader.failing_since is not None else reader.progress_at)
        message = f"the Redis reader has had no answer for {idle:.1f}s"
        if reader.last_error:
            message += f" (last error: {reader.last_error})"
        return 503, {**body, "status": "unhealthy", "code": "redis_unavailable", "message": message,
                     "failingSeconds": round(failing, 3)}
    if reader.connected and idle > block_seconds + grace_seconds:
        return 503, {**body, "status": "unhealthy", "code": "reader_stalled",
                     "message": f"no XREAD returned for {idle:.1f}s (block timeout {block_seconds:.1f}s)"}
    return 200, body
