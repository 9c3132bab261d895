"""The emulator's API Gateway semantics, with real clients over real sockets
(websockets, boto3's apigatewaymanagementapi) against the fixture API."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import boto3
import pytest
import websockets
from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayWebSocketConnectEventModel,
    APIGatewayWebSocketDisconnectEventModel,
    APIGatewayWebSocketMessageEventModel,
)
from botocore.config import Config

from rtstream_gateway import GatewayEmulator
from rtstream_gateway.api import load_api, select_route
from rtstream_gateway.events import aws_id

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_TEMPLATE = ROOT / "tests" / "gateway" / "fixture_api" / "template.yaml"

CONNECTION_ID = re.compile(r"^[A-Za-z0-9]{15}=$")


def management(gateway, **config):
    return boto3.client("apigatewaymanagementapi", endpoint_url=gateway.management_endpoint, region_name="us-east-1",
                        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, **config))


async def recv_json(ws, timeout=5.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def connected(gateway, query="?token=allow-u1", **kwargs):
    return await websockets.connect(gateway.ws_url + query, ping_interval=None, open_timeout=5, **kwargs)


# ---- template reading


def test_template_is_read_not_restated():
    api = load_api(FIXTURE_TEMPLATE, resources={"FixtureTable": "tbl"})
    assert api.stage == "test"
    assert api.route_selection_expression == "$request.body.type"
    assert set(api.routes) == {"$connect", "$disconnect", "echo", "silent", "$default"}
    assert api.routes["$connect"].authorizer.identity_sources == (("querystring", "token"),)
    assert api.routes["echo"].has_route_response and api.routes["$default"].has_route_response
    assert not api.routes["silent"].has_route_response
    assert api.routes["echo"].function.source_file.name == "app.py"
    assert api.routes["echo"].function.timeout_seconds == 5 and api.routes["echo"].function.memory_mb == 256
    assert api.environment == {"FIXTURE_STAGE": "test", "FIXTURE_REGION": "us-east-1-suffix",
                               "FIXTURE_TABLE": "tbl", "FIXTURE_FLAG": "true", "FIXTURE_FUNCTION": "echo"}


def test_project_template_routes():
    api = load_api(ROOT / "template.yaml")
    assert {"$connect", "$disconnect", "subscribe", "unsubscribe", "ping", "presence", "$default"} <= set(api.routes)
    assert api.routes["$connect"].authorizer is not None
    assert all(api.routes[k].has_route_response for k in ("subscribe", "unsubscribe", "ping", "presence", "$default"))
    # unresolvable here (the deployed API's URL): the emulator supplies its own
    assert "RTSTREAM_MANAGEMENT_ENDPOINT" not in api.environment


def test_route_selection_like_api_gateway():
    routes = load_api(FIXTURE_TEMPLATE).routes
    assert select_route("$request.body.type", {"type": "echo"}, routes) == "echo"
    assert select_route("$request.body.type", {"type": "unknown"}, routes) == "$default"
    assert select_route("$request.body.type", {"type": "$connect"}, routes) == "$default"
    assert select_route("$request.body.type", {"type": ["echo"]}, routes) == "$default"
    assert select_route("$request.body.type", None, routes) == "$default"


def test_ids_look_like_api_gateway_ids():
    ids = {aws_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(CONNECTION_ID.match(i) for i in ids)


# ---- handshake


@pytest.mark.parametrize(
    ("query", "status"),
    [("", 401), ("?token=", 401), ("?token=deny", 403), ("?token=unauthorized", 401), ("?token=crash", 500)],
)
async def test_authorizer_refuses_handshake(fixture_gateway, recorder, query, status):
    async with fixture_gateway() as gw:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connected(gw, query)
        assert refused.value.response.status_code == status
        assert gw.connection_ids == []
    assert recorder.events("$connect") == []  # the route never ran


async def test_connect_non_2xx_refuses_with_that_status_and_no_disconnect(fixture_gateway, recorder):
    async with fixture_gateway() as gw:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connected(gw, "?token=allow-u1&connect_status=429")
        assert refused.value.response.status_code == 429
    assert len(recorder.events("$connect")) == 1
    assert recorder.events("$disconnect") == []


async def test_wrong_stage_and_plain_http(fixture_gateway):
    async with fixture_gateway() as gw:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{gw.port}/prod?token=allow-u1", open_timeout=5)
        assert refused.value.response.status_code == 403
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(f"GET /{gw.stage} HTTP/1.1\r\nHost: x\r\n\r\nGET /elsewhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert data.startswith(b"HTTP/1.1 426 ") and b"HTTP/1.1 404 " in data


# ---- events shaped like AWS's


async def test_events_validate_against_powertools_models(fixture_gateway, recorder):
    async with fixture_gateway() as gw:
        async with await connected(gw, "?token=allow-u1&x=1&x=2", user_agent_header="probe/1.0",
                                   additional_headers={"X-Custom": "v"}) as ws:
            await ws.send(json.dumps({"type": "echo"}))
            await recv_json(ws)
            await ws.send(b"\x00\xffbinary")
            await recv_json(ws)
        (disconnect,) = await recorder.wait_for("$disconnect")
    (connect,) = recorder.events("$connect")
    messages = [e for e in recorder.events() if e["requestContext"]["eventType"] == "MESSAGE"]

    APIGatewayWebSocketConnectEventModel.model_validate(connect)
    APIGatewayWebSocketDisconnectEventModel.model_validate(disconnect)
    for message in messages:
        APIGatewayWebSocketMessageEventModel.model_validate(message)

    ctx = connect["requestContext"]
    assert CONNECTION_ID.match(ctx["connectionId"])
    assert ctx["stage"] == "test" and ctx["routeKey"] == "$connect" and ctx["eventType"] == "CONNECT"
    assert ctx["domainName"] == f"127.0.0.1:{gw.port}" and ctx["identity"]["sourceIp"] == "127.0.0.1"
    assert ctx["identity"]["userAgent"] == "probe/1.0"
    assert ctx["authorizer"]["principalId"] == "u1"
    assert {k: ctx["authorizer"][k] for k in ("userId", "entityId", "role")} == {"userId": "u1", "entityId": "entity-1", "role": "user"}
    assert connect["queryStringParameters"] == {"token": "allow-u1", "x": "2"}
    assert connect["multiValueQueryStringParameters"]["x"] == ["1", "2"]
    assert connect["headers"]["X-Custom"] == "v" and connect["headers"]["X-Forwarded-For"] == "127.0.0.1"
    # every event of the connection carries the same connection and authorizer context
    for event in [*messages, disconnect]:
        assert event["requestContext"]["connectionId"] == ctx["connectionId"]
        assert event["requestContext"]["connectedAt"] == ctx["connectedAt"]
        assert event["requestContext"]["authorizer"]["userId"] == "u1"
    assert messages[0]["requestContext"]["routeKey"] == "echo" and messages[0]["isBase64Encoded"] is False
    assert messages[1]["requestContext"]["routeKey"] == "$default" and messages[1]["isBase64Encoded"] is True
    assert CONNECTION_ID.match(messages[0]["requestContext"]["messageId"])
    assert disconnect["requestContext"]["disconnectStatusCode"] == 1000


async def test_handler_environment_and_lambda_context(fixture_gateway):
    async with fixture_gateway(env={"FIXTURE_EXTRA": "given"}) as gw:
        async with await connected(gw) as ws:
            await ws.send(json.dumps({"type": "echo", "show_env": True}))
            reply = await recv_json(ws)
    assert reply["env"] == {"FIXTURE_STAGE": "test", "FIXTURE_REGION": "us-east-1-suffix", "FIXTURE_TABLE": "local-fixture-table",
                            "FIXTURE_FLAG": "true", "FIXTURE_FUNCTION": "echo", "FIXTURE_EXTRA": "given"}
    assert reply["function"] == "rtstream-local-EchoFunction"
    assert 0 < reply["remaining_ms"] <= 5000
    assert reply["helper"] == "helper-beside-app"


# ---- route responses and errors


async def test_route_responses_only_where_configured(fixture_gateway, recorder):
    async with fixture_gateway() as gw:
        async with await connected(gw) as ws:
            await ws.send(json.dumps({"type": "silent"}))
            await ws.send("not json at all")
            assert (await recv_json(ws))["route"] == "$default"  # silent has no route response
            await ws.send(json.dumps({"type": "echo", "fail": True}))
            error = await recv_json(ws)
            assert error["message"] == "Internal server error" and CONNECTION_ID.match(error["connectionId"])
            await ws.send(json.dumps({"type": "echo"}))  # still usable
            assert (await recv_json(ws))["route"] == "echo"
    assert len(recorder.events("silent")) == 1


# ---- @connections through boto3, unchanged


async def test_management_api_post_get_delete_and_gone(fixture_gateway, recorder):
    async with fixture_gateway() as gw:
        client = management(gw)
        async with await connected(gw, user_agent_header="ua/2") as ws:
            (connect,) = await recorder.wait_for("$connect")
            cid = connect["requestContext"]["connectionId"]
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b'{"hello":1}')
            assert await asyncio.wait_for(ws.recv(), 5) == '{"hello":1}'
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"\xff\x00")
            assert await asyncio.wait_for(ws.recv(), 5) == b"\xff\x00"
            info = await asyncio.to_thread(client.get_connection, ConnectionId=cid)
            assert info["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": "ua/2"}
            assert abs(info["ConnectedAt"].timestamp() * 1000 - connect["requestContext"]["connectedAt"]) < 2
            assert info["LastActiveAt"] >= info["ConnectedAt"]
            await asyncio.to_thread(client.delete_connection, ConnectionId=cid)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        (disconnect,) = await recorder.wait_for("$disconnect")
        assert disconnect["requestContext"]["connectionId"] == cid
        for call in (lambda: client.post_to_connection(ConnectionId=cid, Data=b"x"),
                     lambda: client.get_connection(ConnectionId=cid),
                     lambda: client.delete_connection(ConnectionId=cid),
                     lambda: client.post_to_connection(ConnectionId="NeverExisted0A=", Data=b"x")):
            with pytest.raises(client.exceptions.GoneException) as gone:
                await asyncio.to_thread(call)
            assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410


async def test_post_limits_128kb_and_frames_of_32kb(fixture_gateway, recorder):
    async with fixture_gateway() as gw:
        client = management(gw)
        async with await connected(gw, max_size=None) as ws:
            cid = (await recorder.wait_for("$connect"))[0]["requestContext"]["connectionId"]
            with pytest.raises(client.exceptions.PayloadTooLargeException):
                await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"x" * (128 * 1024 + 1))
            payload = "y" * (128 * 1024)
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=payload.encode())
            assert await asyncio.wait_for(ws.recv(), 5) == payload


async def test_post_throttling_and_latency(fixture_gateway, recorder):
    async with fixture_gateway(post_throttle=2, post_latency_ms=150) as gw:
        client = management(gw)
        async with await connected(gw) as ws:
            cid = (await recorder.wait_for("$connect"))[0]["requestContext"]["connectionId"]
            started = time.monotonic()
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"1")
            assert time.monotonic() - started >= 0.15
            await asyncio.wait_for(ws.recv(), 5)
            outcomes = []
            for _ in range(8):
                try:
                    await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"2")
                    outcomes.append(200)
                except client.exceptions.LimitExceededException as exc:
                    outcomes.append(exc.response["ResponseMetadata"]["HTTPStatusCode"])
            assert 429 in outcomes and outcomes[0] == 200, (outcomes, time.monotonic() - started)


async def test_post_behaviour_changes_while_running(fixture_gateway, recorder):
    async with fixture_gateway() as gw:
        client = management(gw)
        async with await connected(gw):
            cid = (await recorder.wait_for("$connect"))[0]["requestContext"]["connectionId"]
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"1")
            gw.set_post_behaviour(throttle=1)
            outcomes = []
            for _ in range(3):
                try:
                    await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"2")
                    outcomes.append(200)
                except client.exceptions.LimitExceededException:
                    outcomes.append(429)
            assert outcomes[0] == 200 and 429 in outcomes
            gw.set_post_behaviour()
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"3")


async def test_client_that_stops_reading_gets_429_not_unbounded_buffers(fixture_gateway, recorder):
    async with fixture_gateway(client_buffer_limit=256 * 1024) as gw:
        client = management(gw)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, limit=1024)
        writer.write(f"GET /{gw.stage}?token=allow-slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 101")
        cid = (await recorder.wait_for("$connect"))[0]["requestContext"]["connectionId"]
        # the client never reads again: kernel buffers fill, then the emulator's, then 429
        outcome = None
        for _ in range(400):
            try:
                await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"b" * (128 * 1024))
            except client.exceptions.LimitExceededException as exc:
                outcome = exc.response["ResponseMetadata"]["HTTPStatusCode"]
                break
        assert outcome == 429
        writer.close()


async def test_keep_alive_and_pipelining(fixture_gateway, recorder):
    async with fixture_gateway() as gw:
        async with await connected(gw) as ws:
            cid = (await recorder.wait_for("$connect"))[0]["requestContext"]["connectionId"]
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            path = f"/{gw.stage}/@connections/{cid.replace('=', '%3D')}"
            writer.write(b"".join(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n{i}".encode() for i in range(5)))
            statuses = []
            for _ in range(5):
                line = await asyncio.wait_for(reader.readline(), 5)
                statuses.append(line.split()[1])
                while (await reader.readline()) != b"\r\n":
                    pass
            writer.close()
            assert statuses == [b"200"] * 5
            assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(5)] == ["0", "1", "2", "3", "4"]


# ---- AWS's limits


async def test_oversize_frame_closes_1009(fixture_gateway, recorder):
    async with fixture_gateway() as gw:
        async with await connected(gw) as ws:
            await ws.send("z" * (32 * 1024 + 1))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == 1009
        (disconnect,) = await recorder.wait_for("$disconnect")
        assert disconnect["requestContext"]["disconnectStatusCode"] == 1009


async def test_100kb_message_in_four_25kb_frames_is_accepted(fixture_gateway):
    async with fixture_gateway() as gw:
        async with await connected(gw) as ws:
            body = json.dumps({"type": "echo", "pad": "p" * (100 * 1024 - 30)})
            quarter = len(body) // 4 + 1
            frames = [body[i:i + quarter] for i in range(0, len(body), quarter)]
            assert len(frames) == 4 and all(len(f) <= 25 * 1024 + 64 for f in frames)
            await ws.send(frames)
            reply = await recv_json(ws)
            assert reply["route"] == "echo" and reply["size"] == len(body)


async def test_message_over_128kb_in_small_frames_closes_1009(fixture_gateway):
    async with fixture_gateway() as gw:
        async with await connected(gw) as ws:
            await ws.send(["m" * (30 * 1024)] * 5)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == 1009


async def test_idle_timeout(fixture_gateway, recorder):
    async with fixture_gateway(idle_timeout=0.4) as gw:
        async with await connected(gw) as ws:
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == 1001
            assert 0.35 <= time.monotonic() - started < 2
        (disconnect,) = await recorder.wait_for("$disconnect")
        assert disconnect["requestContext"]["disconnectStatusCode"] == 1001


async def test_activity_defers_idle_timeout_but_not_max_age(fixture_gateway, recorder):
    async with fixture_gateway(idle_timeout=0.4, max_connection_seconds=1.2) as gw:
        async with await connected(gw) as ws:
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:  # messages every 0.1 s keep it from idling out...
                    await ws.send(json.dumps({"type": "silent"}))
                    await asyncio.sleep(0.1)
            # ...until the maximum connection age
            assert closed.value.rcvd.code == 1001
            assert 1.1 <= time.monotonic() - started < 3
        await recorder.wait_for("$disconnect")


async def test_server_messages_also_keep_a_connection_open(fixture_gateway, recorder):
    async with fixture_gateway(idle_timeout=0.5) as gw:
        client = management(gw)
        async with await connected(gw) as ws:
            cid = (await recorder.wait_for("$connect"))[0]["requestContext"]["connectionId"]
            for _ in range(8):  # 1.2 s of server-sent messages only, every 0.15 s
                await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"keep-alive")
                assert await asyncio.wait_for(ws.recv(), 5) == "keep-alive"
                await asyncio.sleep(0.15)
            with pytest.raises(websockets.ConnectionClosed):  # then silence: it idles out
                await asyncio.wait_for(ws.recv(), 5)


@pytest.mark.parametrize("how", ["client_close", "abort", "server_stop"])
async def test_disconnect_runs_however_the_socket_closes(fixture_gateway, recorder, how):
    expected = {"client_close": 4000, "abort": 1006, "server_stop": 1001}[how]
    async with fixture_gateway() as gw:
        ws = await connected(gw)
        await recorder.wait_for("$connect")
        if how == "client_close":
            await ws.close(4000, "bye")
        elif how == "abort":
            ws.transport.abort()
        else:
            await gw.stop()
        (disconnect,) = await recorder.wait_for("$disconnect")
        assert disconnect["requestContext"]["disconnectStatusCode"] == expected
        assert gw.connection_ids == []
        await ws.close()


async def test_many_posts_fan_out_quickly(fixture_gateway, recorder):
    """A smoke figure for the fan-out path: raw keep-alive POSTs to 50 sockets."""
    async with fixture_gateway() as gw:
        sockets = [await connected(gw) for _ in range(50)]
        ids = [e["requestContext"]["connectionId"] for e in await recorder.wait_for("$connect", 50)]
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        rounds = 20
        started = time.monotonic()
        for r in range(rounds):
            writer.write(b"".join(
                f"POST /{gw.stage}/@connections/{cid} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{r:02d}".encode()
                for cid in ids))
        received = await asyncio.gather(*(asyncio.wait_for(_drain(ws, rounds), 10) for ws in sockets))
        elapsed = time.monotonic() - started
        writer.close()
        assert all(r == [f"{i:02d}" for i in range(rounds)] for r in received)
        assert elapsed < 5, f"{rounds * len(ids)} posts took {elapsed:.2f}s"
        for ws in sockets:
            await ws.close()


async def _drain(ws, count):
    return [await ws.recv() for _ in range(count)]


async def test_the_process_environment_is_never_changed_and_overlapping_emulators_keep_theirs(fixture_gateway, monkeypatch):
    """Each emulator gives its functions their environment (the template's plus
    ``env``) without writing os.environ; two running at once do not mix."""
    monkeypatch.setenv("FIXTURE_EXTRA", "before")
    before = dict(os.environ)
    second = GatewayEmulator(FIXTURE_TEMPLATE, env={"FIXTURE_EXTRA": "second", "GATEWAY_TEST_RECORD": os.devnull})
    async with fixture_gateway(env={"FIXTURE_EXTRA": "first"}) as first:
        await second.start()
        try:
            assert dict(os.environ) == before
            for gw, expected in ((first, "first"), (second, "second")):
                async with await connected(gw) as ws:
                    await ws.send(json.dumps({"type": "echo", "show_env": True}))
                    reply = await recv_json(ws)
                assert reply["env"]["FIXTURE_EXTRA"] == expected
                assert reply["env"]["FIXTURE_STAGE"] == "test"  # the template's value
        finally:
            await second.stop()
    assert dict(os.environ) == before
