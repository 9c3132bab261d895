"""The project's own handlers behind the emulator, as `template.yaml` wires them,
with DynamoDB in a moto server on its own port reached through localstack-client
(the LocalStack-compatible path) and a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import boto3
import jwt
import pytest
import websockets

from rtstream.auth import issue_dev_token
from rtstream_cli.dev import LocalSystem

SECRET = "gateway-real-handlers-secret-0123456789abcdef"


@pytest.fixture
async def system(moto_endpoint, redis_url):
    suffix = uuid.uuid4().hex[:8]
    local = LocalSystem(aws_endpoint=moto_endpoint, redis_url=redis_url, jwt_secret=SECRET,
                        settings_overrides={"CONNECTIONS_TABLE": f"conns-{suffix}", "SUBSCRIPTIONS_TABLE": f"subs-{suffix}"},
                        with_worker=False, with_sse=False, with_eventbridge=False, write_state_file=False)
    await local.start()
    try:
        yield local
    finally:
        await local.stop()


def token(user="alice", entity="acme", **kw):
    return issue_dev_token(SECRET, user_id=user, entity_id=entity, **kw)


async def connect(system, tok):
    return await websockets.connect(f"{system.ws_url}?token={tok}", ping_interval=None, open_timeout=10)


async def request(ws, message, timeout=10.0):
    await ws.send(message if isinstance(message, str) else json.dumps(message))
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def dynamodb(system):
    return boto3.client("dynamodb", endpoint_url=system.aws_endpoint, region_name="us-east-1")


def items_of(system, table, user):
    return dynamodb(system).scan(TableName=table, FilterExpression="userId = :u",
                                 ExpressionAttributeValues={":u": {"S": user}})["Items"]


@pytest.mark.parametrize("bad", [
    "",
    "not-a-jwt",
    jwt.encode({"sub": "u", "entity_id": "e", "exp": int(time.time()) + 60}, "another-secret-0123456789abcdef-xyz", algorithm="HS256"),
    jwt.encode({"sub": "u", "entity_id": "e", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256"),
    jwt.encode({"sub": "u", "entity_id": "e", "exp": int(time.time()) + 60}, None, algorithm="none"),
])
async def test_handshake_refused_without_or_with_bad_token(system, bad):
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(system, bad)
    assert refused.value.response.status_code in (401, 403)


async def test_bearer_header_is_accepted(system):
    async with await websockets.connect(system.ws_url, additional_headers={"Authorization": f"Bearer {token()}"},
                                        ping_interval=None, open_timeout=10) as ws:
        assert (await request(ws, {"type": "ping"}))["type"] == "pong"


async def test_ping_subscribe_and_errors_keep_the_connection_usable(system):
    async with await connect(system, token()) as ws:
        pong = await request(ws, {"type": "ping"})
        assert pong["type"] == "pong" and "timestamp" in pong
        assert await request(ws, {"type": "subscribe", "topic": "transactions.new"}) == {"type": "subscribed", "topic": "transactions.new", "cursor": "0-0"}
        for bad, codes in [("{not json", {"invalid_message"}),
                           ({"type": "teleport"}, {"invalid_message", "unknown_type"}),
                           ({"type": "subscribe", "topic": "nope.nope"}, {"unknown_topic"}),
                           ({"type": "subscribe", "topic": "balance.updated", "surprise": 1}, {"invalid_message"}),
                           ({"type": "subscribe", "topic": 7}, {"invalid_message", "unknown_topic"}),
                           ("[]", {"invalid_message"})]:
            reply = await request(ws, bad)
            assert reply["type"] == "error" and reply["code"] in codes, (bad, reply)
        assert (await request(ws, {"type": "ping"}))["type"] == "pong"
        assert await request(ws, {"type": "unsubscribe", "topic": "transactions.new"}) == {"type": "unsubscribed", "topic": "transactions.new"}


async def test_oversize_frame_closes_1009(system):
    async with await connect(system, token()) as ws:
        await ws.send(json.dumps({"type": "ping", "pad": "x" * (33 * 1024)}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1009


async def test_disconnect_cleans_dynamodb_and_posts_get_410(system):
    user = f"u-{uuid.uuid4().hex[:6]}"
    ws = await connect(system, token(user=user))
    await request(ws, {"type": "subscribe", "topic": "balance.updated"})
    await request(ws, {"type": "subscribe", "topic": "*"})
    (record,) = items_of(system, system.connections_table, user)
    connection_id = record["connectionId"]["S"]
    assert len(items_of(system, system.subscriptions_table, user)) == 2
    api = boto3.client("apigatewaymanagementapi", endpoint_url=system.management_endpoint, region_name="us-east-1")
    await asyncio.to_thread(api.post_to_connection, ConnectionId=connection_id, Data=b'{"type":"hello"}')
    assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "hello"}

    await ws.close()
    deadline = time.monotonic() + 10
    while items_of(system, system.connections_table, user) or items_of(system, system.subscriptions_table, user):
        assert time.monotonic() < deadline, "$disconnect did not clean DynamoDB"
        await asyncio.sleep(0.05)
    with pytest.raises(api.exceptions.GoneException):
        await asyncio.to_thread(api.post_to_connection, ConnectionId=connection_id, Data=b"x")
