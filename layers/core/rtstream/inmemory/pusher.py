"""In-memory :class:`~rtstream.ports.Pusher`: records what was posted to whom.

Connections must be opened first (as API Gateway only knows connected ones);
posting to an unknown or closed id raises :class:`ConnectionGone` (410). Tests
can queue failures for a connection to exercise throttling and retries.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from typing import Any

from ..errors import ConnectionGone, RealtimeError


class InMemoryPusher:
    def __init__(self, connection_ids: list[str] | tuple[str, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._open: set[str] = set(connection_ids)
        self._closed: set[str] = set()
        # every successful post in order: (connection id, bytes)
        self.posts: list[tuple[str, bytes]] = []
        self._failures: dict[str, deque[RealtimeError]] = defaultdict(deque)

    def open(self, connection_id: str) -> None:
        with self._lock:
            self._open.add(connection_id)
            self._closed.discard(connection_id)

    def close(self, connection_id: str) -> None:
        """The client went away: later posts answer 410."""
        with self._lock:
            self._open.discard(connection_id)
            self._closed.add(connection_id)

    def fail_next(self, connection_id: str, error: RealtimeError, times: int = 1) -> None:
        """Make the next ``times`` posts to ``connection_id`` raise ``error``."""
        with self._lock:
            self._failures[connection_id].extend([error] * times)

    def is_open(self, connection_id: str) -> bool:
        with self._lock:
            return connection_id in self._open

    # ---- Pusher port ---------------------------------------------------------

    def post(self, connection_id: str, data: bytes) -> None:
        with self._lock:
            failures = self._failures.get(connection_id)
            if failures:
                raise failures.popleft()
            if connection_id not in self._open:
                raise ConnectionGone(f"connection {connection_id} is gone")
            self.posts.append((connection_id, bytes(data)))

    def delete(self, connection_id: str) -> None:
        with self._lock:
            if connection_id not in self._open:
                raise ConnectionGone(f"connection {connection_id} is gone")
            self._open.discard(connection_id)
            self._closed.add(connection_id)

    # ---- reading -------------------------------------------------------------

    def received(self, connection_id: str) -> list[bytes]:
        with self._lock:
            return [data for cid, data in self.posts if cid == connection_id]

    def frames(self, connection_id: str) -> list[dict[str, Any]]:
        """What ``connection_id`` received, decoded as JSON frames."""
        return [json.loads(data) for data in self.received(connection_id)]

    def clear(self) -> None:
        with self._lock:
            self.posts.clear()
