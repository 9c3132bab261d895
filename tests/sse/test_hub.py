"""The hub's write path in-process: backpressure, coalescing, the bounded buffer
and the replay seam. The ASGI ``send`` is a coroutine that blocks while a gate is
closed, like a server whose transport buffer is full."""

from __future__ import annotations

import asyncio

from rtstream.models import Event, Filters, Principal
from rtstream_sse.config import SSEConfig
from rtstream_sse.hub import Client, Hub, delivery_for
from rtstream_sse.metrics import SSEMetrics


class GatedSend:
    def __init__(self):
        self.gate = asyncio.Event()
        self.gate.set()
        self.bodies: list[bytes] = []

    async def __call__(self, message):
        if not self.gate.is_set():
            await self.gate.wait()
        self.bodies.append(message["body"])


def event(i: int, entity: str = "e1", topic: str = "transactions.new", amount: float = 1.0) -> Event:
    return Event(id=f"1000-{i}", entity_id=entity, topic=topic, data={"transactionId": f"t{i}", "amount": amount, "merchant": "m"}, published_at_ms=1)


async def make(hub: Hub, send, topics=("transactions.new",), filters=Filters()):
    client = Client("c1", Principal("u1", "e1"), frozenset(topics), filters, send, expires_at=1e12)
    client.task = asyncio.ensure_future(asyncio.sleep(3600))
    hub.add(client)
    return client


async def test_backlogged_client_gets_one_coalesced_chunk():
    hub = Hub(SSEConfig(max_pending_frames=10), SSEMetrics())
    send = GatedSend()
    client = await make(hub, send)
    hub.go_live(client, b"retry: 1\n\n", None)
    assert send.bodies == [b"retry: 1\n\n"]
    send.gate.clear()
    hub.dispatch("e1", [delivery_for(event(1))])  # blocks: continues in a task
    assert client.inflight is not None
    hub.dispatch("e1", [delivery_for(event(2))])
    hub.dispatch("e1", [delivery_for(event(3))])
    assert len(client.pending) == 2
    send.gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert send.bodies[1] == delivery_for(event(1)).data
    assert send.bodies[2] == delivery_for(event(2)).data + delivery_for(event(3)).data  # one chunk
    assert client.inflight is None and client.pending == [] and hub.metrics.deliveries == 3
    client.task.cancel()


async def test_client_past_the_buffer_limit_is_dropped_and_its_task_cancelled():
    hub = Hub(SSEConfig(max_pending_frames=3), SSEMetrics())
    send = GatedSend()
    client = await make(hub, send)
    hub.go_live(client, b"", None)
    send.gate.clear()
    for i in range(5):
        hub.dispatch("e1", [delivery_for(event(i))])
    assert client.close_reason == "slow_client"
    assert hub.count == 0 and hub.metrics.connections_dropped["slow_client"] == 1
    await asyncio.sleep(0)
    assert client.task.cancelled()


async def test_replaying_client_buffers_and_seam_skips_covered_ids():
    hub = Hub(SSEConfig(), SSEMetrics())
    send = GatedSend()
    client = await make(hub, send)
    hub.dispatch("e1", [delivery_for(event(1)), delivery_for(event(2))])  # while history is read
    assert send.bodies == []
    # the replay covered ids up to 1000-2; the reader still lags and delivers 1000-2 again
    hub.go_live(client, b"R", (1000, 2))
    assert send.bodies == [b"R"]
    hub.dispatch("e1", [delivery_for(event(2)), delivery_for(event(3))])
    assert send.bodies[1] == delivery_for(event(3)).data
    assert client.seam is None  # the reader passed the seam: back to the shared fast path
    client.task.cancel()


async def test_filters_and_entity_routing():
    hub = Hub(SSEConfig(), SSEMetrics())
    send = GatedSend()
    client = await make(hub, send, topics=("transactions.new", "balance.updated"), filters=Filters(min_amount=10))
    hub.go_live(client, b"", None)
    hub.dispatch("e1", [delivery_for(event(1, amount=5)), delivery_for(event(2, amount=-50)), delivery_for(event(3, topic="sync.completed"))])
    hub.dispatch("e2", [delivery_for(event(4, entity="e2", amount=99))])
    assert send.bodies[1:] == [delivery_for(event(2, amount=-50)).data]
    client.task.cancel()



async def test_a_batch_nobody_wants_skips_whole_groups():
    """Clients are grouped by subscription: a presence event among subscribers of
    other topics is selected once per group, not once per client, so every
    connect's presence event costs O(1) here instead of O(clients)."""
    calls: list[str] = []

    class CountingClient(Client):
        __slots__ = ()

        def wants(self, event):
            calls.append(self.connection_id)
            return super().wants(event)

    hub = Hub(SSEConfig(), SSEMetrics())
    send = GatedSend()
    for i in range(50):
        client = CountingClient(f"c{i}", Principal(f"u{i}", "e1"), frozenset({"transactions.new"}), Filters(), send, expires_at=1e12)
        hub.add(client)
        hub.go_live(client, b"", None)
    hub.dispatch("e1", [delivery_for(event(1, topic="presence"))])
    assert len(calls) == 1 and all(body == b"" for body in send.bodies)
    hub.dispatch("e1", [delivery_for(event(2))])
    assert len(calls) == 2  # wanted: selected once for the group, written to all 50
    assert send.bodies.count(delivery_for(event(2)).data) == 50
    assert hub.entity_connections("e1") == 50


async def test_entity_cursor_is_known_without_reading_history_while_it_has_clients():
    """A stream starting in an entity that already has clients takes the newest
    id dispatched (or read) here as its cursor: no Redis round trip per connect."""
    hub = Hub(SSEConfig(), SSEMetrics())
    assert hub.known_cursor("e1") is None
    hub.note_cursor("e1", "1000-9")  # no client of e1 here: nothing to remember
    assert hub.known_cursor("e1") is None
    client = await make(hub, GatedSend(), topics=("balance.updated",))
    hub.note_cursor("e1", None)  # the first stream read history: no events yet
    assert hub.known_cursor("e1") == ""  # known empty: the next streams need no read either
    hub.note_cursor("e1", "1000-5")  # read from history by the first stream
    hub.dispatch("e1", [delivery_for(event(3)), delivery_for(event(7))])  # even events nobody here wants
    assert hub.known_cursor("e1") == "1000-7"
    hub.note_cursor("e1", "1000-6")  # an older read never moves it back
    assert hub.known_cursor("e1") == "1000-7"
    hub.dispatch("e2", [delivery_for(event(99, entity="e2"))])
    assert hub.known_cursor("e2") is None
    hub.drop(client, "test", cancel=True)
    assert hub.known_cursor("e1") is None  # forgotten with the entity's last client
