"""End to end against template.yaml deployed into MiniStack (one stack for the module).

client -> deployed WebSocket API -> authorizer / route Lambdas (built layer)
-> DynamoDB; publisher -> Redis / EventBridge (rule -> bridge Lambda) ->
fan-out worker -> @connections -> client. Every assertion here fails if the
template's wiring (routes, integrations, authorizer, layer, tables, rule,
environment) is wrong, not only if the code is.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import boto3
import pytest
import redis
import websockets
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.ministack

REPLY_TIMEOUT = 20.0  # first calls cold-start a Lambda worker (imports the layer)
EVENT_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def token(e2e_jwt_secret):
    """``token(user, entity, secret=…, ttl=…, now=…)``: signed with the stack's JwtSecret by default."""
    from rtstream.auth import issue_dev_token

    def make(user: str, entity: str, *, secret: str = e2e_jwt_secret, ttl: int = 600, now: float | None = None) -> str:
        return issue_dev_token(secret, user_id=user, entity_id=entity, ttl_seconds=ttl, now=now)

    return make


def ids() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"user-{suffix}", f"entity-{suffix}"


async def connect(deployed, tok: str | None):
    url = deployed.websocket_url + (f"?token={tok}" if tok else "")
    return await websockets.connect(url, open_timeout=REPLY_TIMEOUT, max_size=2**20)


async def next_json(ws, timeout: float = REPLY_TIMEOUT) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def wait_for(ws, predicate, timeout: float = EVENT_TIMEOUT) -> dict:
    """The first message matching ``predicate``; fails listing what came instead."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching message within {timeout}s; got {seen}")
        try:
            message = await next_json(ws, remaining)
        except asyncio.TimeoutError:
            continue
        if predicate(message):
            return message
        seen.append(message)


async def subscribe(ws, topic: str) -> None:
    await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
    reply = await wait_for(ws, lambda m: m.get("type") in ("subscribed", "error"), REPLY_TIMEOUT)
    # a fresh subscribe names its resume cursor ("0-0" when the entity has no events)
    assert reply.pop("cursor", None) is not None and reply == {"type": "subscribed", "topic": topic}


def connection_ids_of(aws, deployed, user: str) -> list[str]:
    reply = aws("dynamodb").query(
        TableName=deployed.connections_table, IndexName="byUser",
        KeyConditionExpression="userId = :u", ExpressionAttributeValues={":u": {"S": user}},
    )
    return [item["connectionId"]["S"] for item in reply.get("Items", [])]


def subscription_items(aws, deployed, connection_id: str) -> list[dict]:
    reply = aws("dynamodb").query(
        TableName=deployed.subscriptions_table, IndexName="byConnection",
        KeyConditionExpression="connectionId = :c", ExpressionAttributeValues={":c": {"S": connection_id}},
    )
    return reply.get("Items", [])


async def eventually(check, timeout: float = 15.0, interval: float = 0.25):
    """``check()``'s first truthy result, or its last one after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval)


def transaction(tx: str) -> dict:
    return {"transactionId": tx, "amount": 42.5, "merchant": "Cafe"}


# --- connect ---------------------------------------------------------------

# The authorizer refuses with a Deny policy: AWS and MiniStack both answer the
# handshake 403 (an exception would be 401 on AWS but 500 on MiniStack). The
# handshake is refused before $connect runs, so no connection is recorded.
REFUSED = (403,)


async def test_connect_without_token_is_refused(deployed):
    with pytest.raises(InvalidStatus) as refused:
        await connect(deployed, None)
    assert refused.value.response.status_code in REFUSED


@pytest.mark.parametrize("bad", ["wrong-secret", "expired"])
async def test_connect_with_invalid_token_is_refused(deployed, aws, bad, token):
    user, entity = ids()
    tok = {
        "wrong-secret": lambda: token(user, entity, secret="another-secret-0123456789abcdef0123456789"),
        "expired": lambda: token(user, entity, ttl=60, now=time.time() - 3600),
    }[bad]()
    with pytest.raises(InvalidStatus) as refused:
        await connect(deployed, tok)
    assert refused.value.response.status_code in REFUSED
    assert connection_ids_of(aws, deployed, user) == []


async def test_connect_records_the_connection_from_the_token(deployed, aws, token):
    user, entity = ids()
    async with await connect(deployed, token(user, entity)) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        await wait_for(ws, lambda m: m.get("type") == "pong", REPLY_TIMEOUT)
        [connection_id] = connection_ids_of(aws, deployed, user)
        item = aws("dynamodb").get_item(TableName=deployed.connections_table,
                                        Key={"connectionId": {"S": connection_id}})["Item"]
        assert item["entityId"]["S"] == entity
        assert int(item["ttl"]["N"]) > time.time()
        # DynamoDB's own expiry runs on purgeAt (after ttl): housekeeping releases
        # the record's admission slots before DynamoDB may delete it
        assert int(item["purgeAt"]["N"]) > int(item["ttl"]["N"])
        ttl = aws("dynamodb").describe_time_to_live(TableName=deployed.connections_table)
        assert ttl["TimeToLiveDescription"]["AttributeName"] == "purgeAt"


async def test_ping_answers_pong(deployed, token):
    user, entity = ids()
    async with await connect(deployed, token(user, entity)) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        reply = await next_json(ws)
        assert reply["type"] == "pong"
        assert reply["timestamp"]


async def test_bad_message_gets_coded_error_and_connection_stays_usable(deployed, token):
    user, entity = ids()
    async with await connect(deployed, token(user, entity)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "no.such.topic"}))
        error = await next_json(ws)
        assert error["type"] == "error" and error["code"] == "unknown_topic"
        await ws.send("{not json")
        error = await next_json(ws)
        assert error["type"] == "error" and error["code"] == "invalid_message"
        await ws.send(json.dumps({"type": "ping"}))
        assert (await next_json(ws))["type"] == "pong"


# --- publish -> fan-out -> client -----------------------------------------

async def test_subscribe_then_publish_through_redis(deployed, services, aws, e2e_redis_url, token):
    user, entity = ids()
    async with await connect(deployed, token(user, entity)) as ws:
        await subscribe(ws, "transactions.new")
        [connection_id] = connection_ids_of(aws, deployed, user)
        [sub] = subscription_items(aws, deployed, connection_id)
        assert sub["channel"]["S"] == f"{entity}#transactions.new"

        client = redis.Redis.from_url(e2e_redis_url)
        client.publish(f"transactions.new:entity:{entity}", json.dumps(transaction("t-redis")))
        event = await wait_for(ws, lambda m: m.get("type") == "event")
        assert event["topic"] == "transactions.new"
        assert event["data"] == transaction("t-redis")
        assert event["id"]
        client.close()


async def test_publish_through_eventbridge(deployed, services, aws, token):
    from rtstream.adapters.eventbridge import EventBridgePublisher
    from rtstream.publishing import validate

    user, entity = ids()
    data = {"accountId": "acc-1", "newBalance": 100.0, "change": -5.0}
    async with await connect(deployed, token(user, entity)) as ws:
        await subscribe(ws, "*")
        EventBridgePublisher(client=aws("events")).put(
            validate(entity, "balance.updated", data, "ledger"), event_bus=deployed.event_bus)
        event = await wait_for(ws, lambda m: m.get("type") == "event")
        assert event["topic"] == "balance.updated"
        assert event["data"] == data
        assert event["source"] == "ledger"


async def test_entity_isolation(deployed, services, e2e_redis_url, token):
    user_a, entity_a = ids()
    user_b, entity_b = ids()
    client = redis.Redis.from_url(e2e_redis_url)
    async with await connect(deployed, token(user_a, entity_a)) as ws_a, \
            await connect(deployed, token(user_b, entity_b)) as ws_b:
        await subscribe(ws_a, "*")
        await subscribe(ws_b, "*")
        client.publish(f"transactions.new:entity:{entity_a}", json.dumps(transaction("only-a")))
        event_a = await wait_for(ws_a, lambda m: m.get("type") == "event")
        assert event_a["data"]["transactionId"] == "only-a"
        # B's first event must be B's own: A's never reaches it
        client.publish(f"transactions.new:entity:{entity_b}", json.dumps(transaction("only-b")))
        event_b = await wait_for(ws_b, lambda m: m.get("type") == "event")
        assert event_b["data"]["transactionId"] == "only-b"
        # and a client cannot pick another entity: the message field is refused, not obeyed
        await ws_b.send(json.dumps({"type": "subscribe", "topic": "*", "entityId": entity_a}))
        refused = await wait_for(ws_b, lambda m: m.get("type") in ("error", "subscribed"), REPLY_TIMEOUT)
        assert refused["type"] == "error"
    client.close()


async def test_unsubscribe_and_presence_routes(deployed, aws, token):
    user, entity = ids()
    async with await connect(deployed, token(user, entity)) as ws:
        await subscribe(ws, "balance.updated")
        [connection_id] = connection_ids_of(aws, deployed, user)
        await ws.send(json.dumps({"type": "unsubscribe", "topic": "balance.updated"}))
        assert await next_json(ws) == {"type": "unsubscribed", "topic": "balance.updated"}
        assert subscription_items(aws, deployed, connection_id) == []
        await ws.send(json.dumps({"type": "presence"}))
        presence = await next_json(ws)
        assert presence["type"] == "presence"
        assert [u["userId"] for u in presence["users"]] == [user]


async def test_subscribe_since_replays_what_was_missed(deployed, services, e2e_redis_url, token):
    """subscribe Lambda (Redis replay request) -> fan-out -> subscribed, then the history after `since`."""
    user, entity = ids()
    client = redis.Redis.from_url(e2e_redis_url)
    async with await connect(deployed, token(user, entity)) as ws:
        await subscribe(ws, "transactions.new")
        for tx in ("r1", "r2", "r3"):
            client.publish(f"transactions.new:entity:{entity}", json.dumps(transaction(tx)))
        seen = [await wait_for(ws, lambda m: m.get("type") == "event") for _ in range(3)]
        assert [e["data"]["transactionId"] for e in seen] == ["r1", "r2", "r3"]
    async with await connect(deployed, token(user, entity)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "transactions.new", "since": seen[0]["id"]}))
        assert await wait_for(ws, lambda m: m.get("type") in ("subscribed", "error")) == {
            "type": "subscribed", "topic": "transactions.new"}
        replayed = [await wait_for(ws, lambda m: m.get("type") == "event") for _ in range(2)]
        assert [e["id"] for e in replayed] == [seen[1]["id"], seen[2]["id"]]
    client.close()


# --- disconnect ------------------------------------------------------------

async def test_disconnect_cleans_up_and_management_api_answers_410(deployed, services, aws, token):
    from botocore.exceptions import ClientError

    user, entity = ids()
    # the endpoint the stack's outputs give the fan-out worker (the management API has its own)
    mgmt = boto3.client("apigatewaymanagementapi", endpoint_url=deployed.management_endpoint,
                        region_name=deployed.region, aws_access_key_id="test", aws_secret_access_key="test")
    ws = await connect(deployed, token(user, entity))
    await subscribe(ws, "transactions.new")
    [connection_id] = connection_ids_of(aws, deployed, user)
    assert subscription_items(aws, deployed, connection_id)

    # the stack's management endpoint reaches this very connection
    mgmt.post_to_connection(ConnectionId=connection_id, Data=b'{"type":"direct"}')
    assert await wait_for(ws, lambda m: m.get("type") == "direct", REPLY_TIMEOUT) == {"type": "direct"}

    await ws.close()
    assert await eventually(lambda: not connection_ids_of(aws, deployed, user)), "connection record left after close"
    assert await eventually(lambda: not subscription_items(aws, deployed, connection_id)), "subscriptions left after close"

    with pytest.raises(ClientError) as gone:
        mgmt.post_to_connection(ConnectionId=connection_id, Data=b'{"type":"late"}')
    assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410
    assert gone.value.response["Error"]["Code"] == "GoneException"


# --- SSE fallback, configured from the same stack ----------------------------

async def test_sse_server_streams_the_same_events(deployed, services, e2e_redis_url, token):
    import httpx

    user, entity = ids()
    client = redis.Redis.from_url(e2e_redis_url)
    frames: list[str] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(EVENT_TIMEOUT)) as http:
        async with http.stream("GET", services.sse_url, params={"topics": "transactions.new"},
                               headers={"Authorization": f"Bearer {token(user, entity)}"}) as reply:
            assert reply.status_code == 200
            lines = reply.aiter_lines()
            assert (await asyncio.wait_for(lines.__anext__(), EVENT_TIMEOUT)).startswith("retry:")
            client.publish(f"transactions.new:entity:{entity}", json.dumps(transaction("t-sse")))
            deadline = time.monotonic() + EVENT_TIMEOUT
            while not any(f.startswith("data:") and "t-sse" in f for f in frames):
                assert time.monotonic() < deadline, frames
                frames.append(await asyncio.wait_for(lines.__anext__(), EVENT_TIMEOUT))
        unauthorized = await http.get(services.sse_url, params={"topics": "*"})
        assert unauthorized.status_code == 401
    client.close()
    assert "event: transactions.new" in frames


# --- a broken template must fail this path ---------------------------------
#
# Copies of template.yaml with one wiring fault each. CloudFormation accepts
# them (as on AWS). deploy-local then reads the deployed API, rules and
# function policies back and fails, naming the fault; and with that check
# skipped, the running system fails end to end where the intact stack works.

def template_copy(source: Path, tmp_path: Path, mutate) -> Path:
    from rtstream_cli.cloudformation import load_template

    template = json.loads(json.dumps(load_template(source)))
    for resource in template["Resources"].values():  # the copy lives elsewhere: code paths stay the project's
        props = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str) and not props[key].startswith("s3://"):
                props[key] = str((source.parent / props[key]).resolve())
    mutate(template["Resources"])
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template))
    return path


def _route(resources: dict, route_key: str) -> dict:
    [route] = [r for r in resources.values()
               if r["Type"] == "AWS::ApiGatewayV2::Route" and r["Properties"].get("RouteKey") == route_key]
    return route


def _integration_of(resources: dict, route_key: str) -> str:
    from rtstream_cli.localstack.adapt import _referenced_ids

    [integration_id] = [i for i in _referenced_ids(_route(resources, route_key)["Properties"]["Target"])
                        if resources.get(i, {}).get("Type") == "AWS::ApiGatewayV2::Integration"]
    return integration_id


def point_subscribe_at_missing_function(resources: dict) -> None:
    resources[_integration_of(resources, "subscribe")]["Properties"]["IntegrationUri"] = {"Fn::Sub": (
        "arn:aws:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/"
        "arn:aws:lambda:${AWS::Region}:${AWS::AccountId}:function:${AWS::StackName}-no-such-function/invocations")}


def drop_ping_permission(resources: dict) -> None:
    """Remove the AWS::Lambda::Permission that lets API Gateway invoke the ping route's function."""
    from rtstream_cli.localstack.adapt import _referenced_ids

    integration = resources[_integration_of(resources, "ping")]["Properties"]["IntegrationUri"]
    [function_id] = [i for i in _referenced_ids(integration) if resources.get(i, {}).get("Type") == "AWS::Serverless::Function"]
    [permission] = [lid for lid, r in resources.items() if r["Type"] == "AWS::Lambda::Permission"
                    and function_id in _referenced_ids(r["Properties"].get("FunctionName"))
                    and r["Properties"].get("Principal") == "apigateway.amazonaws.com"]
    del resources[permission]


@pytest.mark.parametrize("fault, expected", [
    (point_subscribe_at_missing_function, "route subscribe: function"),
    (drop_ping_permission, "route ping: "),
])
def test_broken_wiring_fails_the_deploy(ministack_endpoint, deploy_template, e2e_template_path, tmp_path,
                                        fault, expected):
    from rtstream_cli.localstack.stack import DeployError, destroy_stack

    name = f"rtstream-broken-{uuid.uuid4().hex[:6]}"
    try:
        with pytest.raises(DeployError) as failed:
            deploy_template(template_copy(e2e_template_path, tmp_path, fault), name)
        problems = str(failed.value).split("\n")[1:]
        assert len(problems) == 1 and problems[0].strip().startswith(expected), failed.value
    finally:
        destroy_stack(ministack_endpoint, name)


async def subscribe_reply(ws_url: str, secret: str) -> dict | None:
    """The reply to ``subscribe`` on ``ws_url``, None if there is none.

    The subscribe is followed by a ping: MiniStack runs one connection's
    messages in order, so once ``pong`` arrives the subscribe has been
    handled, and no reply before it means none is coming.
    """
    from rtstream.auth import issue_dev_token

    tok = issue_dev_token(secret, user_id=f"u-{uuid.uuid4().hex[:6]}", entity_id="e-wiring")
    async with websockets.connect(f"{ws_url}?token={tok}", open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "ping"}))  # the connection and the ping route work
        assert json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] == "pong"
        await ws.send(json.dumps({"type": "subscribe", "topic": "transactions.new"}))
        await ws.send(json.dumps({"type": "ping"}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
        return None if reply.get("type") == "pong" else reply


async def test_route_pointing_nowhere_fails_end_to_end(ministack_endpoint, deploy_template, deployed,
                                                       e2e_jwt_secret, e2e_template_path, tmp_path):
    from rtstream_cli.localstack.stack import client_factory, destroy_stack

    # the intact stack answers (positive control, same MiniStack, same code)
    positive = await subscribe_reply(deployed.websocket_url, e2e_jwt_secret)
    assert positive is not None and positive.pop("cursor", None) is not None and positive == {"type": "subscribed", "topic": "transactions.new"}

    broken = deploy_template(template_copy(e2e_template_path, tmp_path, point_subscribe_at_missing_function),
                             f"rtstream-broken-{uuid.uuid4().hex[:6]}", verify_wiring=False)
    try:
        reply = await subscribe_reply(broken.websocket_url, e2e_jwt_secret)
        # MiniStack sends nothing; AWS sends {"message": "Internal server error", ...}
        assert reply is None or reply.get("type") != "subscribed", reply
        items = client_factory(ministack_endpoint)("dynamodb").scan(TableName=broken.subscriptions_table)["Items"]
        assert items == []
    finally:
        destroy_stack(ministack_endpoint, broken.stack_name)
