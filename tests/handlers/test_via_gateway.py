"""The real handlers, wired by template.yaml, behind the local API Gateway emulator:
a real WebSocket client, DynamoDB in moto, a real Redis."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from rtstream.auth import issue_dev_token
from helpers import handler_env  # noqa: E402


@pytest.fixture
async def gateway(tables, moto_endpoint, redis_url, redis_client, jwt_secret):
    from rtstream_gateway.server import GatewayEmulator

    gw = GatewayEmulator(
        env=handler_env(tables, moto_endpoint=moto_endpoint, redis_url=redis_url, jwt_secret=jwt_secret),
        resources=tables,
    )
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def exchange(ws, frame) -> dict:
    await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def test_handshake_refused_without_valid_token(gateway):
    for query in ("", "?token=not-a-jwt"):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(gateway.ws_url + query):
                pass
        assert info.value.response.status_code == 403  # the authorizer's Deny policy


async def test_session_through_the_gateway(gateway, jwt_secret):
    token = issue_dev_token(jwt_secret, user_id="user-1", entity_id="entity-1")
    async with websockets.connect(gateway.ws_url + "?token=" + token) as ws:
        assert (await exchange(ws, {"type": "subscribe", "topic": "transactions.new", "entityId": "entity-2"}))["code"] == "invalid_message"
        assert await exchange(ws, {"type": "subscribe", "topic": "transactions.new"}) == {"type": "subscribed", "topic": "transactions.new", "cursor": "0-0"}
        assert (await exchange(ws, {"type": "ping"}))["type"] == "pong"
        assert (await exchange(ws, "{not json"))["code"] == "invalid_message"
        assert (await exchange(ws, {"type": "bogus"}))["code"] == "invalid_message"
        assert (await exchange(ws, {"type": "subscribe", "topic": "nope"}))["code"] == "unknown_topic"
        assert await exchange(ws, {"type": "presence"}) == {
            "type": "presence",
            "users": [{"userId": "user-1", "connections": 1, "transports": ["websocket"]}],
        }
        assert await exchange(ws, {"type": "unsubscribe", "topic": "transactions.new"}) == {"type": "unsubscribed", "topic": "transactions.new"}


async def test_header_token_and_per_user_limit(gateway, jwt_secret, monkeypatch):
    token = issue_dev_token(jwt_secret, user_id="user-2", entity_id="entity-1")
    headers = {"Authorization": f"Bearer {token}"}
    open_sockets = []
    try:
        for _ in range(10):  # the contract's default: 10 concurrent connections per user
            open_sockets.append(await websockets.connect(gateway.ws_url, additional_headers=headers))
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(gateway.ws_url, additional_headers=headers):
                pass
        assert info.value.response.status_code == 429
    finally:
        for ws in open_sockets:
            await ws.close()
