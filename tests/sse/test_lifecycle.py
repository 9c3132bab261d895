"""Slow clients, SIGTERM, presence, no dev routes, and the connection limit
shared with the WebSocket side through the DynamoDB registry."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time

import boto3
import httpx
import pytest

from rtstream.adapters.dynamodb import DynamoDBRegistry
from rtstream.models import Connection, Principal

from .conftest import publish
from .support import free_port, start_server


def metric(url: str, name: str, **labels: str) -> float:
    """The first sample of ``name`` carrying ``labels`` (in any order), else 0."""
    text = httpx.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_until(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture
def small_buffer_server(redis_url, sse_secret, sse_logs):
    server = start_server(redis_url, sse_secret, sse_logs, RTSTREAM_SSE_MAX_PENDING_FRAMES="8", RTSTREAM_SSE_MAX_PENDING_BYTES="200000")
    yield server
    server.stop()


async def test_slow_client_is_closed_and_others_keep_flowing(small_buffer_server, event_log, entity, token_for, open_stream):
    server = small_buffer_server
    healthy = await open_stream(server.url, token_for(entity), params={"topics": "sync.completed"})
    await healthy.next_frame()
    # A client that reads its headers, then never reads again (tiny receive window).
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET /events?topics=transactions.new HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token_for(entity)}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 200 " in head.split(b"\r\n", 1)[0]
    assert wait_until(lambda: metric(server.url, "realtime_streaming_active_connections") == 2)

    big = "x" * 16000

    def flood():
        for _ in range(60):  # up to ~60 MB, stops as soon as the server gives up on the client
            for i in range(50):
                event_log.append(entity, "transactions.new", {"transactionId": f"t{i}", "amount": 1.0, "merchant": big}, "data_pool")
            if metric(server.url, "realtime_streaming_connections_dropped_total", transport="sse", reason="slow_client") >= 1:
                return True
        return False

    assert await asyncio.to_thread(flood), "the server never closed the client that does not read"
    assert wait_until(lambda: metric(server.url, "realtime_streaming_active_connections") == 1)
    # memory stayed bounded and the server still serves everyone else promptly
    [sync] = await asyncio.to_thread(publish, event_log, entity, 1, "sync.completed")
    assert (await healthy.next_event()).id == sync.id
    # once the slow client reads, it gets what was buffered and then the end of the
    # stream without the terminating chunk: EventSource reconnects with Last-Event-ID
    sock.settimeout(10)
    tail = b""
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        tail += chunk
    sock.close()
    assert not tail.endswith(b"0\r\n\r\n")


async def test_sigterm_tells_clients_to_reconnect_and_replay_fills_the_gap(redis_url, sse_secret, sse_logs, event_log, entity, token_for, open_stream):
    port = free_port()
    server = start_server(redis_url, sse_secret, sse_logs, port=port)
    try:
        token = token_for(entity)
        streams = [await open_stream(server.url, token) for _ in range(3)]
        [first] = await asyncio.to_thread(publish, event_log, entity, 1)
        for s in streams:
            assert (await s.next_event()).id == first.id
        server.sigterm()
        for s in streams:
            hint = await s.next_frame(timeout=5)
            assert any("shutting down" in c for c in hint.comments) and 0 < hint.retry <= 3000
            assert await s.next_frame(timeout=5) is None  # the stream ended
        # uvicorn re-raises the captured SIGTERM after a clean shutdown
        assert await asyncio.to_thread(server.wait, 10) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    # published while no server runs
    missed = await asyncio.to_thread(publish, event_log, entity, 2)
    server = start_server(redis_url, sse_secret, sse_logs, port=port)
    try:
        again = await open_stream(server.url, token, headers={"Last-Event-ID": first.id})
        assert [f.id for f in await again.events(2)] == [e.id for e in missed]
        await again.no_event(0.3)
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


async def test_presence_lists_sse_users_of_the_callers_entity(sse_server, entity, token_for, open_stream):
    async with httpx.AsyncClient() as http:
        assert (await http.get(sse_server.url + "/presence")).status_code == 401
        stream = await open_stream(sse_server.url, token_for(entity, user_id="pres-user"))
        await stream.next_frame()
        await open_stream(sse_server.url, token_for(entity + "-x", user_id="elsewhere"))
        r = await http.get(sse_server.url + "/presence", headers={"authorization": f"Bearer {token_for(entity, user_id='asker')}"})
        assert r.status_code == 200
        assert r.json() == {"type": "presence", "users": [{"userId": "pres-user", "connections": 1, "transports": ["sse"]}]}
        await stream.response.aclose()

        async def gone():
            r = await http.get(sse_server.url + "/presence", headers={"authorization": f"Bearer {token_for(entity)}"})
            return r.json()["users"] == []

        deadline = time.monotonic() + 5
        while not await gone():
            assert time.monotonic() < deadline, "the closed stream stayed in presence"
            await asyncio.sleep(0.05)


async def test_the_production_server_serves_no_dev_routes(sse_server):
    """The dashboard, its dev token and metrics federation are `rtstream dev`'s
    (rtstream_cli.dev_sse); the container's entry point answers a coded 404."""
    async with httpx.AsyncClient() as http:
        for path in ("/", "/static/rtstream.js", "/static/dashboard.html", "/dashboard/config"):
            response = await http.get(sse_server.url + path)
            assert response.status_code == 404 and response.json()["code"] == "not_found", path
        metrics = (await http.get(sse_server.url + "/metrics")).text
    assert "realtime_streaming_federated_up" not in metrics and 'component="' not in metrics


async def test_limit_is_shared_with_websocket_connections_in_the_registry(redis_url, sse_secret, sse_logs, moto_endpoint, tables, entity, token_for, open_stream):
    registry = DynamoDBRegistry(
        boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1"),
        connections_table=tables["ConnectionsTable"],
        subscriptions_table=tables["SubscriptionsTable"],
    )
    user = "shared-user"
    now = int(time.time())
    for i in range(2):  # two WebSocket connections already open
        registry.add_connection(Connection(f"ws-{i}", Principal(user, entity), "websocket", now * 1000, "", now + 3600))
    server = start_server(
        redis_url,
        sse_secret,
        sse_logs,
        CONNECTIONS_TABLE=tables["ConnectionsTable"],
        SUBSCRIPTIONS_TABLE=tables["SubscriptionsTable"],
        AWS_ENDPOINT_URL=moto_endpoint,
        RTSTREAM_MAX_CONNECTIONS_PER_USER="3",
    )
    try:
        token = token_for(entity, user_id=user)
        third = await open_stream(server.url, token)
        await third.next_frame()
        assert registry.count_user_connections(user, int(time.time())) == 3
        refused = await open_stream(server.url, token, expect=429)
        await refused.response.aread()
        await third.response.aclose()
        assert await asyncio.to_thread(wait_until, lambda: registry.count_user_connections(user, int(time.time())) == 2)
    finally:
        server.stop()


async def test_sigterm_does_not_wait_for_idle_keep_alive_connections(redis_url, sse_secret, sse_logs, entity, token_for, open_stream):
    # grace and keep-alive both longer than the exit we expect
    server = start_server(redis_url, sse_secret, sse_logs, RTSTREAM_SSE_SHUTDOWN_GRACE_SECONDS="10")
    try:
        stream = await open_stream(server.url, token_for(entity))
        await stream.next_frame()  # retry
        assert (await stream.next_frame()).event == "cursor"  # "0-0": the entity has no events yet
        # a browser's idle keep-alive connection: one request answered, the socket kept open
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        idle.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        head = idle.recv(4096)
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()
        started = time.monotonic()
        server.sigterm()
        hint = await stream.next_frame(timeout=5)
        assert any("shutting down" in c for c in hint.comments)  # the stream still gets its retry hint
        assert await asyncio.to_thread(server.wait, 10) in (0, -signal.SIGTERM)
        took = time.monotonic() - started
        assert took < 6.0, f"shutdown waited {took:.1f}s for an idle keep-alive connection (grace is 10 s)"
        # closed by the server: what is left of the /healthz body, then EOF (a socket
        # the server kept open would time out here instead)
        rest = b""
        while chunk := idle.recv(4096):
            rest += chunk
        assert b"HTTP/1.1" not in rest
        idle.close()
    finally:
        server.stop()
