"""In-memory twins of the fan-out engine's ports (:mod:`rtstream.fanout_engine`).

- :class:`InMemoryHistory`: the async history reader over an
  :class:`~rtstream.inmemory.eventlog.InMemoryEventLog`, refusing malformed ids
  as the Redis adapter does, with injectable failures;
- :class:`InMemoryAsyncPoster`: the ``@connections`` client over an
  :class:`~rtstream.inmemory.pusher.InMemoryPusher`, answering statuses like API
  Gateway (200, 410, 429, 500), counting attempts per connection, and optionally
  holding posts at a gate (to interleave them with publishing deterministically);
- :class:`InMemoryDeadLetters`, :class:`CountingMetrics`.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Sequence

from ..errors import BackendUnavailable, ConnectionGone, Throttled
from ..fanout_engine import strict_id_key
from ..models import Event
from ..ports import DeadLetter
from .eventlog import InMemoryEventLog
from .pusher import InMemoryPusher


class InMemoryHistory:
    def __init__(self, log: InMemoryEventLog) -> None:
        self.log = log
        self.failures: deque[BaseException] = deque()
        self.gate: asyncio.Event | None = None  # set: replays read history only once it is set
        self.reads = 0

    def fail_next(self, error: BaseException, times: int = 1) -> None:
        self.failures.extend([error] * times)

    async def replay(self, entity_id: str, since: str, until: str | None = None) -> list[Event]:
        if self.gate is not None:
            await self.gate.wait()
        self.reads += 1
        if self.failures:
            raise self.failures.popleft()
        strict_id_key(since)  # Redis refuses what the strict check refuses
        return self.log.replay(entity_id, since, until)

    async def last_id(self, entity_id: str) -> str:
        return self.log.last_id(entity_id)

    async def recent(self, entity_id: str, count: int, before: str | None = None) -> list[Event]:
        if self.gate is not None:
            await self.gate.wait()
        self.reads += 1
        if self.failures:
            raise self.failures.popleft()
        return self.log.recent(entity_id, count, before)


class InMemoryAsyncPoster:
    def __init__(self, pusher: InMemoryPusher | None = None) -> None:
        self.pusher = pusher or InMemoryPusher()
        self.attempts: Counter[str] = Counter()
        self.gates: dict[str, asyncio.Event] = {}  # connection -> posts wait until set
        self.in_order_batches: list[tuple[str, int]] = []  # (connection, frames) per post_in_order call

    def hold(self, connection_id: str) -> asyncio.Event:
        gate = self.gates[connection_id] = asyncio.Event()
        return gate

    async def _one(self, connection_id: str, data: bytes) -> int:
        gate = self.gates.get(connection_id)
        if gate is not None:
            await gate.wait()
        self.attempts[connection_id] += 1
        try:
            self.pusher.post(connection_id, data)
        except ConnectionGone:
            return 410
        except Throttled:
            return 429
        except BackendUnavailable:
            return 500
        return 200

    async def post(self, connection_id: str, data: bytes) -> int:
        return await self._one(connection_id, data)

    async def post_many(self, connection_ids: Sequence[str], data: bytes) -> list[int]:
        return list(await asyncio.gather(*(self._one(cid, data) for cid in connection_ids)))

    async def post_in_order(self, connection_id: str, frames: Sequence[bytes]) -> list[int]:
        # pipelined like the real client: every frame is sent, answers come in order
        self.in_order_batches.append((connection_id, len(frames)))
        return [await self._one(connection_id, frame) for frame in frames]

    async def close(self) -> None:
        return None


class InMemoryDeadLetters:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    async def dead_letter(self, letter: DeadLetter) -> None:
        self.letters.append(letter)


class CountingMetrics:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.latencies: list[float] = []

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def observe_latency(self, ms: float, n: int = 1) -> None:
        self.latencies += [ms] * n
