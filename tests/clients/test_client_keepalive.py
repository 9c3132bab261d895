"""Keep-alive against a gateway with a short idle timeout (API Gateway: 10 min):
the client's ping keeps the connection open; without it the gateway closes the
idle connection and the client reconnects and resumes without losing events."""

import asyncio

import pytest

from rtstream_client import RealtimeClient, collect
from system_thread import SystemThread, fresh_entity

IDLE_TIMEOUT = 2


@pytest.fixture(scope="module")
def idle_system(tmp_path_factory):
    system = SystemThread(
        log_dir=tmp_path_factory.mktemp("system-logs"),
        with_sse=False,
        gateway_options={"idle_timeout": IDLE_TIMEOUT},
    ).start()
    try:
        yield system
    finally:
        system.stop()


async def test_ping_keeps_the_connection_and_idle_one_is_resumed(idle_system):
    entity = fresh_entity()
    common = dict(ws_url=idle_system.ws_url, token=idle_system.token(entity), transport="ws", backoff_base=0.1, backoff_cap=0.3)
    pinging = RealtimeClient(ping_interval=IDLE_TIMEOUT / 4, **common)
    silent = RealtimeClient(ping_interval=600, **common)
    await pinging.start()
    await silent.start()
    try:
        for client in (pinging, silent):
            await client.wait_for(lambda s: s.status == "open", timeout=10)
        first = await asyncio.to_thread(idle_system.transaction, entity, 1)
        for client in (pinging, silent):
            assert [e.id for e in await collect(client, 1, timeout=10)] == [first]
        await asyncio.sleep(IDLE_TIMEOUT * 1.75)
        assert pinging.state.reconnects == 0 and pinging.state.status == "open"
        # the silent one was closed as idle and came back on its own
        await silent.wait_for(lambda s: s.reconnects >= 1 and s.status == "open", timeout=10)
        later = await asyncio.to_thread(idle_system.transaction, entity, 2)
        for client in (pinging, silent):
            assert [e.id for e in await collect(client, 1, timeout=10)] == [later]
    finally:
        await pinging.close()
        await silent.close()
