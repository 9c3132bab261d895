"""``/healthz`` reflects Redis reachability and the shared reader's progress
(contract: ``rtstream_sse.health``): a real SSE server, a real redis-server of the
test's own that is killed, paused and restarted."""

from __future__ import annotations

import time

import httpx
import pytest
import redis
from helpers import RestartableRedis  # noqa: E402
from .support import start_server

GRACE = 1.0
BLOCK_MS = 500


@pytest.fixture
def own_redis():
    server = RestartableRedis(appendonly=False)
    if server.binary is None:
        pytest.fail("this test needs redis-server on PATH")
    server.start()
    yield server
    server.stop()


def _health(url: str) -> tuple[int, dict]:
    response = httpx.get(url + "/healthz", timeout=2)
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    return response.status_code, response.json()


def _until(url: str, status: int, timeout: float) -> tuple[float, dict]:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        code, body = _health(url)
        if code == status:
            return time.monotonic() - started, body
        time.sleep(0.05)
    raise AssertionError(f"/healthz not {status} within {timeout}s: {code} {body}")


def test_healthz_is_503_while_redis_is_gone_and_200_once_it_is_back(own_redis, sse_secret, tmp_path):
    server = start_server(own_redis.url, sse_secret, tmp_path, RTSTREAM_SSE_HEALTH_GRACE_SECONDS=str(GRACE),
                          RTSTREAM_SSE_READ_BLOCK_MS=str(BLOCK_MS))
    try:
        code, body = _health(server.url)
        assert code == 200 and body["status"] == "ok" and body["redis"] == "connected", body
        assert body["lastReadAgoSeconds"] <= BLOCK_MS / 1000 + 0.5  # XREAD BLOCK returns at least this often

        own_redis.kill()
        after, body = _until(server.url, 503, 10)
        assert after >= GRACE - BLOCK_MS / 1000 - 0.1, "a blip shorter than the grace period must not fail the task"
        assert body["status"] == "unhealthy" and body["code"] == "redis_unavailable" and body["redis"] == "reconnecting", body
        assert body["failingSeconds"] > 0 and "last error" in body["message"], body

        own_redis.start()
        _, body = _until(server.url, 200, 10)  # the reader's backoff is capped at 5 s
        assert body["status"] == "ok" and body["redis"] == "connected", body
    finally:
        server.stop()


def test_healthz_is_503_when_the_reader_stops_progressing(own_redis, sse_secret, tmp_path):
    """Redis paused (CLIENT PAUSE): the connection is up but no XREAD returns."""
    server = start_server(own_redis.url, sse_secret, tmp_path, RTSTREAM_SSE_HEALTH_GRACE_SECONDS=str(GRACE),
                          RTSTREAM_SSE_READ_BLOCK_MS=str(BLOCK_MS))
    admin = redis.Redis.from_url(own_redis.url)
    try:
        assert _health(server.url)[0] == 200
        admin.execute_command("CLIENT", "PAUSE", 4000, "ALL")
        _, body = _until(server.url, 503, 8)
        assert body["code"] == "reader_stalled" and body["redis"] == "connected", body
        assert body["lastReadAgoSeconds"] > BLOCK_MS / 1000 + GRACE
        admin.execute_command("CLIENT", "UNPAUSE")
        _until(server.url, 200, 8)
    finally:
        admin.close()
        server.stop()


def test_health_rules_at_their_boundaries():
    """The decision itself (rtstream_sse.health.health) over a reader's state."""
    from types import SimpleNamespace

    from rtstream_sse.health import health

    def reader(connected: bool, progress_at: float, failing_since: float | None = None, last_error: str | None = None):
        return SimpleNamespace(connected=connected, progress_at=progress_at, failing_since=failing_since, last_error=last_error)

    def check(r, now, draining=False):
        return health(r, draining=draining, connections=3, block_seconds=5.0, grace_seconds=10.0, now=now)

    assert check(reader(True, 100.0), 104.0) == (200, {"status": "ok", "redis": "connected", "connections": 3, "lastReadAgoSeconds": 4.0})
    # a short blip: still serving (the reader resumes from its last ids)
    code, body = check(reader(False, 100.0, 101.0, "ConnectionError: refused"), 110.0)
    assert code == 200 and body["redis"] == "reconnecting"
    code, body = check(reader(False, 100.0, 101.0, "ConnectionError: refused"), 110.5)
    assert code == 503 and body["code"] == "redis_unavailable" and body["failingSeconds"] == 9.5
    assert "ConnectionError: refused" in body["message"]
    # never connected since start: unhealthy after the grace too
    assert check(reader(False, 0.0), 10.5)[1]["code"] == "redis_unavailable"
    # connected, but XREAD BLOCK 5 s has not returned for 15 s
    assert check(reader(True, 100.0), 115.0)[0] == 200
    code, body = check(reader(True, 100.0), 115.5)
    assert code == 503 and body["code"] == "reader_stalled"
    code, body = check(reader(True, 100.0), 101.0, draining=True)
    assert code == 503 and body["status"] == "draining" and body["code"] == "draining"
