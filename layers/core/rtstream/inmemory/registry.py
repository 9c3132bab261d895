"""In-memory :class:`~rtstream.ports.ConnectionRegistry` with the DynamoDB semantics:
subscriptions keyed by channel ``{entity}#{topic}`` and connection, expired
records invisible to reads."""

from __future__ import annotations

import threading
from dataclasses import replace

from ..errors import TooManyConnections
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
        # admission counters, as the DynamoDB adapter keeps them: records held
        # (live or not yet swept) per user / per entity
        self._user_slots: dict[str, int] = {}
        self._entity_slots: dict[str, int] = {}

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
        self.admit_connection(connection, max_per_user=None, max_per_entity=None)

    def admit_connection(self, connection: Connection, *, max_per_user: int | None, max_per_entity: int | None) -> None:
        with self._lock:
            if connection.connection_id in self._connections:
                return  # a retried connect: admitted already
            user, entity = connection.user_id, connection.entity_id
            for slots, key, limit, what in ((self._user_slots, user, max_per_user, "user"), (self._entity_slots, entity, max_per_entity, "entity")):
                if limit is not None and slots.get(key, 0) >= limit:
                    # full: expired records (lost $disconnects not yet swept) must not block
                    now = self._now_s()
                    for cid, c in list(self._connections.items()):
                        if (c.user_id if what == "user" else c.entity_id) == key and not self._live(c.expires_at, now):
                            self.remove_connection(cid)
                    if slots.get(key, 0) >= limit:
                        raise TooManyConnections(f"at most {limit} concurrent connections per {what}")
            self._user_slots[user] = self._user_slots.get(user, 0) + 1
            self._entity_slots[entity] = self._entity_slots.get(entity, 0) + 1
            self._connections[connection.connection_id] = connection

    @staticmethod
    def _release(slots: dict[str, int], key: str) -> None:
        left = slots.get(key, 0) - 1
        if left > 0:
            slots[key] = left
        else:
            slots.pop(key, None)

    def get_connection(self, connection_id: str) -> Connection | None:
        with self._lock:
            conn = self._connections.get(connection_id)
        if conn is None or not self._live(conn.expires_at, self._now_s()):
            return None
        return conn

    def remove_connection(self, connection_id: str) -> Connection | None:
        with self._lock:
            conn = self._connections.pop(connection_id, None)
            if conn is not None:
                self._release(self._user_slots, conn.user_id)
                self._release(self._entity_slots, conn.entity_id)
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

    def repair_counters(self, now_s: int, limit: int) -> tuple[int, int]:
        """Recount every counter from the records (nothing here can drift; kept
        for the port's shape). Returns ``(checked, corrected)``."""
        with self._lock:
            users: dict[str, int] = {}
            entities: dict[str, int] = {}
            for c in self._connections.values():
                users[c.user_id] = users.get(c.user_id, 0) + 1
                entities[c.entity_id] = entities.get(c.entity_id, 0) + 1
            corrected = sum(1 for k in set(users) | set(self._user_slots) if users.get(k) != self._user_slots.get(k))
            corrected += sum(1 for k in set(entities) | set(self._entity_slots) if entities.get(k) != self._entity_slots.get(k))
            checked = len(set(users) | set(self._user_slots)) + len(set(entities) | set(self._entity_slots))
            self._user_slots, self._entity_slots = users, entities
        return checked, corrected

    def slots(self, *, user_id: str | None = None, entity_id: str | None = None) -> int:
        """Admission slots held (tests)."""
        with self._lock:
            return self._user_slots.get(user_id, 0) if user_id is not None else self._entity_slots.get(entity_id or "", 0)

    def record_count(self) -> int:
        """Stored records, live or not (tests: the registry must not grow)."""
        with self._lock:
            return len(self._connections) + sum(len(subs) for subs in self._channels.values())
