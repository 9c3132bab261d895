"""LocalSystem, the composition other tests build on, and its local AWS and Redis."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket

import pytest
import redis
import websockets

from rtstream.auth import issue_dev_token
from rtstream_cli.dev import LocalSystem, PortInUse, _http_ok
from rtstream_cli.localaws import LocalAws
from rtstream_cli.localredis import LocalRedis
from rtstream_cli.state import read_state


async def ping(system) -> dict:
    token = issue_dev_token(system.jwt_secret, user_id="u1", entity_id="demo-entity")
    async with websockets.connect(f"{system.ws_url}?token={token}", open_timeout=10, ping_interval=None) as ws:
        await ws.send('{"type":"ping"}')
        return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def test_defaults_children_state_and_restarts_on_the_same_ports(tmp_path, monkeypatch):
    monkeypatch.setenv("RTSTREAM_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("RTSTREAM_JWT_SECRET", raising=False)
    environ_before = dict(os.environ)
    system = LocalSystem(settings_overrides={"RTSTREAM_HISTORY_MAXLEN": "50"}, gateway_options={"idle_timeout": 30})
    await system.start()
    try:
        # no component writes the process environment: handlers get theirs from the emulator
        assert dict(os.environ) == environ_before
        assert system.aws.kind == "moto" and system.redis.kind == "redis-server"
        assert redis.Redis.from_url(system.redis_url).ping()
        assert (await ping(system))["type"] == "pong"
        assert system.settings.history_maxlen == 50 and system.settings.idle_timeout_seconds == 30
        assert system.jwt_secret == (tmp_path / "dev-secret").read_text().strip()
        env = system.child_env
        for name, value in {
            "REDIS_URL": system.redis_url, "AWS_ENDPOINT_URL": system.aws_endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "RTSTREAM_MANAGEMENT_ENDPOINT": system.management_endpoint,
            "CONNECTIONS_TABLE": system.connections_table, "SUBSCRIPTIONS_TABLE": system.subscriptions_table,
            "RTSTREAM_JWT_SECRET": system.jwt_secret, "RTSTREAM_SSE_PORT": str(system.sse_port),
            "RTSTREAM_PUBLIC_WS_URL": system.ws_url, "RTSTREAM_DASHBOARD_DEV_TOKEN": "1",
            "RTSTREAM_DEV_ENTITY": "demo-entity", "RTSTREAM_HISTORY_MAXLEN": "50", "RTSTREAM_IDLE_TIMEOUT_SECONDS": "30",
        }.items():
            assert env[name] == value, name
        assert system.management_url == system.management_endpoint + "/@connections"
        assert system.sse_url == f"http://127.0.0.1:{system.sse_port}/events"
        assert system.dashboard_url == f"http://127.0.0.1:{system.sse_port}/"
        state = read_state()
        assert state["ws_url"] == system.ws_url and state["redis_url"] == system.redis_url
        assert state["connections_table"] == system.connections_table

        if system.worker is not None:
            assert system.worker.running
            # the worker's raw-publish subscription exists before start() returns
            assert redis.Redis.from_url(system.redis_url).pubsub_numpat() >= 1
        if importlib.util.find_spec("rtstream_cli.eventbridge_local") is not None:
            assert system.eventbridge is not None
        if system.worker is not None:  # the composed system delivers: raw PUBLISH -> worker -> @connections -> socket
            token = issue_dev_token(system.jwt_secret, user_id="u2", entity_id="acme-1")
            async with websockets.connect(f"{system.ws_url}?token={token}", open_timeout=10, ping_interval=None) as ws:
                await ws.send('{"type":"subscribe","topic":"transactions.new"}')
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "subscribed"
                redis.Redis.from_url(system.redis_url).publish(
                    "transactions.new:entity:acme-1", json.dumps({"transactionId": "t9", "amount": -3.5, "merchant": "Deli"}))
                event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert event["type"] == "event" and event["data"]["transactionId"] == "t9"
        if system.sse is not None:
            assert await _http_ok("127.0.0.1", system.sse_port, "/healthz")
            sse_port = system.sse_port
            await system.stop_sse()
            assert not await _http_ok("127.0.0.1", sse_port, "/healthz")
            await system.start_sse()
            assert system.sse_port == sse_port and await _http_ok("127.0.0.1", sse_port, "/healthz")

        ws_url = system.ws_url
        await system.stop_gateway()
        with pytest.raises(OSError):
            await ping(system)
        await system.start_gateway()
        assert system.ws_url == ws_url
        assert (await ping(system))["type"] == "pong"
    finally:
        await system.stop()
    assert read_state() == {}
    assert system.redis._proc is None
    assert dict(os.environ) == environ_before


async def test_taken_port_is_refused_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("RTSTREAM_STATE_DIR", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        system = LocalSystem(ws_port=taken.getsockname()[1], with_sse=False)
        with pytest.raises(PortInUse) as refused:
            await system.start()
    assert "in use" in str(refused.value)
    assert system.aws.endpoint is None and system.redis.url is None


async def test_localstack_compatible_endpoint_wins_over_the_environment_and_leaves_it_alone(moto_endpoint, monkeypatch):
    # The flag wins over a different AWS_ENDPOINT_URL in the environment, which stays as it was.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    before = dict(os.environ)
    aws = LocalAws(moto_endpoint)
    assert await aws.start() == moto_endpoint
    client = aws.client("dynamodb")
    assert dict(os.environ) == before
    assert client.meta.endpoint_url == moto_endpoint
    assert isinstance(client.list_tables()["TableNames"], list)
    assert aws.environment()["AWS_ENDPOINT_URL"] == moto_endpoint
    await aws.stop()


async def test_redis_falls_back_to_fakeredis_with_a_notice(capfd):
    local = LocalRedis(use_binary=False)
    url = await local.start()
    try:
        assert local.kind == "fakeredis"
        assert "fakeredis" in capfd.readouterr().err
        client = redis.Redis.from_url(url)
        assert client.ping() and client.set("k", "v") and client.get("k") == b"v"
        client.close()
        # error replies leave the connection usable, as in Redis (clients rely on NOSCRIPT, BUSYGROUP)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"*3\r\n$7\r\nEVALSHA\r\n$40\r\n" + b"0" * 40 + b"\r\n$1\r\n0\r\n*1\r\n$4\r\nPING\r\n")
            replies = b""
            while b"PONG" not in replies:
                chunk = raw.recv(4096)
                assert chunk, f"connection closed after {replies!r}"
                replies += chunk
        assert replies.startswith(b"-NOSCRIPT") and replies.endswith(b"+PONG\r\n")
    finally:
        await local.stop()


async def test_given_redis_url_is_used_as_is(redis_url):
    local = LocalRedis(redis_url)
    assert await local.start() == redis_url and local.kind == "external"
    await local.stop()
    assert redis.Redis.from_url(redis_url).ping()
