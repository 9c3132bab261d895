"""What deploy-local checks at the emulator besides the CloudFormation status.

- ``lambda_python``: the Python version the emulator runs Lambdas with, found
  by invoking a throwaway probe function. MiniStack runs every Lambda with its
  own interpreter whatever ``Runtime`` says; LocalStack honours ``Runtime``.
  Dependencies built for another version do not import (compiled wheels are
  per interpreter), so the build must target what the probe reports.
- ``smoke_invoke``: every function of the deployed stack, invoked once with a
  harmless event shaped like what its trigger sends (an authorizer request
  without a token, a route event without authorizer context, a scheduled
  event, an EventBridge event of a type the bridge drops). A function that
  cannot run (import error, crash) fails the deploy with its own error, instead
  of a stack that answers every client with 500.
"""

from __future__ import annotations

import io
import json
import re
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

_PROBE_SOURCE = 'import sys\n\ndef handler(event, context):\n    return {"python": "%d.%d" % sys.version_info[:2]}\n'
_SUB_REF = re.compile(r"\$\{([A-Za-z0-9]+)(?:\.Arn)?\}")


class SmokeError(RuntimeError):
    """The emulator's Lambda Python could not be found, or a function cannot run."""


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def _payload(reply: dict[str, Any]) -> Any:
    raw = reply["Payload"].read()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")


def _wait_active(lambda_client, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = lambda_client.get_function_configuration(FunctionName=name).get("State") or "Active"
        if state == "Active":
            return
        if state == "Failed" or time.monotonic() > deadline:
            raise SmokeError(f"probe function {name} did not become Active ({state})")
        time.sleep(0.3)


def lambda_python(clients: Callable[[str], Any], runtime: str, account_id: str, timeout: float = 120.0) -> str:
    """``"X.Y"``: the Python a function declared with ``runtime`` actually runs on at the emulator."""
    lambda_client = clients("lambda")
    name = f"rtstream-python-probe-{uuid.uuid4().hex[:8]}"
    try:
        lambda_client.create_function(
            FunctionName=name, Runtime=runtime, Handler="probe.handler", Timeout=30,
            Role=f"arn:aws:iam::{account_id}:role/rtstream-python-probe",  # emulators do not assume it
            Code={"ZipFile": _zip({"probe.py": _PROBE_SOURCE})},
        )
        _wait_active(lambda_client, name, timeout)
        reply = lambda_client.invoke(FunctionName=name, Payload=b"{}")
        payload = _payload(reply)
        if reply.get("FunctionError") or not isinstance(payload, dict) or not re.fullmatch(r"3\.\d+", str(payload.get("python"))):
            raise SmokeError(f"the probe function answered {payload!r}")
        return payload["python"]
    finally:
        try:
            lambda_client.delete_function(FunctionName=name)
        except Exception:  # noqa: BLE001 - never created, or already gone
            pass


# ---- one harmless event per function, from how the template wires it -----------------


@dataclass(frozen=True)
class Trigger:
    kind: str  # "authorizer" | "route" | "schedule" | "eventbridge" | "direct"
    route_key: str = ""


def _referenced_function(value: Any) -> str | None:
    """The logical id in ``…functions/${X.Arn}/invocations`` (Fn::Sub) or a Ref/GetAtt."""
    if isinstance(value, dict):
        if "Fn::Sub" in value:
            text = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
            ids = [m for m in _SUB_REF.findall(text) if m not in ("AWS",)]
            return ids[-1] if ids else None
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return target[0] if isinstance(target, list) else str(target).split(".", 1)[0]
        if "Ref" in value:
            return value["Ref"]
    return None


def triggers(template: dict[str, Any]) -> dict[str, Trigger]:
    """``{function logical id: Trigger}`` for every ``AWS::Serverless::Function``."""
    resources = template.get("Resources") or {}
    out: dict[str, Trigger] = {}
    integrations: dict[str, str] = {}
    for logical_id, res in resources.items():
        props = res.get("Properties") or {}
        if res.get("Type") == "AWS::ApiGatewayV2::Authorizer":
            fn = _referenced_function(props.get("AuthorizerUri"))
            if fn:
                out[fn] = Trigger("authorizer", "$connect")
        elif res.get("Type") == "AWS::ApiGatewayV2::Integration":
            fn = _referenced_function(props.get("IntegrationUri"))
            if fn:
                integrations[logical_id] = fn
    for res in resources.values():
        props = res.get("Properties") or {}
        if res.get("Type") == "AWS::ApiGatewayV2::Route":
            target = props.get("Target")
            integration = _referenced_function(target) if isinstance(target, dict) else None
            fn = integrations.get(integration or "")
            if fn and fn not in out:
                out[fn] = Trigger("route", str(props.get("RouteKey")))
    for logical_id, res in resources.items():
        if res.get("Type") != "AWS::Serverless::Function" or logical_id in out:
            continue
        kinds = {e.get("Type") for e in ((res.get("Properties") or {}).get("Events") or {}).values()}
        if "Schedule" in kinds or "ScheduleV2" in kinds:
            out[logical_id] = Trigger("schedule")
        elif "EventBridgeRule" in kinds or "CloudWatchEvent" in kinds:
            out[logical_id] = Trigger("eventbridge")
        else:
            out[logical_id] = Trigger("direct")
    return {k: v for k, v in out.items() if (resources.get(k) or {}).get("Type") == "AWS::Serverless::Function"}


def harmless_event(trigger: Trigger, *, api_id: str, stage: str, region: str, account_id: str) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    connection_id = f"deploy-check-{uuid.uuid4().hex[:12]}"
    if trigger.kind == "authorizer":
        # no token: the authorizer must refuse (Deny), touching nothing
        return {
            "type": "REQUEST",
            "methodArn": f"arn:aws:execute-api:{region}:{account_id}:{api_id}/{stage}/$connect",
            "headers": {}, "multiValueHeaders": {}, "queryStringParameters": {}, "multiValueQueryStringParameters": {},
            "stageVariables": {},
            "requestContext": {"routeKey": "$connect", "eventType": "CONNECT", "connectionId": connection_id,
                               "apiId": api_id, "stage": stage, "domainName": "deploy-check.invalid",
                               "requestTimeEpoch": now_ms, "connectedAt": now_ms, "messageDirection": "IN",
                               "identity": {"sourceIp": "127.0.0.1"}},
        }
    if trigger.kind == "route":
        # a connection the registry never saw and no authorizer context: every
        # route handler fails closed or finds nothing to do
        event_type = {"$connect": "CONNECT", "$disconnect": "DISCONNECT"}.get(trigger.route_key, "MESSAGE")
        event: dict[str, Any] = {
            "requestContext": {"routeKey": trigger.route_key, "eventType": event_type, "connectionId": connection_id,
                               "apiId": api_id, "stage": stage, "domainName": "deploy-check.invalid",
                               "requestTimeEpoch": now_ms, "connectedAt": now_ms, "messageDirection": "IN",
                               "extendedRequestId": connection_id, "requestId": connection_id,
                               "identity": {"sourceIp": "127.0.0.1"}},
            "isBase64Encoded": False,
        }
        if event_type == "MESSAGE":
            event["body"] = json.dumps({"type": trigger.route_key if not trigger.route_key.startswith("$") else "deploy-check"})
        if event_type == "DISCONNECT":
            event["requestContext"].update({"disconnectStatusCode": 1000, "disconnectReason": "deploy-check"})
        return event
    if trigger.kind == "schedule":
        return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
                "account": account_id, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "region": region,
                "resources": [], "detail": {}}
    if trigger.kind == "eventbridge":
        # a detail-type no topic has: the bridge logs and drops it (nothing published)
        return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "rtstream.deploy-check", "source": "rtstream.deploy-check",
                "account": account_id, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "region": region,
                "resources": [], "detail": {}}
    return {}


# A function nothing triggers gets ``{}``, which its handler may well reject:
# only an error that means the code cannot load counts then.
_CANNOT_LOAD = re.compile(r"Import|Syntax|HandlerNotFound|No module named|cannot import", re.I)


def _problem(logical_id: str, trigger: Trigger, reply: dict[str, Any]) -> str | None:
    payload = _payload(reply)
    if reply.get("FunctionError") and trigger.kind == "direct" and not _CANNOT_LOAD.search(json.dumps(payload)[:4000]):
        return None
    if reply.get("FunctionError"):
        if isinstance(payload, dict):
            message = f"{payload.get('errorType', 'Error')}: {payload.get('errorMessage', '')}".strip()
            trace = payload.get("stackTrace") or []
            if trace:
                message += "\n      " + "\n      ".join(str(line).rstrip() for line in trace[-4:])
        else:
            message = str(payload)[:1000]
        return f"{logical_id}: {message}"
    if trigger.kind == "authorizer":
        statements = ((payload or {}).get("policyDocument") or {}).get("Statement") if isinstance(payload, dict) else None
        if not statements or any(s.get("Effect") != "Deny" for s in statements):
            return f"{logical_id}: a request without a token was not refused with a Deny policy: {str(payload)[:300]}"
    if trigger.kind == "route" and not (isinstance(payload, dict) and isinstance(payload.get("statusCode"), int)):
        return f"{logical_id}: a route handler answered without a statusCode: {str(payload)[:300]}"
    if isinstance(payload, dict) and isinstance(payload.get("statusCode"), int) and payload["statusCode"] >= 500:
        return f"{logical_id}: answered {payload['statusCode']}: {str(payload.get('body'))[:300]}"
    return None


def smoke_invoke(clients: Callable[[str], Any], template: dict[str, Any], functions: dict[str, str], *,
                 api_id: str, stage: str, region: str, account_id: str) -> list[str]:
    """Invoke every deployed function once; the problems (empty: every function ran)."""
    wiring = triggers(template)
    missing = sorted(set(wiring) - set(functions))
    problems = [f"{logical_id}: not deployed" for logical_id in missing]
    lambda_client = clients("lambda")

    def one(logical_id: str) -> str | None:
        trigger = wiring[logical_id]
        event = harmless_event(trigger, api_id=api_id, stage=stage, region=region, account_id=account_id)
        try:
            reply = lambda_client.invoke(FunctionName=functions[logical_id], Payload=json.dumps(event).encode())
        except Exception as exc:  # noqa: BLE001 - the emulator's own refusal is a problem too
            return f"{logical_id}: invoke failed: {exc}"
        return _problem(logical_id, trigger, reply)

    present = sorted(set(wiring) & set(functions))
    with ThreadPoolExecutor(max_workers=4) as pool:
        problems += [p for p in pool.map(one, present) if p]
    return problems
