"""The emulator adaptations, on the real template.yaml (no emulator needed).

These pin down exactly what differs from AWS: if template.yaml gains
something the adaptation would silently drop or break, these fail.
"""

from __future__ import annotations

import json

import pytest

from rtstream_cli.cloudformation import Intrinsics, Unresolved
from rtstream_cli.localstack.adapt import DROPPED_TYPES, AdaptError, adapt_for_emulator
from rtstream_cli.localstack.transform import OfflineManagedPolicyLoader, sam_to_cloudformation
from rtstream_cli.cloudformation import load_template

ENDPOINT = "http://127.0.0.1:4566"


@pytest.fixture
def template():
    return json.loads(json.dumps(load_template()))


def test_only_the_listed_types_are_removed_and_each_setting_is_reapplied(template):
    before = {lid: r["Type"] for lid, r in template["Resources"].items()}
    adapted = adapt_for_emulator(template, endpoint=ENDPOINT)
    after = {lid: r["Type"] for lid, r in adapted.template["Resources"].items()}
    assert {lid: t for lid, t in before.items() if lid not in after} == adapted.removed
    assert set(adapted.removed.values()) <= DROPPED_TYPES
    route_responses = [lid for lid, t in before.items() if t == "AWS::ApiGatewayV2::RouteResponse"]
    tables_with_ttl = [lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::DynamoDB::Table"
                       and (r["Properties"].get("TimeToLiveSpecification") or {}).get("Enabled")]
    assert route_responses and tables_with_ttl
    descriptions = [s.description for s in adapted.steps]
    for lid in route_responses:
        assert f"CreateRouteResponse {lid}" in descriptions
    for lid in tables_with_ttl:
        assert any(d.startswith(f"UpdateTimeToLive {lid}.") for d in descriptions)
    assert any(d.startswith("CreateDeployment") for d in descriptions)
    # TTL stays declared (right for AWS) and the source template is untouched
    assert all(adapted.template["Resources"][lid]["Properties"]["TimeToLiveSpecification"] for lid in tables_with_ttl)
    assert {lid: r["Type"] for lid, r in template["Resources"].items()} == before


def test_request_authorizer_without_identity_source_stays_without_one(template):
    authorizers = {lid: r for lid, r in template["Resources"].items() if r["Type"] == "AWS::ApiGatewayV2::Authorizer"}
    adapted = adapt_for_emulator(template, endpoint=ENDPOINT)
    for lid, resource in authorizers.items():
        declared = resource["Properties"].get("IdentitySource")
        assert adapted.template["Resources"][lid]["Properties"]["IdentitySource"] == (declared or [])


def test_execute_api_urls_point_at_the_emulator(template):
    adapted = adapt_for_emulator(template, endpoint=ENDPOINT, lambda_endpoint="http://lambda-side:4566")
    text = json.dumps(adapted.template)
    assert "amazonaws.com" not in json.dumps(adapted.template.get("Outputs")) + json.dumps(adapted.template.get("Globals"))
    assert "ws://127.0.0.1:4566/_aws/execute-api/${WebSocketApi}/${StageName}" in text
    assert "http://lambda-side:4566/_aws/execute-api/${WebSocketApi}/${StageName}" in text


def test_adapted_template_transforms_offline(template):
    adapted = adapt_for_emulator(template, endpoint=ENDPOINT)
    for resource in adapted.template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = {"Bucket": "b", "Key": "f.zip"}
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            resource["Properties"]["ContentUri"] = {"Bucket": "b", "Key": "l.zip"}
    cfn = sam_to_cloudformation(adapted.template, {"StageName": "e2e"}, "us-east-1", "000000000000")
    types = {r["Type"] for r in cfn["Resources"].values()}
    assert not any(t.startswith("AWS::Serverless::") for t in types)
    assert not types & DROPPED_TYPES
    assert "AWS::Events::Rule" in types and "AWS::Lambda::LayerVersion" in types
    assert OfflineManagedPolicyLoader().load()["AWSLambdaBasicExecutionRole"].startswith("arn:aws:iam::aws:policy/")


def test_a_real_reference_to_a_removed_resource_fails_loudly(template):
    template["Resources"]["PingFunction"]["Properties"].setdefault("Environment", {"Variables": {}})
    template["Resources"]["PingFunction"]["Properties"]["Environment"]["Variables"]["DEPLOYMENT"] = {"Ref": "Deployment"}
    with pytest.raises(AdaptError, match="Deployment"):
        adapt_for_emulator(template, endpoint=ENDPOINT)


def test_resolver_resolves_refs_and_subs_and_refuses_the_unknown():
    resolve = Intrinsics(resources={"Api": "abc123"}, parameters={"StageName": "e2e"}, region="us-east-1")
    assert resolve({"Fn::Sub": "${Api}/${StageName}@${AWS::Region}"}) == "abc123/e2e@us-east-1"
    with pytest.raises(Unresolved):
        resolve({"Ref": "Missing"})


def test_nested_container_stacks_are_removed_with_their_outputs(template):
    template["Parameters"]["FanoutImage"] = {"Type": "String"}  # no default: only the nested stack needs it
    template["Resources"]["FanoutService"] = {
        "Type": "AWS::CloudFormation::Stack",
        "Properties": {"TemplateURL": "infra/fanout-service.yaml",
                       "Parameters": {"ConnectionsTable": {"Ref": "ConnectionsTable"},
                                      "Image": {"Ref": "FanoutImage"}}},
    }
    template["Resources"]["SseService"] = {
        "Type": "AWS::Serverless::Application",
        "Properties": {"Location": "infra/sse-service.yaml"},
    }
    template.setdefault("Outputs", {})["SseUrl"] = {"Value": {"Fn::GetAtt": ["SseService", "Outputs.Url"]}}
    adapted = adapt_for_emulator(template, endpoint=ENDPOINT)
    assert {"FanoutService", "SseService"} <= adapted.removed.keys()
    assert "SseUrl" not in adapted.template["Outputs"]
    assert "WebSocketUrl" in adapted.template["Outputs"]
    assert "FanoutImage" not in adapted.template["Parameters"]
    assert {"StageName", "RedisUrl", "JwtSecret"} <= adapted.template["Parameters"].keys()


def test_every_function_gets_a_harmless_event_shaped_like_its_trigger(template):
    from rtstream_cli.localstack.smoke import harmless_event, triggers

    wiring = triggers(template)
    functions = {k for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
    assert set(wiring) == functions
    assert wiring["AuthorizerFunction"].kind == "authorizer"
    assert {wiring[f].route_key for f in functions if wiring[f].kind == "route"} == {
        "$connect", "$disconnect", "subscribe", "unsubscribe", "ping", "presence", "$default"}
    assert wiring["HousekeepingFunction"].kind == "schedule"
    assert wiring["EventBridgeBridgeFunction"].kind == "eventbridge"
    kw = dict(api_id="api1", stage="dev", region="us-east-1", account_id="000000000000")
    authorizer = harmless_event(wiring["AuthorizerFunction"], **kw)
    assert authorizer["type"] == "REQUEST" and authorizer["queryStringParameters"] == {} and authorizer["headers"] == {}
    for f in functions:
        event = harmless_event(wiring[f], **kw)
        if wiring[f].kind == "route":
            assert "authorizer" not in event["requestContext"]  # fails closed: no principal
    bridge = harmless_event(wiring["EventBridgeBridgeFunction"], **kw)
    from rtstream.errors import RealtimeError
    from rtstream.publishing import parse_eventbridge

    with pytest.raises(RealtimeError):  # the bridge drops it: nothing is published
        parse_eventbridge(bridge["detail-type"], bridge["detail"])
