"""A real `rtstream dev` system (``rtstream_cli.dev.LocalSystem``) running on its
own event loop in a background thread, so both asyncio tests (each with its own
loop) and synchronous browser tests can use it, and the outage scenarios can
stop and restart its gateway and SSE server on the same ports."""

from __future__ import annotations

import asyncio
import itertools
import threading
from concurrent.futures import Future
from typing import Any

_counter = itertools.count()


class SystemThread:
    def __init__(self, **options: Any):
        self._options = options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-system", daemon=True)
        self.system: Any = None
        self._redis = None

    def start(self, timeout: float = 60.0) -> "SystemThread":
        from rtstream_cli.dev import LocalSystem

        self._thread.start()

        async def boot():
            system = LocalSystem(ws_port=0, sse_port=0, write_state_file=False, **self._options)
            await system.start()
            return system

        self.system = self.call(boot(), timeout)
        return self

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine on the system's loop and wait for its result."""
        future: Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        try:
            if self.system is not None:
                self.call(self.system.stop(), timeout)
        finally:
            if self._redis is not None:
                self._redis.close()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    # ---- outages --------------------------------------------------------------

    def stop_gateway(self) -> None:
        self.call(self.system.stop_gateway())

    def start_gateway(self) -> None:
        self.call(self.system.start_gateway())

    def stop_sse(self) -> None:
        self.call(self.system.stop_sse())

    def start_sse(self) -> None:
        self.call(self.system.start_sse())

    def stop_worker(self) -> None:
        """Stop the fan-out worker: WebSocket connections stay open but receive nothing."""

        if hasattr(self.system, "stop_worker"):  # LocalSystem may grow its own
            return self.call(self.system.stop_worker())

        async def stop():
            if self.system.worker is not None:
                await self.system.worker.stop()
                self.system.worker = None

        self.call(stop())

    def start_worker(self) -> None:
        if hasattr(self.system, "start_worker"):
            return self.call(self.system.start_worker(), timeout=60)

        async def start():
            import sys

            from rtstream_cli.dev import _Child

            if self.system.worker is not None:
                return
            self.system.worker = _Child("worker", [sys.executable, "-m", "rtstream_fanout"], self.system.child_env, self.system.log_dir / "worker.log")
            await self.system.worker.start()
            await self.system._wait_worker_ready()

        self.call(start(), timeout=60)

    # ---- endpoints, tokens, publishing -----------------------------------------

    @property
    def ws_url(self) -> str:
        return self.system.ws_url

    @property
    def sse_url(self) -> str:
        return self.system.sse_url

    @property
    def dashboard_url(self) -> str:
        return self.system.dashboard_url

    def token(self, entity_id: str, user_id: str = "user-1", ttl_seconds: int = 3600) -> str:
        from rtstream.auth import issue_dev_token

        return issue_dev_token(self.system.jwt_secret, user_id=user_id, entity_id=entity_id, ttl_seconds=ttl_seconds)

    def redis(self):
        import redis

        if self._redis is None:
            self._redis = redis.Redis.from_url(self.system.redis_url)
        return self._redis

    def publish(self, entity_id: str, topic: str, data: dict[str, Any], source: str = "tests") -> str:
        from rtstream.adapters.publishing import publish

        return publish(entity_id, topic, data, source=source, client=self.redis(), settings=self.system.settings)

    def transaction(self, entity_id: str, n: int, amount: float = -12.5, merchant: str = "Cafe Test") -> str:
        return self.publish(entity_id, "transactions.new", {"transactionId": f"t{n}", "amount": amount, "merchant": merchant, "category": "Coffee"})


def fresh_entity(prefix: str = "e") -> str:
    """A new entity per test: its history and subscribers are its own."""
    import uuid

    return f"{prefix}-{next(_counter)}-{uuid.uuid4().hex[:6]}"
