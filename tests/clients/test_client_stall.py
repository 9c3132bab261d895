"""A push path that stalls under an open WebSocket (the fan-out worker stopped):
the pong's cursor shows the client it is behind; it falls back to SSE (or, on
the WebSocket alone, resumes once the worker is back) and gets every event once."""

import asyncio

import pytest

from rtstream_client import RealtimeClient, collect
from system_thread import fresh_entity

FAST = dict(backoff_base=0.1, backoff_cap=0.5, open_timeout=2.0, ping_interval=0.4, stall_after=1.0, stall_pongs=2)


async def publish(system, entity, first, last):
    return [await asyncio.to_thread(system.transaction, entity, n) for n in range(first, last + 1)]


async def test_pong_reports_the_newest_id(local_system):
    import json

    import websockets

    entity = fresh_entity()
    async with websockets.connect(f"{local_system.ws_url}?token={local_system.token(entity)}") as ws:
        await ws.send('{"type":"ping"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["cursor"] == "0-0"
        ids = await publish(local_system, entity, 1, 2)
        await ws.send('{"type":"ping"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["cursor"] == ids[-1]


async def test_stalled_websocket_falls_back_to_sse_and_loses_nothing(local_system):
    entity = fresh_entity()
    client = RealtimeClient(ws_url=local_system.ws_url, sse_url=local_system.sse_url, token=local_system.token(entity), **FAST)
    await client.start()
    try:
        await client.wait_for(lambda s: s.status == "open", timeout=10)
        assert client.state.transport == "ws"
        first = await publish(local_system, entity, 1, 1)
        assert [e.id for e in await collect(client, 1, timeout=10)] == first

        await asyncio.to_thread(local_system.stop_worker)
        try:
            missed = await publish(local_system, entity, 2, 4)
            items = await collect(client, 3, timeout=15)
            assert [e.id for e in items] == missed
            assert {e.transport for e in items} == {"sse"}
            assert client.state.transport == "sse"
        finally:
            await asyncio.to_thread(local_system.start_worker)
        later = await publish(local_system, entity, 5, 5)
        assert [e.id for e in await collect(client, 1, timeout=10)] == later
        with pytest.raises(TimeoutError):  # nothing twice
            await client.next(timeout=0.5)
    finally:
        await client.close()


async def test_stalled_websocket_alone_resumes_when_the_worker_is_back(local_system):
    entity = fresh_entity()
    client = RealtimeClient(ws_url=local_system.ws_url, token=local_system.token(entity), transport="ws", **FAST)
    await client.start()
    try:
        await client.wait_for(lambda s: s.status == "open", timeout=10)
        first = await publish(local_system, entity, 1, 1)
        assert [e.id for e in await collect(client, 1, timeout=10)] == first
        await asyncio.to_thread(local_system.stop_worker)
        try:
            missed = await publish(local_system, entity, 2, 3)
            # behind the pong's cursor: the client gives up on this connection and resumes
            await client.wait_for(lambda s: s.status == "reconnecting", timeout=10)
        finally:
            await asyncio.to_thread(local_system.start_worker)
        items = await collect(client, 2, timeout=20)
        assert [e.id for e in items] == missed and all(e.replayed for e in items)
        with pytest.raises(TimeoutError):
            await client.next(timeout=0.5)
    finally:
        await client.close()
