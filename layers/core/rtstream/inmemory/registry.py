"""In-memory :class:`~rtstream.ports.ConnectionRegistry` with the DynamoDB semantics:
subscriptions keyed by channel ``{entity}#{topic}`` and connection, expired
records invisible to reads."""

from __future__ import annotations

import threading
from dataclasses import replace

from ..models import Connection, Subscription
from ..ports import Clock, SystemClock


class InMemoryRegistry:
    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._connections: dict[str, Connection] = {}
        # channel "{entity}#{topic}" -> connection id -> subscription
        self._channels: dict[str, dict[str, Subscription]] = {}
        # connections whose first subscribe has been seen
        self._subscribed_once: set[str] = set()

    def _now_s(self) -> int:
        return self._clock.now_ms() // 1000

    @staticmethod
    def channel(entity_id: str, topic: str) -> str:
        return f"{entity_id}#{topic}"

    @staticmethod
    def _live(expires_at: int, now_s: int) -> bool:
        # 0 = no expiry recorded
        return expires_at == 0 or expires_at > now_s

    def add_connection(self, connection: Connection) -> None:
        with self._lock:
            self._connections[connection.connection_id] = connection

    def get_connection(self, connection_id: str) -> Connection | None:
        with self._lock:
            conn = self._connections.get(connection_id)
        if conn is None or not self._live(conn.expires_at, self._now_s()):
            return None
        return conn

    def remove_connection(self, connection_id: str) -> Connection | None:
        with self._lock:
            conn = self._connections.pop(connection_id, None)
            self._subscribed_once.discard(connection_id)
            for channel in list(self._channels):
                subs = self._channels[channel]
                subs.pop(connection_id, None)
                if not subs:
                    del self._channels[channel]
        return conn

    def count_user_connections(self, user_id: str, now_s: int) -> int:
        with self._lock:
            return sum(1 for c in self._connections.values() if c.user_id == user_id and self._live(c.expires_at, now_s))

    def count_entity_connections(self, entity_id: str, now_s: int) -> int:
        with self._lock:
            return sum(1 for c in self._connections.values() if c.entity_id == entity_id and self._live(c.expires_at, now_s))

    def put_subscription(self, subscription: Subscription) -> None:
        with self._lock:
            channel = self.channel(subscription.entity_id, subscription.topic)
            self._channels.setdefault(channel, {})[subscription.connection_id] = subscription

    def remove_subscription(self, connection_id: str, entity_id: str, topic: str) -> bool:
        with self._lock:
            channel = self.channel(entity_id, topic)
            subs = self._channels.get(channel)
            if not subs or connection_id not in subs:
                return False
            del subs[connection_id]
            if not subs:
                del self._channels[channel]
            return True

    def connection_subscriptions(self, connection_id: str) -> list[Subscription]:
        now = self._now_s()
        with self._lock:
            return [
                subs[connection_id]
                for subs in self._channels.values()
                if connection_id in subs and self._live(subs[connection_id].expires_at, now)
            ]

    def subscribers(self, entity_id: str, topic: str) -> list[Subscription]:
        now = self._now_s()
        with self._lock:
            subs = self._channels.get(self.channel(entity_id, topic), {})
            return [s for s in subs.values() if self._live(s.expires_at, now)]

    def clear_pending_replay(self, connection_id: str, entity_id: str, topic: str, marker: str) -> None:
        with self._lock:
            subs = self._channels.get(self.channel(entity_id, topic), {})
            sub = subs.get(connection_id)
            # Only the replay that set the marker may clear it (a newer subscribe wins).
            if sub is not None and sub.pending_replay == marker:
                subs[connection_id] = replace(sub, pending_replay=None)

    def claim_first_subscribe(self, connection_id: str) -> bool:
        with self._lock:
            if connection_id in self._subscribed_once:
                return False
            self._subscribed_once.add(connection_id)
            return True

    # ---- housekeeping

    def count_connections(self, now_s: int) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for c in self._connections.values():
                if self._live(c.expires_at, now_s):
                    counts[c.transport] = counts.get(c.transport, 0) + 1
        return counts

    def stale_connections(self, now_s: int, limit: int) -> list[str]:
        with self._lock:
            stale = [cid for cid, c in self._connections.items() if not self._live(c.expires_at, now_s)]
        return stale[:limit]

    def stale_subscriptions(self, now_s: int, limit: int) -> list[Subscription]:
        with self._lock:
            stale = [s for subs in self._channels.values() for s in subs.values() if not self._live(s.expires_at, now_s)]
        return stale[:limit]

    def record_count(self) -> int:
        """Stored records, live or not (tests: the registry must not grow)."""
        with self._lock:
            return len(self._connections) + sum(len(subs) for subs in self._channels.values())
