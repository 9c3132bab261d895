"""The ONE place where the deployed template differs from AWS's.

``template.yaml`` is written for AWS and stays that way. An emulator lacks a
few resource types or properties; ``adapt_for_emulator`` changes exactly
those in the SAM template (before the SAM transform, so the translator never
sees a nested stack it cannot package) and returns, for each removed
setting, the API call that applies it after the stack is up. Every
adaptation is listed in ``ADAPTATIONS`` with its reason, and printed by
``rtstream deploy-local`` so nothing changes silently.

References to a removed resource are scrubbed only where that is safe
(``DependsOn``, a Stage's ``DeploymentId``, Outputs); any other reference
fails loudly, so a template change that would make an adaptation hide a
real dependency is caught here instead of deploying something different.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..cloudformation import Intrinsics, conditions_used, referenced_ids

# (what, why) - printed on every deploy-local, documented in README.md ("Run against LocalStack")
ADAPTATIONS: tuple[tuple[str, str], ...] = (
    (
        "AWS::ApiGatewayV2::Deployment removed; CreateDeployment called for each stage after the deploy",
        "MiniStack's CloudFormation rejects the type (its stages serve routes without one)",
    ),
    (
        "AWS::ApiGatewayV2::RouteResponse removed; CreateRouteResponse called after the deploy",
        "MiniStack's CloudFormation rejects the type (its WebSocket runtime returns a route's body anyway)",
    ),
    (
        "DynamoDB TimeToLiveSpecification applied with UpdateTimeToLive after the deploy",
        "MiniStack ignores TTL in CloudFormation; the property stays in the template",
    ),
    (
        "a WebSocket REQUEST authorizer without IdentitySource gets an explicit empty IdentitySource",
        "MiniStack defaults a missing one to $request.header.Authorization (the HTTP API default) and answers "
        "401 before the authorizer runs when that header is absent, refusing ?token= (browser) clients; on AWS "
        "an authorizer without identity sources runs on every $connect",
    ),
    (
        "nested stacks (AWS::CloudFormation::Stack / AWS::Serverless::Application: the ECS services) removed, "
        "with the parameters only they use",
        "the fan-out worker and SSE server run as local processes against the stack "
        "(`rtstream deploy-local --run-services`), not as containers",
    ),
    (
        "execute-api URLs built for AWS (https://${Api}.execute-api.${AWS::Region}.amazonaws.com, wss://…) "
        "in Lambda environments and Outputs point at <endpoint>/_aws/execute-api/${Api}",
        "an emulator serves the API and its @connections on its own endpoint, under the "
        "LocalStack-compatible path both LocalStack and MiniStack answer",
    ),
)

DROPPED_TYPES = frozenset({
    "AWS::ApiGatewayV2::Deployment",
    "AWS::ApiGatewayV2::RouteResponse",
    "AWS::CloudFormation::Stack",
    "AWS::Serverless::Application",
})

# https://${WebSocketApi}.execute-api.${AWS::Region}.amazonaws.com (also wss://, ${AWS::URLSuffix})
_AWS_EXECUTE_API = re.compile(
    r"(https|wss)://\$\{([A-Za-z0-9]+)\}\.execute-api\.\$\{AWS::Region\}\.(?:amazonaws\.com|\$\{AWS::URLSuffix\})")

class AdaptError(ValueError):
    """The template references a removed resource somewhere an adaptation cannot handle."""


@dataclass
class PostDeployStep:
    """One API call that applies, after the deploy, a setting the emulator dropped."""

    description: str
    apply: Callable[[Intrinsics, Any], None]  # (the deployed stack's intrinsics, clients) -> None


@dataclass
class Adapted:
    template: dict[str, Any]
    steps: list[PostDeployStep] = field(default_factory=list)
    removed: dict[str, str] = field(default_factory=dict)  # logical id -> type


def _deployment_step(logical_id: str, stage_props: dict[str, Any]) -> PostDeployStep:
    def apply(resolve: Intrinsics, clients) -> None:
        api_id, stage = resolve(stage_props["ApiId"]), resolve(stage_props["StageName"])
        apigw = clients("apigatewayv2")
        deployment = apigw.create_deployment(ApiId=api_id, StageName=stage, Description="rtstream deploy-local")
        apigw.update_stage(ApiId=api_id, StageName=stage, DeploymentId=deployment["DeploymentId"])

    return PostDeployStep(f"CreateDeployment + UpdateStage {logical_id}", apply)


def _route_response_step(logical_id: str, props: dict[str, Any]) -> PostDeployStep:
    def apply(resolve: Intrinsics, clients) -> None:
        api_id, route_id = resolve(props["ApiId"]), resolve(props["RouteId"])
        # MiniStack's physical id for a Route is "{apiId}/{routeId}" (AWS's Ref is the route id)
        route_id = str(route_id).rsplit("/", 1)[-1]
        key = resolve(props["RouteResponseKey"])
        apigw = clients("apigatewayv2")
        existing = apigw.get_route_responses(ApiId=api_id, RouteId=route_id).get("Items", [])
        if any(item.get("RouteResponseKey") == key for item in existing):
            return
        extra = {k: resolve(props[k]) for k in ("ModelSelectionExpression", "ResponseModels", "ResponseParameters")
                 if k in props}
        apigw.create_route_response(ApiId=api_id, RouteId=route_id, RouteResponseKey=key, **extra)

    return PostDeployStep(f"CreateRouteResponse {logical_id}", apply)


def _ttl_step(logical_id: str, spec: dict[str, Any]) -> PostDeployStep:
    def apply(resolve: Intrinsics, clients) -> None:
        table = resolve.ref(logical_id)
        ddb = clients("dynamodb")
        current = ddb.describe_time_to_live(TableName=table).get("TimeToLiveDescription", {})
        if current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") and current.get("AttributeName") == spec["AttributeName"]:
            return
        ddb.update_time_to_live(TableName=table, TimeToLiveSpecification={
            "Enabled": True, "AttributeName": resolve(spec["AttributeName"])})

    return PostDeployStep(f"UpdateTimeToLive {logical_id}.{spec.get('AttributeName')}", apply)


def _point_execute_api_at(value: Any, base: str) -> Any:
    """Rewrite AWS execute-api URLs inside ``Fn::Sub`` strings to ``base``/_aws/execute-api/${Api}."""
    host = base.split("://", 1)[-1].rstrip("/")
    secure = base.startswith("https")

    def rewrite(text: str) -> str:
        def repl(m: re.Match) -> str:
            scheme = ("wss" if secure else "ws") if m.group(1) == "wss" else ("https" if secure else "http")
            return f"{scheme}://{host}/_aws/execute-api/${{{m.group(2)}}}"
        return _AWS_EXECUTE_API.sub(repl, text)

    if isinstance(value, dict):
        out = {}
        for key, arg in value.items():
            if key == "Fn::Sub" and isinstance(arg, str):
                out[key] = rewrite(arg)
            elif key == "Fn::Sub" and isinstance(arg, list):
                out[key] = [rewrite(arg[0]), *[_point_execute_api_at(a, base) for a in arg[1:]]]
            else:
                out[key] = _point_execute_api_at(arg, base)
        return out
    if isinstance(value, list):
        return [_point_execute_api_at(v, base) for v in value]
    return value


def adapt_for_emulator(template: dict[str, Any], *, endpoint: str, lambda_endpoint: str | None = None) -> Adapted:
    """Apply ``ADAPTATIONS`` to a SAM (or plain CloudFormation) template.

    ``endpoint`` is where clients reach the emulator (Outputs);
    ``lambda_endpoint`` where the Lambdas reach it (their environment):
    the same for MiniStack, which runs Lambdas as local processes, but
    ``http://localhost.localstack.cloud:4566`` from LocalStack's containers.
    """
    cfn = copy.deepcopy(template)
    resources = cfn.get("Resources") or {}
    adapted = Adapted(template=cfn)
    lambda_endpoint = lambda_endpoint or endpoint
    if "Globals" in cfn:
        cfn["Globals"] = _point_execute_api_at(cfn["Globals"], lambda_endpoint)
    for resource in resources.values():
        if "Properties" in resource:
            resource["Properties"] = _point_execute_api_at(resource["Properties"], lambda_endpoint)
    if "Outputs" in cfn:
        cfn["Outputs"] = _point_execute_api_at(cfn["Outputs"], endpoint)

    removed = {lid: r["Type"] for lid, r in resources.items() if r.get("Type") in DROPPED_TYPES}
    adapted.removed = removed
    for logical_id, rtype in removed.items():
        props = resources[logical_id].get("Properties") or {}
        if rtype == "AWS::ApiGatewayV2::RouteResponse":
            adapted.steps.append(_route_response_step(logical_id, props))
        del resources[logical_id]

    for logical_id, resource in resources.items():
        props = resource.get("Properties") or {}
        depends = resource.get("DependsOn")
        if depends:
            kept = [d for d in ([depends] if isinstance(depends, str) else depends) if d not in removed]
            if kept:
                resource["DependsOn"] = kept
            else:
                resource.pop("DependsOn")
        if resource.get("Type") == "AWS::ApiGatewayV2::Stage":
            deployment = props.get("DeploymentId")
            if deployment is not None and referenced_ids(deployment) & removed.keys():
                del props["DeploymentId"]
                adapted.steps.append(_deployment_step(logical_id, props))
        if resource.get("Type") == "AWS::ApiGatewayV2::Authorizer" and props.get("AuthorizerType") == "REQUEST":
            props.setdefault("IdentitySource", [])
        if resource.get("Type") == "AWS::DynamoDB::Table":
            ttl = props.get("TimeToLiveSpecification") or {}
            if ttl.get("Enabled") in (True, "true", "True"):
                adapted.steps.append(_ttl_step(logical_id, ttl))
        dangling = referenced_ids(resource) & removed.keys()
        if dangling:
            raise AdaptError(f"{logical_id} references {sorted(dangling)}, which the emulator adaptation removes")

    dangling = referenced_ids(cfn.get("Globals") or {}) & removed.keys()
    if dangling:
        raise AdaptError(f"Globals reference {sorted(dangling)}, which the emulator adaptation removes")
    outputs = cfn.get("Outputs") or {}
    for name in [n for n, o in outputs.items() if referenced_ids(o) & removed.keys()]:
        del outputs[name]
    if removed:  # conditions, then parameters (container images, VPC ids) nothing left uses
        conditions = cfn.get("Conditions") or {}
        while True:
            used = conditions_used({k: v for k, v in cfn.items() if k != "Conditions"})
            for body in conditions.values():
                used |= conditions_used(body)
            unused = [n for n in conditions if n not in used]
            if not unused:
                break
            for name in unused:
                del conditions[name]
        still_used = referenced_ids({k: v for k, v in cfn.items() if k != "Parameters"})
        parameters = cfn.get("Parameters") or {}
        for name in [n for n in parameters if n not in still_used]:
            del parameters[name]
    return adapted
