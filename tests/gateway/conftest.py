"""Fixtures for the gateway emulator: a small fixture API (tests/gateway/fixture_api)
for the emulator's mechanics, and the project's template for its real handlers."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from rtstream_gateway import GatewayEmulator

FIXTURE_TEMPLATE = Path(__file__).parent / "fixture_api" / "template.yaml"


class Recorder:
    """The events the fixture handler recorded (one JSON line per invocation)."""

    def __init__(self, path: Path):
        self.path = path
        path.write_text("")

    def events(self, route: str | None = None) -> list[dict]:
        lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [e for e in lines if route is None or e["requestContext"]["routeKey"] == route]

    async def wait_for(self, route: str, count: int = 1, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(route)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} {route} event(s), got {len(found)}")
            await asyncio.sleep(0.02)


@pytest.fixture
def recorder(tmp_path) -> Recorder:
    return Recorder(tmp_path / "events.jsonl")


@pytest.fixture
def fixture_gateway(recorder):
    """``async with fixture_gateway(**options) as gw`` -> a running emulator of the fixture API."""

    @asynccontextmanager
    async def make(**options):
        env = {"GATEWAY_TEST_RECORD": str(recorder.path), "FIXTURE_TABLE": "local-fixture-table", **options.pop("env", {})}
        gateway = GatewayEmulator(FIXTURE_TEMPLATE, env=env, **options)
        await gateway.start()
        try:
            yield gateway
        finally:
            await gateway.stop()

    return make
