"""template.yaml: lint-clean, transforms offline, and its wiring points at real code."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rtstream_cli.cloudformation import load_template, resources_of_type

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
ROUTE_KEYS = {"$connect", "$disconnect", "subscribe", "unsubscribe", "ping", "presence", "$default"}


@pytest.fixture(scope="module")
def template():
    return load_template(TEMPLATE)


def ref(value):
    """The logical id inside a Ref / GetAtt / integrations/${X} / ...${X.Arn}/invocations."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            return value["Fn::GetAtt"][0]
        if "Fn::Sub" in value:
            value = value["Fn::Sub"]
    if isinstance(value, str):
        ids = [m.split(".")[0] for m in re.findall(r"\$\{([A-Za-z0-9.:]+)\}", value) if not m.startswith("AWS::")]
        return ids[-1] if ids else None
    return None


def test_cfn_lint_reports_nothing():
    # the cfn-lint command installed beside this interpreter (the dev extra)
    cli = Path(sys.executable).with_name("cfn-lint")
    assert cli.exists(), "cfn-lint is not installed (pip install -e '.[dev]')"
    proc = subprocess.run([str(cli), str(TEMPLATE)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


NESTED_TEMPLATES = sorted((ROOT / "infra").glob("*.yaml"))
SAM_VENV = ROOT / ".venv-sam"


def test_cfn_lint_reports_nothing_on_the_nested_templates():
    cli = Path(sys.executable).with_name("cfn-lint")
    assert {p.name for p in NESTED_TEMPLATES} >= {"fanout-service.yaml", "sse-service.yaml"}
    proc = subprocess.run([str(cli), *map(str, NESTED_TEMPLATES)], capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout.strip()) == (0, ""), proc.stdout + proc.stderr


def _sam_cli() -> Path:
    """.venv-sam/bin/sam, created by .ci/setup.d/sam.sh if missing (skip only if that fails)."""
    sam = SAM_VENV / "bin" / "sam"
    if not sam.exists():
        proc = subprocess.run(["bash", str(ROOT / ".ci" / "setup.d" / "sam.sh")], capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0 or not sam.exists():
            pytest.skip(f".venv-sam could not be created by .ci/setup.d/sam.sh:\n{(proc.stdout + proc.stderr)[-1500:]}")
    return sam


@pytest.mark.parametrize("path", [TEMPLATE, *NESTED_TEMPLATES], ids=lambda p: p.name)
def test_sam_validate_lint_passes(path):
    import os

    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    env = {k: v for k, v in env.items() if k != "AWS_ENDPOINT_URL"}
    proc = subprocess.run([str(_sam_cli()), "validate", "--lint", "--template", str(path)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{path} is a valid SAM Template" in proc.stdout + proc.stderr


def test_layer_claims_exactly_the_runtime_it_is_built_for(template):
    (layer,) = resources_of_type(template, "AWS::Serverless::LayerVersion").values()
    built_for = layer["Metadata"]["BuildMethod"]
    assert layer["Properties"]["CompatibleRuntimes"] == [built_for]
    assert template["Globals"]["Function"]["Runtime"] == built_for
    for fn in resources_of_type(template, "AWS::Serverless::Function").values():
        assert fn["Properties"].get("Runtime", built_for) == built_for


def test_eventbridge_failures_go_to_an_alarmed_dead_letter_queue(template):
    resources = template["Resources"]
    fn = resources["EventBridgeBridgeFunction"]["Properties"]
    (rule,) = [e["Properties"] for e in fn["Events"].values() if e["Type"] == "EventBridgeRule"]
    queue = rule["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
    assert resources[queue]["Type"] == "AWS::SQS::Queue"
    assert rule["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    # failures inside the function (async invoke) land in the same queue
    assert fn["EventInvokeConfig"]["DestinationConfig"]["OnFailure"] == {"Type": "SQS", "Destination": {"Fn::GetAtt": [queue, "Arn"]}}
    (policy,) = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::SQS::QueuePolicy"
                 and r["Properties"]["Queues"] == [{"Ref": queue}]]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
    alarms = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"
              and r["Properties"].get("Namespace") == "AWS/SQS"
              and {"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}} in r["Properties"]["Dimensions"]]
    assert len(alarms) == 1
    alarm = alarms[0]
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")


def test_eventbridge_dead_letter_policy_names_the_rule_sam_generates(monkeypatch):
    """The queue policy's SourceArn is the rule SAM creates for the event (logical id Function+Event)."""
    from rtstream_cli.localstack.transform import sam_to_cloudformation

    doc = json.loads(json.dumps(load_template(TEMPLATE)))
    for logical_id, resource in doc["Resources"].items():
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = f"s3://artifacts-bucket/{logical_id}.zip"
    out = sam_to_cloudformation(doc, {}, "us-east-1", "123456789012")["Resources"]
    policy = out["BridgeDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    rule_id = policy["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::GetAtt"][0]
    assert out[rule_id]["Type"] == "AWS::Events::Rule"
    (target,) = out[rule_id]["Properties"]["Targets"]
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["BridgeDeadLetterQueue", "Arn"]}}
    # the function's role may send its failed events there (async invoke on-failure destination)
    role = out["EventBridgeBridgeFunctionRole"]["Properties"]
    statements = [st for p in role.get("Policies", []) for st in p["PolicyDocument"]["Statement"]]
    assert {"Action": "sqs:SendMessage", "Effect": "Allow", "Resource": {"Fn::GetAtt": ["BridgeDeadLetterQueue", "Arn"]}} in statements


def test_readme_documents_that_other_event_sources_are_ignored(template):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploy to AWS", 1)[1].split("\n## ", 1)[0]
    assert "EventSource" in section and "ignored" in section and "--event-source" in section


def test_sam_transform_offline(monkeypatch):
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    doc = yaml_parse(TEMPLATE.read_text())
    # What `sam package` does: local code paths become S3 objects.
    for logical_id, resource in doc["Resources"].items():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = f"s3://artifacts-bucket/{logical_id}.zip"

    class OfflinePolicies:
        """Managed policy names -> ARNs without calling IAM (the translator's only network use)."""

        def load(self):
            return {
                "AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
                "AWSXrayWriteOnlyAccess": "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
                "AWSLambdaVPCAccessExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
            }

    out = transform(doc, {}, OfflinePolicies())
    resources = out["Resources"]
    functions = {k for k, v in resources.items() if v["Type"] == "AWS::Lambda::Function"}
    assert {"AuthorizerFunction", "ConnectFunction", "DisconnectFunction", "SubscribeFunction", "UnsubscribeFunction",
            "PingFunction", "PresenceFunction", "DefaultFunction", "EventBridgeBridgeFunction"} <= functions
    assert any(v["Type"] == "AWS::Lambda::LayerVersion" for v in resources.values())
    assert any(v["Type"] == "AWS::Events::Rule" for v in resources.values())
    for name in functions:
        props = resources[name]["Properties"]
        assert props["Runtime"] >= "python3.12"
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["Environment"]["Variables"]["CONNECTIONS_TABLE"] == {"Ref": "ConnectionsTable"}
    json.dumps(out)  # a plain CloudFormation document


def test_api_is_websocket_with_type_route_selection(template):
    (api,) = resources_of_type(template, "AWS::ApiGatewayV2::Api").values()
    assert api["Properties"]["ProtocolType"] == "WEBSOCKET"
    assert api["Properties"]["RouteSelectionExpression"] == "$request.body.type"


def test_every_route_has_integration_handler_permission_and_response(template):
    routes = resources_of_type(template, "AWS::ApiGatewayV2::Route")
    integrations = resources_of_type(template, "AWS::ApiGatewayV2::Integration")
    functions = resources_of_type(template, "AWS::Serverless::Function")
    permissions = resources_of_type(template, "AWS::Lambda::Permission")
    responses = resources_of_type(template, "AWS::ApiGatewayV2::RouteResponse")
    globals_ = template["Globals"]["Function"]
    seen = set()
    for route_id, route in routes.items():
        props = route["Properties"]
        key = props["RouteKey"]
        seen.add(key)
        integration_id = ref(props["Target"])
        integration = integrations[integration_id]["Properties"]
        assert integration["IntegrationType"] == "AWS_PROXY"
        function_id = ref(integration["IntegrationUri"])
        function = functions[function_id]["Properties"]
        code = ROOT / function["CodeUri"]
        module, _, attr = function.get("Handler", globals_["Handler"]).partition(".")
        source = code / f"{module}.py"
        assert source.is_file(), f"{key}: {source} missing"
        body = ast.parse(source.read_text()).body
        # `def handler` or `handler = build_handler(...)` at module level
        defined = {n.name for n in body if isinstance(n, ast.FunctionDef)}
        defined |= {t.id for n in body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert attr in defined, f"{source} defines no {attr}()"
        perms = [p["Properties"] for p in permissions.values() if ref(p["Properties"]["FunctionName"]) == function_id]
        assert perms, f"{function_id} has no Lambda permission"
        assert all(p["Principal"] == "apigateway.amazonaws.com" and p["Action"] == "lambda:InvokeFunction" for p in perms)
        assert any(p["SourceArn"]["Fn::Sub"].endswith(f"/*/{key}") for p in perms), f"{key}: permission not scoped to the route"
        if key not in ("$connect", "$disconnect"):
            assert props["RouteResponseSelectionExpression"] == "$default"
            assert any(ref(r["Properties"]["RouteId"]) == route_id and r["Properties"]["RouteResponseKey"] == "$default" for r in responses.values())
    assert seen == ROUTE_KEYS


def test_connect_has_request_authorizer_with_permission(template):
    routes = resources_of_type(template, "AWS::ApiGatewayV2::Route")
    (connect,) = [r["Properties"] for r in routes.values() if r["Properties"]["RouteKey"] == "$connect"]
    assert connect["AuthorizationType"] == "CUSTOM"
    authorizer_id = ref(connect["AuthorizerId"])
    authorizer = template["Resources"][authorizer_id]["Properties"]
    assert authorizer["AuthorizerType"] == "REQUEST"
    function_id = ref(authorizer["AuthorizerUri"])
    assert (ROOT / template["Resources"][function_id]["Properties"]["CodeUri"] / "app.py").is_file()
    perms = [p["Properties"] for p in resources_of_type(template, "AWS::Lambda::Permission").values() if ref(p["Properties"]["FunctionName"]) == function_id]
    assert any("/authorizers/" in p["SourceArn"]["Fn::Sub"] for p in perms)
    others = [r["Properties"] for r in routes.values() if r["Properties"]["RouteKey"] != "$connect"]
    assert all(r["AuthorizationType"] == "NONE" for r in others)  # WebSocket: authorize once, on $connect


def test_stage_deployment_and_throttling(template):
    (stage,) = resources_of_type(template, "AWS::ApiGatewayV2::Stage").values()
    settings = stage["Properties"]["DefaultRouteSettings"]
    assert "ThrottlingRateLimit" in settings and "ThrottlingBurstLimit" in settings
    assert stage["Properties"]["StageName"] == {"Ref": "StageName"}
    (deployment,) = resources_of_type(template, "AWS::ApiGatewayV2::Deployment").values()
    routes = set(resources_of_type(template, "AWS::ApiGatewayV2::Route"))
    assert routes <= set(deployment["DependsOn"])  # deployed after every route exists


def test_tables_key_design(template):
    res = template["Resources"]
    conns = res["ConnectionsTable"]["Properties"]
    subs = res["SubscriptionsTable"]["Properties"]
    for props in (conns, subs):
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        # housekeeping's index: what expired in an hour bucket, by ttl
        by_expiry = next(g for g in props["GlobalSecondaryIndexes"] if g["IndexName"] == "byExpiry")
        assert by_expiry["KeySchema"] == [{"AttributeName": "expiryBucket", "KeyType": "HASH"}, {"AttributeName": "ttl", "KeyType": "RANGE"}]
    # connection records are purged natively only a day after ttl (housekeeping releases their admission slots first)
    assert conns["TimeToLiveSpecification"] == {"AttributeName": "purgeAt", "Enabled": True}
    assert subs["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert conns["KeySchema"] == [{"AttributeName": "connectionId", "KeyType": "HASH"}]
    assert {g["IndexName"] for g in conns["GlobalSecondaryIndexes"]} == {"byUser", "byEntity", "byExpiry"}
    assert subs["KeySchema"] == [{"AttributeName": "channel", "KeyType": "HASH"}, {"AttributeName": "connectionId", "KeyType": "RANGE"}]
    assert [g["IndexName"] for g in subs["GlobalSecondaryIndexes"]] == ["byConnection", "byExpiry"]


def test_least_privilege_iam(template):
    functions = resources_of_type(template, "AWS::Serverless::Function")
    for name, fn in functions.items():
        for policy in fn["Properties"].get("Policies", []):
            if "Fn::If" in policy:
                policy = policy["Fn::If"][1]
            assert isinstance(policy, dict) and "Statement" in policy, f"{name}: only explicit statements"
            for statement in policy["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert not any(a.endswith("*") for a in actions), f"{name}: wildcard action"
                resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                assert "*" not in resources, f"{name}: wildcard resource"
                if "execute-api:ManageConnections" in actions:
                    (arn,) = resources
                    assert "${WebSocketApi}/${StageName}/DELETE/@connections/*" in arn["Fn::Sub"]
                for action in actions:
                    if action.startswith("dynamodb:"):
                        assert all(ref(r) in ("ConnectionsTable", "SubscriptionsTable") for r in resources)


def test_functions_runtime_layer_and_environment(template):
    glob = template["Globals"]["Function"]
    assert glob["Runtime"] >= "python3.12"
    assert glob["Layers"] == [{"Ref": "CoreLayer"}]
    env = glob["Environment"]["Variables"]
    assert env["CONNECTIONS_TABLE"] == {"Ref": "ConnectionsTable"} and env["SUBSCRIPTIONS_TABLE"] == {"Ref": "SubscriptionsTable"}
    assert env["REDIS_URL"] == {"Ref": "RedisUrl"}
    layer = template["Resources"]["CoreLayer"]
    assert layer["Properties"]["ContentUri"] == "layers/core/"
    assert layer["Metadata"]["BuildMethod"] >= "python3.12"
    assert not (ROOT / "layers" / "core" / "python").exists()  # sam build creates it
    assert (ROOT / "layers" / "core" / "requirements.txt").is_file()
    assert template["Parameters"]["JwtSecret"]["NoEcho"] is True


def test_message_routes_share_one_handler_module_with_a_function_each(template):
    """One module answers every message route; each route keeps its own function
    (its own IAM policy and Lambda metrics)."""
    routes = ("Subscribe", "Unsubscribe", "Ping", "Presence", "Default")
    props = {r: template["Resources"][f"{r}Function"]["Properties"] for r in routes}
    assert {p["CodeUri"] for p in props.values()} == {"functions/messages/"}
    assert all("Handler" not in p for p in props.values()) and template["Globals"]["Function"]["Handler"] == "app.handler"
    assert (ROOT / "functions" / "messages" / "app.py").is_file()

    def actions(p):
        listed = [s["Action"] for s in p["Policies"][0]["Statement"]]
        return {a for action in listed for a in ([action] if isinstance(action, str) else action)}

    assert any(a.startswith("dynamodb:") for a in actions(props["Subscribe"]))
    assert not any(a.startswith("dynamodb:") for a in actions(props["Ping"]) | actions(props["Default"]))
    old = {"default", "ping", "presence", "subscribe", "unsubscribe"}
    assert not old & {p.name for p in (ROOT / "functions").iterdir()}


def test_eventbridge_bridge_rule(template):
    fn = template["Resources"]["EventBridgeBridgeFunction"]["Properties"]
    assert fn["CodeUri"] == "functions/eventbridge_bridge/"
    (event,) = fn["Events"].values()
    assert event["Type"] == "EventBridgeRule"
    assert event["Properties"]["EventBusName"] == {"Ref": "EventBusName"}
    pattern = event["Properties"]["Pattern"]
    assert sorted(pattern["detail-type"]) == sorted(["transactions.new", "agent.action.completed", "balance.updated", "sync.completed"])
    assert pattern["source"] == [{"Ref": "EventSource"}]


def test_outputs(template):
    outputs = template["Outputs"]
    assert outputs["WebSocketUrl"]["Value"]["Fn::Sub"].startswith("wss://${WebSocketApi}.execute-api.${AWS::Region}.amazonaws.com/")
    assert outputs["ManagementEndpoint"]["Value"]["Fn::Sub"] == "https://${WebSocketApi}.execute-api.${AWS::Region}.amazonaws.com/${StageName}"
    for name in ("ConnectionsTableName", "SubscriptionsTableName", "WebSocketApiId"):
        assert name in outputs


def test_container_services_marker_present():
    assert "# ---- Container services (nested stacks under infra/) ----" in TEMPLATE.read_text()


def test_samconfig_environments_use_template_parameters(template):
    import shlex
    import tomllib

    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for env in ("dev", "prod"):
        deploy = config[env]["deploy"]["parameters"]
        assert config[env]["global"]["parameters"]["stack_name"].endswith(env)
        assert "CAPABILITY_IAM" in deploy["capabilities"]
        names = {pair.split("=", 1)[0] for pair in shlex.split(deploy["parameter_overrides"])}
        assert names <= set(template["Parameters"]), names - set(template["Parameters"])
        assert "JwtSecret" not in names  # secrets never live in the config file
        values = dict(pair.split("=", 1) for pair in shlex.split(deploy["parameter_overrides"]))
        # ElastiCache is reachable only from inside the VPC: the Lambdas and both services run there
        assert values["VpcSubnetIds"] and values["VpcSecurityGroupIds"], env
        assert values["FanoutImage"] and values["SseImage"] and values["SseCertificateArn"].startswith("arn:aws:acm:")
        # a token key for every task and function: an SSM parameter or a JWKS URL
        assert bool(values.get("JwtSecretParameterName")) != bool(values.get("JwksUrl")), env
    # `sam deploy` without --config-env deploys nothing half-configured
    assert "deploy" not in config["default"]


def test_alarms_and_dashboards_of_the_seed(template):
    from rtstream import metrics as names

    known = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and v.startswith("realtime_streaming.")}
    alarms = resources_of_type(template, "AWS::CloudWatch::Alarm")
    alarm_names = {a["Properties"]["AlarmName"]["Fn::Sub"].split("-")[0] for a in alarms.values()}
    assert {names.ALARM_CONNECTION_DROP_HIGH, names.ALARM_LATENCY_DEGRADED, names.ALARM_DEAD_LETTERS} <= alarm_names
    assert all(name.startswith("realtime_streaming.") for name in alarm_names)
    for alarm in alarms.values():
        if alarm["Properties"]["Namespace"].startswith("AWS/"):  # an AWS metric (e.g. a dead-letter queue's depth)
            continue
        assert alarm["Properties"]["MetricName"] in known
        assert alarm["Properties"]["Namespace"] == names.NAMESPACE
    dashboards = resources_of_type(template, "AWS::CloudWatch::Dashboard")
    assert {d["Properties"]["DashboardName"]["Fn::Sub"].split("-")[0] for d in dashboards.values()} == {names.DASHBOARD_HEALTH, names.DASHBOARD_PERFORMANCE}
    for dashboard in dashboards.values():
        body = re.sub(r"\$\{[^}]+\}", "X", dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
        widgets = json.loads(body)["widgets"]
        assert widgets
        used = set(re.findall(r"realtime_streaming\.[a-z_]+", body))
        assert used <= known, used - known


def test_housekeeping_runs_every_minute_with_index_rights_and_no_scan(template):
    fn = template["Resources"]["HousekeepingFunction"]["Properties"]
    assert (ROOT / fn["CodeUri"] / "app.py").is_file()
    (event,) = fn["Events"].values()
    assert event["Type"] == "Schedule" and event["Properties"]["Schedule"] == "rate(1 minute)"
    assert fn["Timeout"] >= 30  # a bounded sweep (rtstream.hygiene) fits
    (statement,) = fn["Policies"][0]["Statement"]
    # the sweep and the count Query the byExpiry indexes of both tables; a Scan would grow with the table
    assert {"dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"} <= set(statement["Action"])
    assert "dynamodb:Scan" not in statement["Action"]
    assert {"${ConnectionsTable.Arn}/index/*", "${SubscriptionsTable.Arn}/index/*"} <= {r["Fn::Sub"] for r in statement["Resource"] if "Fn::Sub" in r}
    assert {ref(r) for r in statement["Resource"]} >= {"ConnectionsTable", "SubscriptionsTable"}


def test_alarms_notify_the_sns_topic_parameter(template):
    assert template["Parameters"]["AlarmTopicArn"]["Type"] == "String"
    for alarm in resources_of_type(template, "AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        for key in ("AlarmActions", "OKActions"):
            condition, (topic,), _ = props[key]["Fn::If"]
            assert condition == "HasAlarmTopic" and topic == {"Ref": "AlarmTopicArn"}
        assert props["TreatMissingData"] == "notBreaching"


def _publish_cli(*argv: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from rtstream_cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["publish", *argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_publish_via_eventbridge_sends_the_configured_source_and_refuses_another(moto_endpoint, monkeypatch, tmp_path):
    """What the bridge rule (template pattern) receives: only the configured EventSource."""
    import boto3

    from rtstream_cli.eventbridge_local import rule_pattern

    monkeypatch.setenv("HOME", str(tmp_path))  # no running dev system's state
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("RTSTREAM_EVENT_SOURCE", raising=False)
    bus = f"bus-{tmp_path.name[-12:]}".replace("_", "-")
    kw = dict(endpoint_url=moto_endpoint, region_name="us-east-1")
    events, sqs = boto3.client("events", **kw), boto3.client("sqs", **kw)
    events.create_event_bus(Name=bus)
    queue_url = sqs.create_queue(QueueName=bus)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    configured = load_template(TEMPLATE)["Parameters"]["EventSource"]["Default"]
    events.put_rule(Name="bridge", EventBusName=bus, EventPattern=json.dumps(rule_pattern(configured)))
    events.put_targets(Rule="bridge", EventBusName=bus, Targets=[{"Id": "q", "Arn": queue_arn}])
    common = ("transactions.new", "--entity", "e1", "--data", '{"transactionId":"t1","amount":1,"merchant":"m"}',
              "--via", "eventbridge", "--aws-endpoint", moto_endpoint, "--event-bus", bus)

    def received() -> list[dict]:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        for m in messages:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
        return [json.loads(m["Body"]) for m in messages]

    code, out, err = _publish_cli(*common)
    assert code == 0, err
    assert [e["source"] for e in received()] == [configured]

    code, out, err = _publish_cli(*common, "--event-source", "someone-else")
    assert code == 2 and out == ""
    assert "error: invalid_message:" in err and repr(configured) in err and "--force-event-source" in err
    assert received() == []  # nothing was sent

    code, out, err = _publish_cli(*common, "--event-source", "someone-else", "--force-event-source")
    assert code == 0 and "warning:" in err
    assert received() == []  # sent, and ignored by the rule, as the warning says

    monkeypatch.setenv("RTSTREAM_EVENT_SOURCE", "custom-source")  # a stack deployed with EventSource=custom-source
    code, out, err = _publish_cli(*common)
    assert code == 0 and received() == []  # this rule still matches only the template default
    code, out, err = _publish_cli(*common, "--event-source", configured)
    assert code == 2 and "'custom-source'" in err
