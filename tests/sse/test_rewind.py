"""GET /events?rewind=N: the last N matching events first (oldest first), then
live ones with no gap and no duplicate at the seam; ignored on resume; bad N is
a coded 400."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from .conftest import publish


async def test_rewind_sends_the_last_n_matching_events_then_live(sse_server, event_log, entity, token_for, open_stream):
    txs = await asyncio.to_thread(publish, event_log, entity, 6, "transactions.new")
    await asyncio.to_thread(publish, event_log, entity, 2, "balance.updated")
    stream = await open_stream(sse_server.url, token_for(entity), params={"topics": "transactions.new", "rewind": "4"})
    assert (await stream.next_frame()).retry == 3000
    rewound = [await stream.next_frame() for _ in range(4)]
    assert [f.id for f in rewound] == [e.id for e in txs[2:]]  # oldest first
    assert all(f.event == "transactions.new" for f in rewound)
    assert rewound[0].json() == txs[2].data  # data: the payload only
    cursor = await stream.next_frame()  # then the seam as the stream's Last-Event-ID
    assert cursor.event == "cursor" and cursor.json()["type"] == "cursor"
    [live] = await asyncio.to_thread(publish, event_log, entity, 1, "transactions.new")
    assert (await stream.next_event()).id == live.id
    await stream.no_event(0.3)


async def test_rewind_applies_filters_and_may_return_fewer(sse_server, event_log, entity, token_for, open_stream):
    small = await asyncio.to_thread(publish, event_log, entity, 3, "transactions.new", 5)
    big = await asyncio.to_thread(publish, event_log, entity, 2, "transactions.new", 500)
    await asyncio.to_thread(publish, event_log, entity, 3, "transactions.new", 1)
    stream = await open_stream(sse_server.url, token_for(entity), params={"minAmount": "100", "rewind": "10"})
    assert [f.id for f in await stream.events(2)] == [e.id for e in big]
    await stream.no_event(0.3)
    assert small


async def test_rewind_is_ignored_when_resuming(sse_server, event_log, entity, token_for, open_stream):
    events = await asyncio.to_thread(publish, event_log, entity, 5)
    stream = await open_stream(sse_server.url, token_for(entity), params={"rewind": "5"}, headers={"Last-Event-ID": events[3].id})
    assert [f.id for f in await stream.events(1)] == [events[4].id]  # the replay, not the rewind
    await stream.no_event(0.3)


@pytest.mark.parametrize("value", ["0", "101", "-1", "abc", "2.5", "1e2", ""])
async def test_rewind_out_of_range_is_a_coded_400(sse_server, entity, token_for, value):
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.get(sse_server.url + "/events", params={"rewind": value}, headers={"authorization": f"Bearer {token_for(entity)}"})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_message" and "rewind" in r.json()["message"]


async def test_rewind_seam_has_no_gap_and_no_duplicate_under_concurrent_publishing(sse_server, event_log, entity, token_for, open_stream):
    """Clients open with rewind while a publisher keeps going: each gets exactly
    the N events before its seam and every event after it, once each, in order."""
    seed = await asyncio.to_thread(publish, event_log, entity, 20)
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
        for _ in range(6):
            await asyncio.sleep(0.03)
            streams.append(await open_stream(sse_server.url, token_for(entity), params={"rewind": "7"}))
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)
    everything = [e.id for e in seed + published]
    assert len(published) > 20
    for stream in streams:
        frames = []
        while True:  # up to the cursor frame (the seam), rewound events first
            frame = await stream.next_frame(timeout=10)
            if frame.event == "cursor":
                seam = frame.id
                break
            if frame.data is not None:
                frames.append(frame.id)
        position = everything.index(seam)
        assert frames == everything[position - 6 : position + 1], {"seam": seam, "rewound": frames}
        expected_live = everything[position + 1 :]
        got = [f.id for f in await stream.events(len(expected_live), timeout=10)]
        assert got == expected_live, {
            "seam": seam,
            "duplicates": sorted({i for i in got if got.count(i) > 1}),
            "missing": [i for i in expected_live if i not in got],
        }
        await stream.no_event(0.2)
