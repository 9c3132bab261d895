"""GET /events against a real uvicorn subprocess and a real Redis: delivery,
frames, filters, entity isolation, heartbeat, metrics."""

from __future__ import annotations

import asyncio

import httpx

from .conftest import publish


async def test_event_frames_carry_id_topic_and_the_payload_only(sse_server, event_log, entity, token_for, open_stream):
    stream = await open_stream(sse_server.url, token_for(entity))
    first = await stream.next_frame()
    assert first.retry == 3000 and first.data is None
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    published = await asyncio.to_thread(publish, event_log, entity, 3)
    frames = await stream.events(3)
    for event, frame in zip(published, frames):
        assert frame.id == event.id
        assert frame.event == "transactions.new"
        # the contract: data: is JSON.stringify(event.data), not the WebSocket envelope
        assert frame.json() == event.data
        assert "type" not in frame.json() and "source" not in frame.json()


async def test_access_token_query_works_like_the_header(sse_server, event_log, entity, token_for, open_stream):
    stream = await open_stream(sse_server.url, params={"access_token": token_for(entity)})
    await stream.next_frame()
    [event] = await asyncio.to_thread(publish, event_log, entity, 1)
    assert (await stream.next_event()).id == event.id


async def test_fresh_client_gets_the_entity_cursor_as_a_named_cursor_event(sse_server, event_log, entity, token_for, open_stream):
    [last] = await asyncio.to_thread(publish, event_log, entity, 1)
    stream = await open_stream(sse_server.url, token_for(entity))
    assert (await stream.next_frame()).retry == 3000
    cursor = await stream.next_frame()
    # id: sets Last-Event-ID; event: cursor + data: EventSource code sees where it starts
    assert cursor.id == last.id and cursor.event == "cursor"
    assert cursor.json() == {"type": "cursor", "id": last.id}
    await stream.no_event(0.3)  # the past is not replayed without a cursor


async def test_the_cursor_frame_is_understood_by_the_python_client_parser(sse_server, event_log, entity, token_for, open_stream):
    from rtstream_client.logic import SseDecoder, frame_from_sse

    [last] = await asyncio.to_thread(publish, event_log, entity, 1)
    stream = await open_stream(sse_server.url, token_for(entity))
    await stream.next_frame()  # retry
    raw = (await stream.next_frame()).__dict__
    lines = [f"id: {raw['id']}", f"event: {raw['event']}", f"data: {raw['data']}", ""]
    decoder = SseDecoder()
    [message] = [m for m in (decoder.feed(line) for line in lines) if m]
    assert frame_from_sse(message) == {"type": "cursor", "id": last.id}




async def test_topic_and_filter_query(sse_server, event_log, entity, token_for, open_stream):
    token = token_for(entity)
    only_balance = await open_stream(sse_server.url, token, params={"topics": "balance.updated"})
    big = await open_stream(sse_server.url, token, params={"topics": "*", "minAmount": "100"})
    typed = await open_stream(sse_server.url, token_for(entity), params={"types": "sync.completed,balance.updated", "sources": "bank"})
    await asyncio.sleep(0.2)

    def send():
        return {
            "small_tx": publish(event_log, entity, 1, "transactions.new", amount=5)[0],
            "big_tx": publish(event_log, entity, 1, "transactions.new", amount=-250)[0],
            "balance_small": publish(event_log, entity, 1, "balance.updated", amount=3)[0],
            "sync_bank": publish(event_log, entity, 1, "sync.completed", source="bank")[0],
            "balance_bank": publish(event_log, entity, 1, "balance.updated", amount=500, source="bank")[0],
        }

    ev = await asyncio.to_thread(send)
    assert [f.id for f in await only_balance.events(2)] == [ev["balance_small"].id, ev["balance_bank"].id]
    # minAmount keeps |amount| or |change| >= N and passes events that carry neither
    assert [f.id for f in await big.events(3)] == [ev["big_tx"].id, ev["sync_bank"].id, ev["balance_bank"].id]
    assert [f.id for f in await typed.events(2)] == [ev["sync_bank"].id, ev["balance_bank"].id]
    for stream in (only_balance, big, typed):
        await stream.no_event(0.3)


async def test_presence_only_by_name_and_without_id(sse_server, event_log, entity, token_for, open_stream):
    star = await open_stream(sse_server.url, token_for(entity))
    named = await open_stream(sse_server.url, token_for(entity), params={"topics": "presence,transactions.new"})
    await asyncio.sleep(0.2)
    data = {"userId": "someone", "state": "online", "connections": 1, "transports": ["websocket"]}
    await asyncio.to_thread(event_log.append, entity, "presence", data, "rtstream", record_history=False)
    [tx] = await asyncio.to_thread(publish, event_log, entity, 1)
    frame = await named.next_event()
    while frame.event == "presence" and frame.json()["userId"] != "someone":
        frame = await named.next_event()  # the streams' own joins (applied off the connect path, so possibly after it)
    assert frame.event == "presence" and frame.json() == data
    assert frame.id is None  # not a replay cursor: must not become Last-Event-ID
    assert (await named.next_event()).id == tx.id
    assert (await star.next_event()).id == tx.id  # '*' does not carry presence


async def test_entity_comes_from_the_token_only(sse_server, event_log, entity, token_for, open_stream):
    other = entity + "-other"
    # a client of `other` trying to name `entity` in the query still sees only `other`
    stream = await open_stream(sse_server.url, token_for(other), params={"entity": entity, "entityId": entity})
    await stream.next_frame()
    await asyncio.to_thread(publish, event_log, entity, 2)
    [mine] = await asyncio.to_thread(publish, event_log, other, 1)
    frame = await stream.next_event()
    assert frame.id == mine.id and frame.json() == mine.data
    await stream.no_event(0.3)


async def test_heartbeat_comments(sse_server, entity, token_for, open_stream):
    stream = await open_stream(sse_server.url, token_for(entity))
    beats = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    while beats < 2:
        frame = await stream.next_frame(timeout=2)
        if "heartbeat" in frame.comments:
            beats += 1
    # configured at 0.3 s: two beats well within 1.5 s
    assert loop.time() - start < 1.5


async def test_healthz_and_metrics(sse_server, event_log, entity, token_for, open_stream):
    async with httpx.AsyncClient() as http:
        health = await http.get(sse_server.url + "/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["redis"] == "connected"
        before = (await http.get(sse_server.url + "/metrics")).text
        stream = await open_stream(sse_server.url, token_for(entity))
        await stream.next_frame()
        await asyncio.to_thread(publish, event_log, entity, 2)
        await stream.events(2)
        after = await http.get(sse_server.url + "/metrics")
    assert after.headers["content-type"].startswith("text/plain")

    def value(text, name):
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} missing")

    assert value(after.text, "realtime_streaming_active_connections") >= 1
    assert value(after.text, "realtime_streaming_message_latency_ms_count") >= value(before, "realtime_streaming_message_latency_ms_count") + 2
    assert value(after.text, "realtime_streaming_deliveries_total") >= value(before, "realtime_streaming_deliveries_total") + 2
    assert "# TYPE realtime_streaming_message_latency_ms histogram" in after.text


async def test_one_redis_reader_shared_by_all_clients(sse_server, redis_url, event_log, entity, token_for, open_stream):
    import redis.asyncio

    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        clients_before = await r.client_list()
        streams = [await open_stream(sse_server.url, token_for(entity)) for _ in range(8)]
        [event] = await asyncio.to_thread(publish, event_log, entity, 1)
        for s in streams:
            assert (await s.next_event()).id == event.id
        blocked = [c for c in await r.client_list() if c.get("cmd") in ("xread", "xread|")]
        assert len(blocked) <= 1 + sum(1 for c in clients_before if c.get("cmd") == "xread")
    finally:
        await r.aclose()
