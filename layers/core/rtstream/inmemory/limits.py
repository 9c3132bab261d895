"""In-memory rate limiter (token bucket) and presence store, with an injectable clock."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .. import keys
from ..models import JsonObject
from ..ports import Clock, SystemClock
from ..presence import Member, changes, summarize


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, start_ms: int = 1_764_090_000_000):
        self.ms = start_ms

    def now_ms(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


class InMemoryRateLimiter:
    """Token bucket per connection: ``burst`` tokens, refilled at ``rate_per_second``;
    refused messages counted over the ``keys.rate_violations`` window."""

    def __init__(self, clock: Clock | None = None):
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        # connection id -> (tokens, last refill ms)
        self._buckets: dict[str, tuple[float, int]] = {}
        # connection id -> (count, window end ms)
        self._violations: dict[str, tuple[int, int]] = {}

    def allow(self, connection_id: str, rate_per_second: float, burst: int) -> bool:
        now = self._clock.now_ms()
        with self._lock:
            tokens, last = self._buckets.get(connection_id, (float(burst), now))
            tokens = min(float(burst), tokens + max(0, now - last) / 1000.0 * rate_per_second)
            if tokens >= 1.0:
                self._buckets[connection_id] = (tokens - 1.0, now)
                return True
            self._buckets[connection_id] = (tokens, now)
            return False

    def record_violation(self, connection_id: str) -> int:
        now = self._clock.now_ms()
        window_ms = (keys.rate_violations(connection_id).ttl_seconds or 60) * 1000
        with self._lock:
            count, until = self._violations.get(connection_id, (0, 0))
            if until <= now:  # like INCR on a key that expired: a new window
                count, until = 0, now + window_ms
            count += 1
            self._violations[connection_id] = (count, until)
            return count


class InMemoryPresence:
    """Live connections per entity, each expiring ``ttl_seconds`` after its last
    heartbeat; join/leave payloads computed by :mod:`rtstream.presence`."""

    def __init__(self, ttl_seconds: int = 660, clock: Clock | None = None):
        self._ttl_ms = ttl_seconds * 1000
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        # entity -> member -> last heartbeat ms
        self._entities: dict[str, dict[Member, int]] = {}

    def _change(self, entity_id: str, member: Member, beat: bool) -> list[JsonObject]:
        now = self._clock.now_ms()
        with self._lock:
            members = self._entities.setdefault(entity_id, {})
            before = list(members)
            for m, seen in list(members.items()):
                if seen < now - self._ttl_ms:
                    del members[m]
            if beat:
                members[member] = now
            else:
                members.pop(member, None)
            after = list(members)
            if not members:
                del self._entities[entity_id]
        return changes(before, after)

    def heartbeat(self, entity_id: str, user_id: str, connection_id: str, transport: str) -> list[JsonObject]:
        return self._change(entity_id, Member(user_id, connection_id, transport), beat=True)

    def leave(self, entity_id: str, user_id: str, connection_id: str, transport: str) -> list[JsonObject]:
        return self._change(entity_id, Member(user_id, connection_id, transport), beat=False)

    def touch(self, entity_id: str, members: Sequence[tuple[str, str, str]]) -> None:
        now = self._clock.now_ms()
        with self._lock:
            current = self._entities.setdefault(entity_id, {})
            for m in members:
                current[Member(*m)] = now

    def online(self, entity_id: str) -> list[JsonObject]:
        cutoff = self._clock.now_ms() - self._ttl_ms
        with self._lock:
            live = [m for m, seen in self._entities.get(entity_id, {}).items() if seen >= cutoff]
        return summarize(live)

    def sweep(self) -> dict[str, list[JsonObject]]:
        cutoff = self._clock.now_ms() - self._ttl_ms
        out: dict[str, list[JsonObject]] = {}
        with self._lock:
            for entity_id, members in list(self._entities.items()):
                if all(seen >= cutoff for seen in members.values()):
                    continue
                before = list(members)
                for m, seen in list(members.items()):
                    if seen < cutoff:
                        del members[m]
                if not members:
                    del self._entities[entity_id]
                out[entity_id] = changes(before, list(members))
        return out
