"""The asyncio client against a real local system: live delivery, reconnect with
resume (exactly the missed events, once), `since` replay, SSE fallback, token
refresh, proactive renewal and `replay_gap`."""

import asyncio

import pytest

from rtstream.models import parse_event_id
from rtstream_client import RealtimeClient, ReplayGap, StreamEvent, collect
from system_thread import fresh_entity
from helpers import free_port  # noqa: E402

FAST = dict(backoff_base=0.1, backoff_cap=0.5, open_timeout=3.0)



async def publish(system, entity, first, last):
    """Publish transactions t{first}..t{last} off the event loop; returns their ids."""
    return [await asyncio.to_thread(system.transaction, entity, n) for n in range(first, last + 1)]


def tx_numbers(items):
    return [item.data["transactionId"] for item in items]


async def open_client(system, entity, **options):
    client = RealtimeClient(ws_url=system.ws_url, sse_url=system.sse_url, token=system.token(entity), **{**FAST, **options})
    await client.start()
    await client.wait_for(lambda s: s.status == "open", timeout=10)
    return client


async def test_websocket_delivers_live_events_in_order(local_system):
    entity = fresh_entity()
    client = await open_client(local_system, entity, transport="ws")
    try:
        ids = await publish(local_system, entity, 1, 5)
        items = await collect(client, 5, timeout=10)
        assert [i.id for i in items] == ids
        assert tx_numbers(items) == ["t1", "t2", "t3", "t4", "t5"]
        assert all(isinstance(i, StreamEvent) and i.transport == "ws" and not i.replayed for i in items)
        assert client.last_event_id == ids[-1]
    finally:
        await client.close()


async def test_websocket_reconnect_resumes_exactly_the_missed_events(local_system):
    entity = fresh_entity()
    client = await open_client(local_system, entity, transport="ws")
    try:
        await publish(local_system, entity, 1, 2)
        assert tx_numbers(await collect(client, 2, timeout=10)) == ["t1", "t2"]

        await asyncio.to_thread(local_system.stop_gateway)
        await client.wait_for(lambda s: s.status == "reconnecting", timeout=10)
        missed = await publish(local_system, entity, 3, 5)
        await asyncio.to_thread(local_system.start_gateway)

        state = await client.wait_for(lambda s: s.status == "open" and s.reconnects >= 1, timeout=15)
        assert state.transport == "ws"
        replayed = await collect(client, 3, timeout=10)
        assert [i.id for i in replayed] == missed
        assert all(i.replayed for i in replayed)
        live = await publish(local_system, entity, 6, 6)
        after = await collect(client, 1, timeout=10)
        assert [i.id for i in after] == live and not after[0].replayed
        with pytest.raises(TimeoutError):  # nothing shown twice
            await client.next(timeout=0.5)
        assert client.state.replayed == 3
    finally:
        await client.close()


async def test_since_replays_exactly_the_events_after_the_cursor(local_system):
    entity = fresh_entity()
    ids = await publish(local_system, entity, 1, 5)
    client = await open_client(local_system, entity, transport="ws", since=ids[1])
    try:
        items = await collect(client, 3, timeout=10)
        assert [i.id for i in items] == ids[2:]
        live = await publish(local_system, entity, 6, 6)
        assert [i.id for i in await collect(client, 1, timeout=10)] == live
        with pytest.raises(TimeoutError):
            await client.next(timeout=0.5)
    finally:
        await client.close()


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_rewind_starts_with_the_last_n_events_then_live_ones(local_system, transport):
    entity = fresh_entity()
    ids = await publish(local_system, entity, 1, 6)
    client = await open_client(local_system, entity, transport=transport, rewind=4)
    try:
        items = await collect(client, 4, timeout=10)
        assert [i.id for i in items] == ids[2:] and tx_numbers(items) == ["t3", "t4", "t5", "t6"]
        live = await publish(local_system, entity, 7, 7)
        assert [i.id for i in await collect(client, 1, timeout=10)] == live
        with pytest.raises(TimeoutError):  # nothing twice
            await client.next(timeout=0.5)
        assert client.last_event_id == live[0]
    finally:
        await client.close()


async def test_falls_back_to_sse_when_the_websocket_is_unreachable(local_system):
    entity = fresh_entity()
    dead_ws = f"ws://127.0.0.1:{free_port()}/dev"  # nothing listens: connection refused
    states = []
    client = RealtimeClient(ws_url=dead_ws, sse_url=local_system.sse_url, token=local_system.token(entity), on_state=states.append, **FAST)
    await client.start()
    try:
        state = await client.wait_for(lambda s: s.status == "open", timeout=10)
        assert state.transport == "sse"
        assert [s.transport for s in states if s.status == "connecting"][:1] == ["ws"]  # it tried the WebSocket first
        ids = await publish(local_system, entity, 1, 3)
        items = await collect(client, 3, timeout=10)
        assert [i.id for i in items] == ids and all(i.transport == "sse" for i in items)
    finally:
        await client.close()


async def test_sse_reconnect_resumes_with_last_event_id(local_system):
    entity = fresh_entity()
    client = await open_client(local_system, entity, transport="sse")
    try:
        await publish(local_system, entity, 1, 1)
        assert tx_numbers(await collect(client, 1, timeout=10)) == ["t1"]
        await asyncio.to_thread(local_system.stop_sse)
        await client.wait_for(lambda s: s.status == "reconnecting", timeout=10)
        missed = await publish(local_system, entity, 2, 4)
        await asyncio.to_thread(local_system.start_sse)
        await client.wait_for(lambda s: s.status == "open" and s.reconnects >= 1, timeout=15)
        items = await collect(client, 3, timeout=10)
        assert [i.id for i in items] == missed and all(i.replayed for i in items)
        with pytest.raises(TimeoutError):
            await client.next(timeout=0.5)
    finally:
        await client.close()


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_replay_gap_is_surfaced(local_system, transport):
    entity = fresh_entity()  # no history at all: a cursor into it is older than what is kept
    client = RealtimeClient(ws_url=local_system.ws_url, sse_url=local_system.sse_url, token=local_system.token(entity), transport=transport, since="1000-0", **FAST)
    await client.start()
    try:
        item = await client.next(timeout=10)
        assert isinstance(item, ReplayGap) and item.since == "1000-0" and item.transport == transport
        # the connection stays live after the gap
        ids = await publish(local_system, entity, 1, 1)
        assert [i.id for i in await collect(client, 1, timeout=10)] == ids
    finally:
        await client.close()


async def test_token_comes_from_the_callback_before_every_connect(local_system):
    entity = fresh_entity()
    calls = []

    async def get_token():
        calls.append(1)
        return local_system.token(entity)

    client = RealtimeClient(ws_url=local_system.ws_url, sse_url=local_system.sse_url, get_token=get_token, transport="ws", renew_after=1.0, **FAST)
    await client.start()
    try:
        await client.wait_for(lambda s: s.status == "open", timeout=10)
        assert len(calls) == 1
        # renew_after: the client reconnects on its own before the connection age limit
        await client.wait_for(lambda s: s.reconnects >= 1 and s.status == "open", timeout=10)
        assert len(calls) >= 2
        ids = await publish(local_system, entity, 1, 2)
        assert [i.id for i in await collect(client, 2, timeout=10)] == ids
    finally:
        await client.close()


async def test_refused_token_is_retried_not_fatal_and_bad_topic_is_fatal(local_system):
    entity = fresh_entity()
    client = RealtimeClient(ws_url=local_system.ws_url, token="not-a-jwt", transport="ws", **FAST)
    await client.start()
    try:
        state = await client.wait_for(lambda s: s.status == "reconnecting" and s.attempt >= 2, timeout=10)
        assert "401" in (state.error or "") or "403" in (state.error or "")
    finally:
        await client.close()

    client = RealtimeClient(ws_url=local_system.ws_url, token=local_system.token(entity), topics=["no.such.topic"], transport="ws", **FAST)
    await client.start()
    try:
        with pytest.raises(Exception) as info:
            await client.next(timeout=10)
        assert getattr(info.value, "code", None) == "unknown_topic"
        assert client.state.status == "closed"
    finally:
        await client.close()


async def test_ids_increase_across_topics(local_system):
    entity = fresh_entity()
    client = await open_client(local_system, entity, transport="ws", topics=["transactions.new", "balance.updated"])
    try:
        await asyncio.to_thread(local_system.transaction, entity, 1)
        await asyncio.to_thread(local_system.publish, entity, "sync.completed", {"source": "plaid", "recordsUpdated": 3})
        await asyncio.to_thread(local_system.publish, entity, "balance.updated", {"accountId": "a1", "newBalance": 10.0, "change": -2.5})
        items = await collect(client, 2, timeout=10)
        assert [i.topic for i in items] == ["transactions.new", "balance.updated"]  # the sync is filtered out
        assert parse_event_id(items[0].id) < parse_event_id(items[1].id)
    finally:
        await client.close()


async def test_returns_to_the_websocket_when_it_comes_back(local_system):
    entity = fresh_entity()
    await asyncio.to_thread(local_system.stop_gateway)
    try:
        client = await open_client(local_system, entity, ws_retry_after=1.0)
        assert client.state.transport == "sse"
        first = await publish(local_system, entity, 1, 1)
        assert [i.id for i in await collect(client, 1, timeout=10)] == first
    finally:
        await asyncio.to_thread(local_system.start_gateway)
    try:
        # the SSE stream stays up while the client probes the WebSocket, then it switches
        await client.wait_for(lambda s: s.status == "open" and s.transport == "ws", timeout=10)
        ids = await publish(local_system, entity, 2, 3)
        items = await collect(client, 2, timeout=10)
        assert [i.id for i in items] == ids and all(i.transport == "ws" for i in items)
        with pytest.raises(TimeoutError):
            await client.next(timeout=0.5)
    finally:
        await client.close()


async def test_sse_client_that_saw_no_event_yet_still_resumes_from_where_it_joined(local_system):
    entity = fresh_entity()
    before = await publish(local_system, entity, 1, 1)  # history exists, but from before this client
    client = await open_client(local_system, entity, transport="sse")
    try:
        await client.wait_for(lambda s: s.last_event_id == before[0], timeout=5)  # the stream's starting cursor
        await asyncio.to_thread(local_system.stop_sse)
        await client.wait_for(lambda s: s.status == "reconnecting", timeout=10)
        missed = await publish(local_system, entity, 2, 3)
        await asyncio.to_thread(local_system.start_sse)
        items = await collect(client, 2, timeout=15)
        assert [i.id for i in items] == missed
        with pytest.raises(TimeoutError):
            await client.next(timeout=0.5)
    finally:
        await client.close()
