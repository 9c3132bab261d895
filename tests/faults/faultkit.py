"""What the fault tests share: a local system whose parts can be killed, clients
that record every frame they are sent, a steady publisher, and the exactly-once
accounting."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from rtstream_client import RealtimeClient
from rtstream_client.client import StreamEvent

# A restarted worker takes over the dead one's partitions when its lease lapses:
# short here so a test sees recovery in seconds (default 10 s).
LEASE_MS = "1500"


def local_system(log_dir: Path, notices: list[str], **options: Any):
    from rtstream_cli.dev import LocalSystem

    return LocalSystem(ws_port=0, sse_port=0, write_state_file=False, with_eventbridge=False, housekeeping_interval=0,
                       log_dir=log_dir, notify=notices.append, settings_overrides={"RTSTREAM_FANOUT_LEASE_MS": LEASE_MS},
                       **options)


class RecordingClient(RealtimeClient):
    """The project's client, also recording every event frame the server sent
    (before the client's own "drop ids <= last" rule), so server-side duplicates
    and reordering are visible too."""

    def __init__(self, name: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.name = name
        self.raw_ids: list[str] = []
        self.received: list[StreamEvent] = []
        self.arrivals: list[float] = []  # monotonic receive times
        self._consumer: asyncio.Task | None = None

    def _deliver(self, frame: Any, **kwargs: Any) -> None:
        if frame.get("type") == "event":
            self.raw_ids.append(frame.get("id"))
        super()._deliver(frame, **kwargs)

    async def start(self) -> "RecordingClient":
        await super().start()
        self._consumer = asyncio.create_task(self._consume())
        return self

    async def _consume(self) -> None:
        async for item in self:
            if isinstance(item, StreamEvent):
                self.received.append(item)
                self.arrivals.append(time.monotonic())

    async def close(self) -> None:
        await super().close()
        if self._consumer is not None:
            await asyncio.gather(self._consumer, return_exceptions=True)


def clients_for(system: Any, entity: str, *, ws: int, sse: int) -> list[RecordingClient]:
    from rtstream.auth import issue_dev_token

    def token() -> str:
        return issue_dev_token(system.jwt_secret, user_id=f"u-{uuid.uuid4().hex[:6]}", entity_id=entity)

    common = {"ws_url": system.ws_url, "sse_url": system.sse_url, "get_token": token, "topics": ["*"],
              # reconnect quickly: the outages here last seconds
              "backoff_base": 0.1, "backoff_cap": 1.0}
    return ([RecordingClient(f"ws{i}", transport="ws", **common) for i in range(ws)]
            + [RecordingClient(f"sse{i}", transport="sse", **common) for i in range(sse)])


@dataclass
class Publisher:
    """Publishes ``count`` events at ``rate``/s through the SDK (one Lua script per
    event); ``at`` maps an index to an action run right after that event was
    acknowledged (a kill), so what was published before it is unambiguous; the
    ``burst`` events up to an action go out back to back, so the part killed
    there is busy with them. A publish that fails (Redis down) is retried after a
    pause: the event exists once it is acknowledged, and only then is it expected."""

    redis_url: str
    settings: Any
    entity: str
    count: int
    rate: float
    at: dict[int, Callable[[], None]] = field(default_factory=dict)
    burst: int = 0
    published: list[str] = field(default_factory=list)
    failed_attempts: int = 0
    finished_at: float = 0.0

    def run(self) -> None:
        import redis

        from rtstream.adapters.publishing import publish

        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1, socket_timeout=2)
        interval = 1.0 / self.rate
        started = time.monotonic()
        try:
            for n in range(self.count):
                pause = started + n * interval - time.monotonic()
                if pause > 0 and not any(a - self.burst < n <= a for a in self.at):
                    time.sleep(pause)
                data = {"transactionId": f"t{n}", "amount": n, "merchant": "Fault Cafe"}
                deadline = time.monotonic() + 30
                while True:
                    try:
                        self.published.append(publish(self.entity, "transactions.new", data, source="faults",
                                                      client=client, settings=self.settings))
                        break
                    except Exception:
                        self.failed_attempts += 1
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
                action = self.at.get(n)
                if action is not None:
                    action()
        finally:
            self.finished_at = time.monotonic()
            client.close()


async def wait_all_received(clients: list[RecordingClient], expected: int, timeout: float) -> float:
    """Seconds until every client has ``expected`` events (or the timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(len(c.received) >= expected for c in clients):
            break
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def accounting(client: RecordingClient, published: list[str]) -> dict[str, Any]:
    got = [e.id for e in client.received]
    want = set(published)
    raw = Counter(client.raw_ids)
    return {
        "client": client.name,
        "received": len(got),
        "lost": len(want - set(got)),
        "duplicated": len(got) - len(set(got)),
        "unexpected": len(set(got) - want),
        "in_order": got == sorted(got, key=lambda i: tuple(int(p) for p in i.split("-"))),
        "raw_duplicates": sum(n - 1 for n in raw.values() if n > 1),  # sent twice by the server, dropped by the client
        "reconnects": client.state.reconnects,
        # the longest silence between two events (published every 1/rate s): the outage as this client saw it
        "max_gap_s": round(max((b - a for a, b in zip(client.arrivals, client.arrivals[1:])), default=0.0), 2),
    }


def kill(proc: Any) -> Callable[[], None]:
    """An action that SIGKILLs the child's current process."""
    def action() -> None:
        os.kill(proc().pid, signal.SIGKILL)
    return action


def run_in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread
