"""The WebSocket API as `template.yaml` declares it: stage, route selection
expression, routes -> integrations -> functions (CodeUri + Handler), the
authorizer and its identity sources, route responses, function environment.

Read once at emulator start; nothing here is written twice by hand. CloudFormation
intrinsics are resolved to local values where that is possible (parameters take
their defaults, pseudo parameters local constants, logical ids the values the
caller supplies); anything that cannot be resolved locally is left out, so the
caller's environment overrides supply it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtstream_cli.cloudformation import (
    NO_VALUE, Intrinsics, Unresolved, load_template, referenced_ids, resources_of_type, scalar,
)

log = logging.getLogger("rtstream_gateway")

WS_API = "AWS::ApiGatewayV2::Api"
ROUTE = "AWS::ApiGatewayV2::Route"
INTEGRATION = "AWS::ApiGatewayV2::Integration"
AUTHORIZER = "AWS::ApiGatewayV2::Authorizer"
ROUTE_RESPONSE = "AWS::ApiGatewayV2::RouteResponse"
STAGE = "AWS::ApiGatewayV2::Stage"
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")



class TemplateError(ValueError):
    """template.yaml does not describe a WebSocket API the emulator can run."""


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    name: str
    source_file: Path  # CodeUri + module part of Handler
    code_dir: Path
    handler_attr: str
    timeout_seconds: float
    memory_mb: int
    environment: dict[str, str]


@dataclass(frozen=True)
class AuthorizerSpec:
    logical_id: str
    function: FunctionSpec
    # ("header", "Authorization") / ("querystring", "token")
    identity_sources: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RouteSpec:
    key: str
    function: FunctionSpec | None  # None: a route with a non-Lambda (e.g. mock) integration
    authorizer: AuthorizerSpec | None
    has_route_response: bool


@dataclass(frozen=True)
class ApiSpec:
    api_logical_id: str
    stage: str
    route_selection_expression: str
    routes: dict[str, RouteSpec]
    environment: dict[str, str] = field(default_factory=dict)  # union of the routed functions' (each runs with its own)

    @property
    def functions(self) -> list[FunctionSpec]:
        seen: dict[str, FunctionSpec] = {}
        for route in self.routes.values():
            for fn in (route.function, route.authorizer.function if route.authorizer else None):
                if fn is not None:
                    seen.setdefault(fn.logical_id, fn)
        return list(seen.values())


def _one_ref_of_type(value: Any, candidates: dict[str, dict[str, Any]], what: str, where: str) -> str:
    ids = [i for i in referenced_ids(value) if i in candidates]
    if len(ids) != 1:
        raise TemplateError(f"{where}: expected one reference to a {what}, found {ids or 'none'}")
    return ids[0]


def _environment(resolver: Intrinsics, variables: dict[str, Any] | None, owner: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, raw in (variables or {}).items():
        try:
            value = resolver.resolve(raw)
        except Unresolved as exc:
            log.debug("%s: %s has no local value (%s); the emulator's environment supplies it", owner, name, exc)
            continue
        if value is None or value is NO_VALUE:
            continue
        out[name] = scalar(value)
    return out


def _function_spec(resolver: Intrinsics, template: dict[str, Any], logical_id: str, base_dir: Path) -> FunctionSpec:
    resource = template["Resources"][logical_id]
    if resource.get("Type") != "AWS::Serverless::Function":
        raise TemplateError(f"{logical_id}: only AWS::Serverless::Function (CodeUri + Handler) can run locally")
    glob = ((template.get("Globals") or {}).get("Function") or {})
    props = resource.get("Properties") or {}

    def prop(name: str, default: Any = None) -> Any:
        return props.get(name, glob.get(name, default))

    code_uri = resolver.resolve(prop("CodeUri"))
    handler = resolver.resolve(prop("Handler"))
    if not isinstance(code_uri, str) or not isinstance(handler, str) or "." not in handler:
        raise TemplateError(f"{logical_id}: needs a local CodeUri and a Handler like 'app.handler'")
    module_path, _, attr = handler.rpartition(".")
    code_dir = (base_dir / code_uri).resolve()
    source = code_dir / (module_path.replace(".", "/") + ".py")
    if not source.is_file():
        raise TemplateError(f"{logical_id}: handler file {source} does not exist")
    env = _environment(resolver, ((glob.get("Environment") or {}).get("Variables")), "Globals")
    env.update(_environment(resolver, ((props.get("Environment") or {}).get("Variables")), logical_id))
    try:
        name = str(resolver.resolve(props["FunctionName"])) if "FunctionName" in props else f"{resolver.pseudo['AWS::StackName']}-{logical_id}"
    except Unresolved:
        name = logical_id
    return FunctionSpec(
        logical_id=logical_id,
        name=name,
        source_file=source,
        code_dir=code_dir,
        handler_attr=attr,
        timeout_seconds=float(resolver.resolve(prop("Timeout", 3))),
        memory_mb=int(resolver.resolve(prop("MemorySize", 128))),
        environment=env,
    )


def _identity_source(raw: str) -> tuple[str, str]:
    # route.request.header.Authorization / route.request.querystring.token
    parts = raw.split(".", 3)
    if len(parts) != 4 or parts[0] != "route" or parts[1] != "request" or parts[2] not in ("header", "querystring"):
        raise TemplateError(f"unsupported identity source {raw!r}")
    return parts[2], parts[3]


def load_api(template_path: str | Path, *, region: str = "us-east-1", stage: str | None = None,
             resources: dict[str, str] | None = None, parameters: dict[str, str] | None = None) -> ApiSpec:
    template_path = Path(template_path).resolve()
    template = load_template(template_path)
    base_dir = template_path.parent
    resolver = Intrinsics(template, region=region, resources=resources, parameters=parameters)

    apis = {lid: r for lid, r in resources_of_type(template, WS_API).items()
            if (r.get("Properties") or {}).get("ProtocolType") == "WEBSOCKET"}
    if len(apis) != 1:
        raise TemplateError(f"expected exactly one WebSocket API in {template_path}, found {len(apis)}")
    (api_id, api), = apis.items()
    selection = resolver.resolve(api["Properties"].get("RouteSelectionExpression", "$request.body.action"))

    def belongs(resource: dict[str, Any]) -> bool:
        return api_id in referenced_ids((resource.get("Properties") or {}).get("ApiId"))

    if stage is None:
        stages = [r for r in resources_of_type(template, STAGE).values() if belongs(r)]
        if not stages:
            raise TemplateError("no AWS::ApiGatewayV2::Stage for the WebSocket API")
        stage = str(resolver.resolve(stages[0]["Properties"]["StageName"]))

    integrations = resources_of_type(template, INTEGRATION)
    authorizers = resources_of_type(template, AUTHORIZER)
    routes = {lid: r for lid, r in resources_of_type(template, ROUTE).items() if belongs(r)}
    functions = {lid: r for lid, r in (template.get("Resources") or {}).items() if r.get("Type") in FUNCTION_TYPES}
    responded = {_one_ref_of_type(r["Properties"].get("RouteId"), routes, "route", lid)
                 for lid, r in resources_of_type(template, ROUTE_RESPONSE).items() if belongs(r)}

    function_specs: dict[str, FunctionSpec] = {}

    def function(lid: str) -> FunctionSpec:
        if lid not in function_specs:
            function_specs[lid] = _function_spec(resolver, template, lid, base_dir)
        return function_specs[lid]

    authorizer_specs: dict[str, AuthorizerSpec] = {}
    route_specs: dict[str, RouteSpec] = {}
    for lid, route in routes.items():
        props = route["Properties"]
        key = str(resolver.resolve(props["RouteKey"]))
        fn = None
        if props.get("Target") is not None:
            integration_id = _one_ref_of_type(props["Target"], integrations, "integration", lid)
            integration = integrations[integration_id]["Properties"]
            if integration.get("IntegrationType") in ("AWS_PROXY", "AWS"):
                fn = function(_one_ref_of_type(integration.get("IntegrationUri"), functions, "function", integration_id))
        authorizer = None
        if props.get("AuthorizationType") == "CUSTOM":
            auth_id = _one_ref_of_type(props.get("AuthorizerId"), authorizers, "authorizer", lid)
            if auth_id not in authorizer_specs:
                auth = authorizers[auth_id]["Properties"]
                if auth.get("AuthorizerType", "REQUEST") != "REQUEST":
                    raise TemplateError(f"{auth_id}: only REQUEST authorizers exist for WebSocket APIs")
                sources = auth.get("IdentitySource") or []
                if isinstance(sources, str):
                    sources = [s.strip() for s in sources.split(",") if s.strip()]
                authorizer_specs[auth_id] = AuthorizerSpec(
                    logical_id=auth_id,
                    function=function(_one_ref_of_type(auth.get("AuthorizerUri"), functions, "function", auth_id)),
                    identity_sources=tuple(_identity_source(str(resolver.resolve(s))) for s in sources),
                )
            authorizer = authorizer_specs[auth_id]
        has_selection = props.get("RouteResponseSelectionExpression") is not None
        if has_selection != (lid in responded):
            log.warning("route %s: route responses need both RouteResponseSelectionExpression and a RouteResponse; "
                        "API Gateway sends none with only one of them", key)
        route_specs[key] = RouteSpec(key=key, function=fn, authorizer=authorizer,
                                     has_route_response=has_selection and lid in responded)

    environment: dict[str, str] = {}
    for spec in function_specs.values():
        environment.update(spec.environment)
    return ApiSpec(api_logical_id=api_id, stage=stage, route_selection_expression=str(selection),
                   routes=route_specs, environment=environment)


def select_route(expression: str, body: Any, routes: dict[str, RouteSpec]) -> str | None:
    """The route key for a message, as API Gateway selects it: the value at the
    expression's path in a JSON object body if a route has that key, else
    ``$default`` (None when there is no ``$default`` route either)."""
    key: Any = None
    if expression.startswith("$request.body.") and isinstance(body, dict):
        key = body
        for part in expression[len("$request.body."):].split("."):
            key = key.get(part) if isinstance(key, dict) else None
    # $connect / $disconnect are never selected by a message
    if isinstance(key, (str, int, float)) and not isinstance(key, bool) and str(key) in routes and not str(key).startswith("$"):
        return str(key)
    return "$default" if "$default" in routes else None
