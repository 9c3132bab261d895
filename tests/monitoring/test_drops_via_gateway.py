"""Abnormal drops vs normal closes, as the emulator reports them to the real
$disconnect handler: a client closing is a close, the gateway's idle timeout is
a drop (what realtime_streaming.connection_drop_high alarms on)."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets

from rtstream import metrics as names
from rtstream.auth import issue_dev_token
from helpers import emf_documents, handler_env  # noqa: E402


@pytest.fixture
async def gateway(tables, moto_endpoint, redis_url, redis_client, jwt_secret):
    from rtstream_gateway.server import GatewayEmulator

    gw = GatewayEmulator(
        env=handler_env(tables, moto_endpoint=moto_endpoint, redis_url=redis_url, jwt_secret=jwt_secret),
        resources=tables,
        idle_timeout=0.6,
    )
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()



def emitted(stdout: str, metric: str) -> float:
    return sum(sum(doc[metric]) for doc in emf_documents(stdout) if metric in doc)


async def wait_for_output(capfd, metric: str, timeout: float = 10.0) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += capfd.readouterr().out
        if emitted(seen, metric):
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"{metric} not emitted")


async def test_client_close_is_not_a_drop_idle_timeout_is(gateway, jwt_secret, capfd):
    token = issue_dev_token(jwt_secret, user_id="user-1", entity_id="entity-1")
    capfd.readouterr()
    async with websockets.connect(f"{gateway.ws_url}?token={token}", ping_interval=None) as ws:
        await ws.send('{"type":"ping"}')
        await asyncio.wait_for(ws.recv(), 10)
    out = await wait_for_output(capfd, names.CONNECTIONS_CLOSED)
    assert emitted(out, names.CONNECTIONS_CLOSED) == 1 and emitted(out, names.CONNECTIONS_DROPPED) == 0

    ws = await websockets.connect(f"{gateway.ws_url}?token={token}", ping_interval=None)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)  # silent until the gateway gives up on it
    assert closed.value.rcvd.code == 1001
    out = await wait_for_output(capfd, names.CONNECTIONS_DROPPED)
    assert emitted(out, names.CONNECTIONS_DROPPED) == 1 and emitted(out, names.CONNECTIONS_CLOSED) == 1
