"""Last-Event-ID replay: header and query, an exact seam while events keep
coming, replay_gap, and the Redis reader resuming after a dropped connection."""

from __future__ import annotations

import asyncio
import threading
import time

import redis

from rtstream import keys
from rtstream.settings import Settings

from .conftest import publish


async def test_replay_from_header(sse_server, event_log, entity, token_for, open_stream):
    events = await asyncio.to_thread(publish, event_log, entity, 5)
    stream = await open_stream(sse_server.url, token_for(entity), headers={"Last-Event-ID": events[1].id})
    assert (await stream.next_frame()).retry == 3000
    replayed = await stream.events(3)
    assert [f.id for f in replayed] == [e.id for e in events[2:]]
    assert replayed[0].json() == events[2].data and replayed[0].event == "transactions.new"
    [live] = await asyncio.to_thread(publish, event_log, entity, 1)
    assert (await stream.next_event()).id == live.id
    await stream.no_event(0.3)


async def test_replay_from_query_and_header_wins(sse_server, event_log, entity, token_for, open_stream):
    events = await asyncio.to_thread(publish, event_log, entity, 4)
    by_query = await open_stream(sse_server.url, token_for(entity), params={"lastEventId": events[2].id})
    assert [f.id for f in await by_query.events(1)] == [events[3].id]
    # EventSource keeps the page's query and sends the newer cursor in the header
    both = await open_stream(sse_server.url, token_for(entity), params={"lastEventId": events[0].id}, headers={"Last-Event-ID": events[2].id})
    assert [f.id for f in await both.events(1)] == [events[3].id]
    await both.no_event(0.3)


async def test_replay_applies_the_filters(sse_server, event_log, entity, token_for, open_stream):
    first = await asyncio.to_thread(publish, event_log, entity, 1)
    tx = await asyncio.to_thread(publish, event_log, entity, 2, "transactions.new")
    bal = await asyncio.to_thread(publish, event_log, entity, 1, "balance.updated")
    stream = await open_stream(sse_server.url, token_for(entity), params={"topics": "balance.updated"}, headers={"Last-Event-ID": first[0].id})
    assert [f.id for f in await stream.events(1)] == [bal[0].id]
    await stream.no_event(0.3)
    assert tx  # published, filtered out


async def test_seam_has_no_gap_and_no_duplicate_under_load(sse_server, event_log, entity, token_for, open_stream):
    """Events keep being published while clients reconnect from a cursor: each
    client gets exactly the events after its cursor, once each, in order."""
    seed = await asyncio.to_thread(publish, event_log, entity, 3)
    stop = threading.Event()
    published: list = []

    def publisher():
        while not stop.is_set() and len(published) < 400:
            published.extend(publish(event_log, entity, 1))
            time.sleep(0.002)

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        streams = []
        cursors = []
        for i in range(6):
            await asyncio.sleep(0.03)
            cursor = (seed + published)[len(seed) + len(published) - 2 - i].id if published else seed[-1].id
            cursors.append(cursor)
            streams.append(await open_stream(sse_server.url, token_for(entity), headers={"Last-Event-ID": cursor}))
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)
    everything = [e.id for e in seed + published]
    for cursor, stream in zip(cursors, streams):
        expected = everything[everything.index(cursor) + 1 :]
        got = [f.id for f in await stream.events(len(expected), timeout=10)]
        assert got == expected, {
            "cursor": cursor,
            "duplicates": sorted({i for i in got if got.count(i) > 1}),
            "missing": [i for i in expected if i not in got],
            "extra": [i for i in got if i not in expected],
            "first": got[:12],
            "expected_first": expected[:12],
        }
        await stream.no_event(0.2)


async def test_replay_gap_is_reported_then_live_continues(sse_server, event_log, entity, token_for, open_stream, redis_url):
    old = await asyncio.to_thread(publish, event_log, entity, 2)
    # the entity's history expired (TTL): the cursor points into lost history
    r = redis.Redis.from_url(redis_url)
    r.delete(keys.history(entity, Settings()).name)
    r.close()
    stream = await open_stream(sse_server.url, token_for(entity), headers={"Last-Event-ID": old[0].id})
    gap = await stream.next_event()
    assert gap.event == "error" and gap.id is None
    assert gap.json()["type"] == "error" and gap.json()["code"] == "replay_gap" and gap.json()["message"]
    [live] = await asyncio.to_thread(publish, event_log, entity, 1)
    assert (await stream.next_event()).id == live.id


async def test_reader_resumes_after_redis_drops_its_connections(sse_server, event_log, entity, token_for, open_stream, redis_url):
    import httpx

    def reconnects():
        text = httpx.get(sse_server.url + "/metrics").text
        return float(next(l for l in text.splitlines() if l.startswith("realtime_streaming_sse_redis_reconnects_total ")).split()[1])

    before = reconnects()
    stream = await open_stream(sse_server.url, token_for(entity))
    await stream.next_frame()
    r = redis.Redis.from_url(redis_url)
    try:
        # kill every other client connection (the server's reader among them), then publish at once
        r.client_kill_filter(_type="normal", skipme=True)
        events = await asyncio.to_thread(publish, event_log, entity, 3)
    finally:
        r.close()
    got = await stream.events(3, timeout=10)
    assert [f.id for f in got] == [e.id for e in events]
    assert reconnects() > before
