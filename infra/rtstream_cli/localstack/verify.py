"""Invoke wiring that AWS enforces and emulators do not, checked after a deploy.

On AWS, API Gateway cannot call an integration's or authorizer's Lambda, and
an EventBridge rule cannot call its target, unless the function exists and
its resource policy allows that service from that source ARN
(``AWS::Lambda::Permission``). MiniStack invokes regardless (and silently
drops a message whose route points at a missing function), so a template
that would fail in production would pass there. ``wiring_problems`` reads the
*deployed* API, rules and function policies back from the endpoint and lists
every invoke AWS would refuse.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from typing import Any, Callable

_FUNCTION_IN_URI = re.compile(r"functions/(arn:[^/]+)/invocations")


def _function_arn(uri: str) -> str | None:
    match = _FUNCTION_IN_URI.search(uri or "")
    return match.group(1) if match else None


def _policy_statements(lambda_client, function_arn: str) -> list[dict[str, Any]] | None:
    """The function's resource policy statements; None if the function does not exist."""
    try:
        lambda_client.get_function_configuration(FunctionName=function_arn)
    except Exception as exc:
        if "ResourceNotFound" in type(exc).__name__ or "ResourceNotFound" in str(exc) or "not found" in str(exc).lower():
            return None
        raise
    try:
        return json.loads(lambda_client.get_policy(FunctionName=function_arn)["Policy"]).get("Statement", [])
    except Exception as exc:
        if "ResourceNotFound" in type(exc).__name__ or "ResourceNotFound" in str(exc):
            return []  # a function without any resource policy
        raise


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _allows(statement: dict[str, Any], service: str, source_arn: str) -> bool:
    if statement.get("Effect") != "Allow":
        return False
    if not any(a in ("lambda:InvokeFunction", "lambda:*", "*") for a in _as_list(statement.get("Action"))):
        return False
    principal = statement.get("Principal")
    services = _as_list(principal.get("Service")) if isinstance(principal, dict) else _as_list(principal)
    if service not in services and "*" not in services:
        return False
    for operator, values in (statement.get("Condition") or {}).items():
        for key, expected in (values or {}).items():
            if key.lower() != "aws:sourcearn":
                continue
            patterns = _as_list(expected)
            if operator in ("ArnLike", "StringLike"):
                if not any(fnmatchcase(source_arn, p) for p in patterns):
                    return False
            elif operator in ("ArnEquals", "StringEquals"):
                if source_arn not in patterns:
                    return False
    return True


def wiring_problems(clients: Callable[[str], Any], api_ids: list[str], rule_names: list[str],
                    region: str, account_id: str) -> list[str]:
    """Every invoke of the deployed API(s) and rules that AWS would refuse."""
    lam, apigw, events = clients("lambda"), clients("apigatewayv2"), clients("events")
    policies: dict[str, list[dict[str, Any]] | None] = {}
    problems: list[str] = []

    def check(what: str, function_arn: str | None, service: str, source_arns: list[str]) -> None:
        if not function_arn:
            problems.append(f"{what}: no Lambda function in its URI")
            return
        if function_arn not in policies:
            policies[function_arn] = _policy_statements(lam, function_arn)
        statements = policies[function_arn]
        if statements is None:
            problems.append(f"{what}: function {function_arn} does not exist")
            return
        for source_arn in source_arns:
            if not any(_allows(s, service, source_arn) for s in statements):
                problems.append(f"{what}: {function_arn} has no lambda:InvokeFunction permission "
                                f"for {service} from {source_arn}")

    for api_id in api_ids:
        prefix = f"arn:aws:execute-api:{region}:{account_id}:{api_id}"
        stages = [s["StageName"] for s in apigw.get_stages(ApiId=api_id).get("Items", [])]
        integrations = {i["IntegrationId"]: i for i in apigw.get_integrations(ApiId=api_id).get("Items", [])}
        for route in apigw.get_routes(ApiId=api_id).get("Items", []):
            key, target = route["RouteKey"], route.get("Target") or ""
            if not target.startswith("integrations/"):
                problems.append(f"route {key}: no integration target")
                continue
            integration = integrations.get(target.split("/", 1)[1])
            if integration is None:
                problems.append(f"route {key}: {target} does not exist")
                continue
            if integration.get("IntegrationType") in ("AWS_PROXY", "AWS"):
                check(f"route {key}", _function_arn(integration.get("IntegrationUri", "")), "apigateway.amazonaws.com",
                      [f"{prefix}/{stage}/{key}" for stage in stages])
        for authorizer in apigw.get_authorizers(ApiId=api_id).get("Items", []):
            check(f"authorizer {authorizer.get('Name')}", _function_arn(authorizer.get("AuthorizerUri", "")),
                  "apigateway.amazonaws.com", [f"{prefix}/authorizers/{authorizer['AuthorizerId']}"])

    for rule_ref in rule_names:
        bus, _, name = rule_ref.rpartition("|")
        kwargs = {"EventBusName": bus} if bus else {}
        rule = events.describe_rule(Name=name, **kwargs)
        for target in events.list_targets_by_rule(Rule=name, **kwargs).get("Targets", []):
            if ":lambda:" in target.get("Arn", ""):
                check(f"rule {name} target {target.get('Id')}", target["Arn"], "events.amazonaws.com", [rule["Arn"]])
    return problems
