"""A template whose wiring is broken must fail this path, not only production.

The copy of template.yaml deployed here differs in one place: the integration
behind the ``subscribe`` route points at a function that does not exist (a
typo'd or deleted function). CloudFormation accepts it, as it would on AWS;
the end-to-end call must then fail: no ``subscribed`` reply and no
subscription in DynamoDB, where the intact stack answers both.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
import websockets

pytestmark = pytest.mark.ministack


def broken_template(source: Path, tmp_path: Path) -> Path:
    from rtstream_cli.localstack.adapt import _referenced_ids
    from rtstream_cli.template import load_template

    template = json.loads(json.dumps(load_template(source)))
    resources = template["Resources"]
    for resource in resources.values():  # the copy lives elsewhere: keep code paths pointing at the project
        props = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str) and not props[key].startswith("s3://"):
                props[key] = str((source.parent / props[key]).resolve())
    [route] = [r for r in resources.values()
               if r["Type"] == "AWS::ApiGatewayV2::Route" and r["Properties"].get("RouteKey") == "subscribe"]
    [integration_id] = [i for i in _referenced_ids(route["Properties"]["Target"])
                        if resources.get(i, {}).get("Type") == "AWS::ApiGatewayV2::Integration"]
    resources[integration_id]["Properties"]["IntegrationUri"] = {"Fn::Sub": (
        "arn:aws:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/"
        "arn:aws:lambda:${AWS::Region}:${AWS::AccountId}:function:${AWS::StackName}-no-such-function/invocations")}
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template))
    return path


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


async def test_subscribe_route_pointing_nowhere_fails_end_to_end(ministack_endpoint, deploy_template, deployed,
                                                                  e2e_jwt_secret, e2e_template_path, tmp_path):
    from rtstream_cli.localstack.stack import client_factory, destroy_stack

    # the intact stack answers (positive control, same MiniStack, same code)
    assert await subscribe_reply(deployed.websocket_url, e2e_jwt_secret) == {"type": "subscribed", "topic": "transactions.new"}

    broken = deploy_template(broken_template(e2e_template_path, tmp_path), f"rtstream-broken-{uuid.uuid4().hex[:6]}")
    try:
        reply = await subscribe_reply(broken.websocket_url, e2e_jwt_secret)
        # MiniStack sends nothing; AWS sends {"message": "Internal server error", ...}
        assert reply is None or reply.get("type") != "subscribed", reply
        items = client_factory(ministack_endpoint)("dynamodb").scan(TableName=broken.subscriptions_table)["Items"]
        assert items == []
    finally:
        destroy_stack(ministack_endpoint, broken.stack_name)
