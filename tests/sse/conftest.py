from __future__ import annotations

import contextlib
import uuid

import httpx
import pytest
import redis

from rtstream.adapters.redis_eventlog import RedisEventLog
from rtstream.auth import issue_dev_token
from rtstream.settings import Settings

from .support import SSEStream, start_server


@pytest.fixture(scope="session")
def sse_secret():
    return "sse-test-secret-0123456789abcdef-0123456789"


@pytest.fixture(scope="session")
def sse_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("sse-logs")


@pytest.fixture(scope="session")
def sse_server(redis_url, sse_secret, sse_logs):
    """One shared server: short heartbeat, small per-user limit."""
    server = start_server(redis_url, sse_secret, sse_logs, RTSTREAM_SSE_HEARTBEAT_SECONDS="0.3", RTSTREAM_MAX_CONNECTIONS_PER_USER="3")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def event_log(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield RedisEventLog(client, Settings())
    client.close()


@pytest.fixture
def entity():
    return f"ent-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def token_for(sse_secret):
    def make(entity_id: str, user_id: str | None = None, **kw) -> str:
        return issue_dev_token(sse_secret, user_id=user_id or f"u-{uuid.uuid4().hex[:8]}", entity_id=entity_id, **kw)

    return make


@pytest.fixture
async def open_stream():
    """open_stream(base_url, token=..., params=..., headers=...) -> SSEStream (200 asserted)."""
    stack = contextlib.AsyncExitStack()
    client = await stack.enter_async_context(httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)))

    async def open_(base_url: str, token: str | None = None, params: dict | None = None, headers: dict | None = None, expect: int = 200):
        headers = dict(headers or {})
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        response = await stack.enter_async_context(client.stream("GET", base_url + "/events", params=params, headers=headers))
        if expect is not None:
            assert response.status_code == expect, (response.status_code, await response.aread())
        return SSEStream(response)

    yield open_
    await stack.aclose()


def publish(event_log, entity_id, n=1, topic="transactions.new", amount=10.0, source="data_pool"):
    out = []
    for i in range(n):
        if topic == "transactions.new":
            data = {"transactionId": f"t{i}-{uuid.uuid4().hex[:6]}", "amount": amount, "merchant": "Cafe"}
        elif topic == "balance.updated":
            data = {"accountId": "a1", "newBalance": 100.0, "change": amount}
        elif topic == "sync.completed":
            data = {"source": "bank", "recordsUpdated": 3}
        else:
            data = {"agentId": "ag1", "action": "categorize", "result": {"ok": True}}
        out.append(event_log.append(entity_id, topic, data, source))
    return out
