"""Deploy / describe / destroy the stack through CloudFormation at a
LocalStack-compatible endpoint (LocalStack, MiniStack)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

DEFAULT_STACK = "rtstream-local"
DEFAULT_REGION = "us-east-1"
_CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
_FAILED = ("CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "ROLLBACK_IN_PROGRESS",
           "UPDATE_ROLLBACK_COMPLETE", "UPDATE_ROLLBACK_FAILED", "UPDATE_FAILED", "DELETE_FAILED")


class DeployError(RuntimeError):
    """The stack did not deploy; the message carries the failed resources' reasons."""


def default_endpoint() -> str:
    """``AWS_ENDPOINT_URL``, else ``LOCALSTACK_HOST``, else http://localhost:4566 (localstack-client's rules)."""
    from localstack_client.config import get_service_endpoint

    return get_service_endpoint("cloudformation") or "http://localhost:4566"


def client_factory(endpoint: str, region: str = DEFAULT_REGION) -> Callable[[str], Any]:
    """boto3 clients for ``endpoint``. Emulators accept any credentials; real
    ones are never needed, so LocalStack's ``test``/``test`` fill in when unset."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID") or "test",
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or "test",
        aws_session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        region_name=region,
    )
    # path-style S3: "<bucket>.localhost" does not resolve everywhere
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                    s3={"addressing_style": "path"})
    cache: dict[str, Any] = {}

    def clients(service: str):
        if service not in cache:
            cache[service] = session.client(service, endpoint_url=endpoint, config=config)
        return cache[service]

    return clients


@dataclass
class DeployedStack:
    stack_name: str
    endpoint: str
    region: str
    api_id: str
    stage: str
    websocket_url: str  # ws://… clients connect to (append ?token=JWT)
    management_endpoint: str  # boto3 apigatewaymanagementapi endpoint_url
    connections_table: str
    subscriptions_table: str
    event_bus: str
    outputs: dict[str, str] = field(default_factory=dict)
    functions: dict[str, str] = field(default_factory=dict)  # logical id -> function name
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def management_url(self) -> str:
        return f"{self.management_endpoint}/@connections"

    def service_env(self, redis_url: str, jwt_secret: str) -> dict[str, str]:
        """Environment (``Settings.from_env`` names) for the fan-out worker and
        SSE server running against this stack."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID") or "test",
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY") or "test",
            "CONNECTIONS_TABLE": self.connections_table,
            "SUBSCRIPTIONS_TABLE": self.subscriptions_table,
            "RTSTREAM_MANAGEMENT_ENDPOINT": self.management_endpoint,
            "REDIS_URL": redis_url,
            "RTSTREAM_JWT_SECRET": jwt_secret,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _host_resolves(url: str) -> bool:
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        socket.getaddrinfo(host, None)
        return True
    except OSError:
        return False


def _api_urls(endpoint: str, api_endpoint: str, api_id: str, stage: str) -> tuple[str, str]:
    """(WebSocket URL, management endpoint) for an API the emulator serves.

    The emulator's own ``ApiEndpoint`` (``{id}.execute-api.<host>:<port>``)
    when that name resolves here, else the LocalStack-compatible path form
    ``<endpoint>/_aws/execute-api/{id}/{stage}`` that both LocalStack and
    MiniStack serve (``*.localhost`` does not resolve on every machine).
    """
    if api_endpoint and _host_resolves(api_endpoint):
        base = f"{api_endpoint.rstrip('/')}/{stage}"
    else:
        base = f"{endpoint.rstrip('/')}/_aws/execute-api/{api_id}/{stage}"
    parsed = urlparse(base)
    http_scheme = "https" if parsed.scheme in ("https", "wss") else "http"
    ws_scheme = "wss" if http_scheme == "https" else "ws"
    rest = base.split("://", 1)[1]
    return f"{ws_scheme}://{rest}", f"{http_scheme}://{rest}"


def _stack(cfn, name: str) -> dict[str, Any] | None:
    try:
        stacks = cfn.describe_stacks(StackName=name).get("Stacks", [])
    except Exception as exc:  # botocore ClientError "does not exist"
        if "does not exist" in str(exc):
            return None
        raise
    live = [s for s in stacks if s.get("StackStatus") != "DELETE_COMPLETE"]
    return live[0] if live else None


def _failure_reasons(cfn, name: str) -> str:
    try:
        events = cfn.describe_stack_events(StackName=name).get("StackEvents", [])
    except Exception as exc:
        return f"(no stack events: {exc})"
    lines = [f"{e.get('LogicalResourceId')} ({e.get('ResourceType')}): {e.get('ResourceStatus')} "
             f"{e.get('ResourceStatusReason', '')}".rstrip()
             for e in events if str(e.get("ResourceStatus", "")).endswith("FAILED")]
    return "\n".join(reversed(lines)) or "(no failed resource events)"


def _wait(cfn, name: str, done: tuple[str, ...], timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    stack = None
    while time.monotonic() < deadline:
        stack = _stack(cfn, name)
        status = stack.get("StackStatus") if stack else "DELETE_COMPLETE"
        if status in done:
            return stack
        if status in _FAILED:
            raise DeployError(f"stack {name}: {status} {stack.get('StackStatusReason', '') if stack else ''}\n"
                              f"{_failure_reasons(cfn, name)}")
        time.sleep(0.5)
    raise DeployError(f"stack {name} not done within {timeout:.0f}s (last: {stack and stack.get('StackStatus')})")


def _physical_ids(cfn, name: str) -> dict[str, dict[str, str]]:
    out = {}
    for res in cfn.describe_stack_resources(StackName=name).get("StackResources", []):
        out[res["LogicalResourceId"]] = {"id": res.get("PhysicalResourceId", ""), "type": res.get("ResourceType", "")}
    return out


def describe_deployed(endpoint: str | None = None, stack_name: str = DEFAULT_STACK,
                      region: str = DEFAULT_REGION) -> DeployedStack:
    """Endpoints and tables of a deployed stack: its Outputs (WebSocketUrl,
    ManagementEndpoint, ConnectionsTableName, SubscriptionsTableName,
    WebSocketApiId), falling back to its resources for any that are missing."""
    endpoint = (endpoint or default_endpoint()).rstrip("/")
    clients = client_factory(endpoint, region)
    cfn = clients("cloudformation")
    stack = _stack(cfn, stack_name)
    if not stack:
        raise DeployError(f"no stack {stack_name} at {endpoint}")
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", [])}
    resources = _physical_ids(cfn, stack_name)

    def of_type(rtype: str) -> dict[str, str]:
        return {lid: r["id"] for lid, r in resources.items() if r["type"] == rtype}

    apis = of_type("AWS::ApiGatewayV2::Api")
    api_id = outputs.get("WebSocketApiId") or (next(iter(apis.values())) if len(apis) == 1 else "")
    if not api_id:
        raise DeployError(f"{stack_name}: no WebSocketApiId output and {len(apis)} APIs")
    apigw = clients("apigatewayv2")
    stages = [s["StageName"] for s in apigw.get_stages(ApiId=api_id).get("Items", [])]
    if not stages:
        raise DeployError(f"API {api_id} has no stage")
    stage = stages[0]
    ws_url, management = outputs.get("WebSocketUrl"), outputs.get("ManagementEndpoint")
    if not (ws_url and management) or "amazonaws.com" in ws_url + management:
        ws_url, management = _api_urls(endpoint, apigw.get_api(ApiId=api_id).get("ApiEndpoint", ""), api_id, stage)

    tables = of_type("AWS::DynamoDB::Table")

    def table(output: str, logical_id: str) -> str:
        name = outputs.get(output) or tables.get(logical_id)
        if not name:
            raise DeployError(f"stack {stack_name} has no output {output} nor table {logical_id}")
        return name

    buses = set()
    for rule in of_type("AWS::Events::Rule").values():
        name = rule.split("|")[-1]
        bus = rule.split("|")[0] if "|" in rule else None
        try:
            bus = clients("events").describe_rule(Name=name, **({"EventBusName": bus} if bus else {})).get("EventBusName")
        except Exception:  # a rule the emulator cannot describe: the default bus
            bus = bus or "default"
        buses.add(bus or "default")
    event_bus = sorted(buses)[0] if buses else "default"
    return DeployedStack(
        stack_name=stack_name, endpoint=endpoint, region=region, api_id=api_id, stage=stage,
        websocket_url=ws_url, management_endpoint=management.rstrip("/"),
        connections_table=table("ConnectionsTableName", "ConnectionsTable"),
        subscriptions_table=table("SubscriptionsTableName", "SubscriptionsTable"),
        event_bus=event_bus, outputs=outputs, functions=of_type("AWS::Lambda::Function"),
    )


def deploy_stack(
    endpoint: str | None = None,
    stack_name: str = DEFAULT_STACK,
    template_path: str | Path | None = None,
    parameters: dict[str, str] | None = None,
    region: str = DEFAULT_REGION,
    python_version: str | None = None,
    lambda_endpoint: str | None = None,
    slim: bool = False,
    verify_wiring: bool = True,
    invoke_check: bool = True,
    timeout: float = 300.0,
    log: Callable[[str], None] = lambda _msg: None,
) -> DeployedStack:
    """Build, package, transform, adapt and deploy ``template_path``; return its endpoints.

    ``parameters`` are CloudFormation parameter values (only ones the
    template declares are passed; an unknown one is an error).
    ``lambda_endpoint`` is the emulator as the Lambdas reach it (default:
    ``endpoint``; LocalStack's containers: http://localhost.localstack.cloud:4566).
    ``verify_wiring`` fails the deploy when AWS would refuse an invoke the
    emulator allows (missing function or ``AWS::Lambda::Permission``; see
    ``verify``); the stack is left in place for inspection.
    ``python_version`` None: the version the emulator runs Lambdas with, found
    by a probe function (``smoke.lambda_python``); a given one that differs
    from it is refused with the flag to pass. ``invoke_check`` invokes every
    function once with a harmless event and fails the deploy with the error of
    any function that cannot run (``smoke.smoke_invoke``).
    """
    from rtstream_cli.cloudformation import TEMPLATE_PATH, Intrinsics, load_template

    from .adapt import ADAPTATIONS, adapt_for_emulator
    from .build import build_artifacts
    from .transform import artifact_bucket, package, sam_to_cloudformation

    endpoint = (endpoint or default_endpoint()).rstrip("/")
    template_path = Path(template_path or TEMPLATE_PATH).resolve()
    clients = client_factory(endpoint, region)
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    template = json.loads(json.dumps(load_template(template_path)))  # deep copy of the cached parse
    declared = template.get("Parameters") or {}
    parameters = {k: v for k, v in (parameters or {}).items() if v is not None}
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise DeployError(f"{template_path.name} declares no parameter(s) {unknown}")

    from .smoke import SmokeError, lambda_python

    account_id = clients("sts").get_caller_identity()["Account"]
    runtime = str(((template.get("Globals") or {}).get("Function") or {}).get("Runtime") or "python3.12")
    try:
        emulator_python = lambda_python(clients, runtime, account_id)
    except SmokeError as exc:
        raise DeployError(f"could not find the Python the emulator runs Lambdas with ({exc}); "
                          "pass --lambda-python X.Y (its interpreter's version)") from exc
    timings["probe_s"] = time.monotonic() - t0
    if python_version and python_version != emulator_python:
        raise DeployError(f"the emulator runs {runtime} Lambdas with Python {emulator_python}, not {python_version}: "
                          f"dependencies built for {python_version} would not import there; "
                          f"pass --lambda-python {emulator_python}")
    if emulator_python != runtime.removeprefix("python"):
        log(f"the emulator runs {runtime} Lambdas with Python {emulator_python}: building for {emulator_python}")
    python_version = emulator_python

    build_dir = Path(tempfile.mkdtemp(prefix="rtstream-deploy-local-"))
    try:
        log(f"building layers and functions (python {python_version}) in {build_dir}")
        artifacts = build_artifacts(template, template_path.parent, build_dir, python_version=python_version, slim=slim)
        timings["build_s"] = time.monotonic() - t0 - timings["probe_s"]

        adapted = adapt_for_emulator(template, endpoint=endpoint, lambda_endpoint=lambda_endpoint)
        for what, why in ADAPTATIONS:
            log(f"adapt: {what} ({why})")
        bucket = artifact_bucket(account_id, region)
        packaged = package(adapted.template, artifacts, clients("s3"), bucket, stack_name)
        timings["package_s"] = time.monotonic() - t0 - timings["build_s"] - timings["probe_s"]
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)

    cfn_template = sam_to_cloudformation(packaged, parameters, region, account_id)

    cfn = clients("cloudformation")
    existing = _stack(cfn, stack_name)
    if existing and existing["StackStatus"] in _FAILED + ("ROLLBACK_COMPLETE", "CREATE_FAILED"):
        log(f"deleting failed stack {stack_name} ({existing['StackStatus']})")
        cfn.delete_stack(StackName=stack_name)
        _wait(cfn, stack_name, ("DELETE_COMPLETE",), timeout)
        existing = None
    call = dict(
        StackName=stack_name, TemplateBody=json.dumps(cfn_template),
        # (an adaptation may have removed a parameter only a removed nested stack used)
        Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()
                    if k in (cfn_template.get("Parameters") or {})],
        Capabilities=_CAPABILITIES,
    )
    t_deploy = time.monotonic()
    if existing:
        log(f"updating stack {stack_name} at {endpoint}")
        try:
            cfn.update_stack(**call)
            _wait(cfn, stack_name, ("UPDATE_COMPLETE",), timeout)
        except Exception as exc:
            if "No updates are to be performed" not in str(exc):
                raise
    else:
        log(f"creating stack {stack_name} at {endpoint}")
        cfn.create_stack(**call)
        _wait(cfn, stack_name, ("CREATE_COMPLETE",), timeout)
    timings["cloudformation_s"] = time.monotonic() - t_deploy

    resources = _physical_ids(cfn, stack_name)
    resolver = Intrinsics(
        adapted.template, region=region, stack_name=stack_name, pseudo={"AWS::AccountId": account_id},
        resources={lid: r["id"] for lid, r in resources.items()}, parameters=parameters,
    )
    for step in adapted.steps:
        log(f"post-deploy: {step.description}")
        step.apply(resolver, clients)

    if verify_wiring:
        from .verify import wiring_problems

        problems = wiring_problems(
            clients,
            api_ids=[r["id"] for r in resources.values() if r["type"] == "AWS::ApiGatewayV2::Api"],
            rule_names=[r["id"] for r in resources.values() if r["type"] == "AWS::Events::Rule"],
            region=region, account_id=account_id,
        )
        if problems:
            raise DeployError(f"stack {stack_name} deployed, but AWS would refuse these invokes "
                              "(the emulator does not enforce them):\n  " + "\n  ".join(problems))
        log("wiring verified: every route, authorizer and rule target can invoke its function")

    deployed = describe_deployed(endpoint, stack_name, region)
    if invoke_check:
        from .smoke import smoke_invoke

        t_invoke = time.monotonic()
        problems = smoke_invoke(clients, template, deployed.functions, api_id=deployed.api_id, stage=deployed.stage,
                                region=region, account_id=account_id)
        timings["invoke_check_s"] = time.monotonic() - t_invoke
        if problems:
            raise DeployError(f"stack {stack_name} deployed, but these functions cannot run at the emulator "
                              f"(built for Python {python_version}):\n  " + "\n  ".join(problems))
        log(f"every function ran once with a harmless event ({len(deployed.functions)} functions, Python {python_version})")
    timings["total_s"] = time.monotonic() - t0
    deployed.timings = {k: round(v, 2) for k, v in timings.items()}
    return deployed


def destroy_stack(endpoint: str | None = None, stack_name: str = DEFAULT_STACK, region: str = DEFAULT_REGION,
                  timeout: float = 120.0, log: Callable[[str], None] = lambda _msg: None) -> bool:
    """Delete the stack and its uploaded code; False if there was no stack."""
    from .transform import artifact_bucket

    endpoint = (endpoint or default_endpoint()).rstrip("/")
    clients = client_factory(endpoint, region)
    cfn = clients("cloudformation")
    if not _stack(cfn, stack_name):
        log(f"no stack {stack_name} at {endpoint}")
        return False
    log(f"deleting stack {stack_name} at {endpoint}")
    cfn.delete_stack(StackName=stack_name)
    _wait(cfn, stack_name, ("DELETE_COMPLETE",), timeout)
    s3 = clients("s3")
    try:
        bucket = artifact_bucket(clients("sts").get_caller_identity()["Account"], region)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{stack_name}/"):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
    except Exception as exc:  # the bucket may never have been created
        log(f"artifacts not removed: {exc}")
    return True
