"""Every metric an alarm or dashboard widget in template.yaml names is really
emitted, in the namespace and with exactly the dimensions the template expects.

The emitted side is not read from the source: the real handlers (and the fan-out
worker's EMF flush) run, their CloudWatch EMF documents are captured from
stdout, and the template's references must all be among them. A widget whose
dimensions do not match what Powertools writes (e.g. ``service`` of the wrong
component) would draw an empty line in CloudWatch; here it fails.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from pathlib import Path

import pytest

from rtstream import metrics as names
from rtstream_cli.cloudformation import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template()
SERVICE = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
NAMESPACE = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]


# ---- the template's side ------------------------------------------------------------


def _expand_rows(rows: list[list]) -> list[list]:
    """CloudWatch dashboard shorthand: "." repeats the previous row's entry at that
    position; "..." repeats the previous row, the given entries replacing its tail."""
    out: list[list] = []
    previous: list = []
    for raw in rows:
        row = [x for x in raw if not isinstance(x, dict)]  # rendering options
        if row and row[0] == "...":
            rest = row[1:]
            row = previous[: len(previous) - len(rest)] + rest
        else:
            row = [previous[i] if x == "." else x for i, x in enumerate(row)]
        out.append(row)
        previous = row
    return out


def template_metric_references() -> list[tuple[str, str, frozenset, str]]:
    """(namespace, metric, dimensions, resource) of every alarm and metric widget."""
    refs = []
    for logical_id, resource in TEMPLATE["Resources"].items():
        props = resource.get("Properties") or {}
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            # (an AWS metric's dimension may be a GetAtt, e.g. a dead-letter queue's name)
            dims = frozenset((d["Name"], d["Value"] if isinstance(d["Value"], str) else json.dumps(d["Value"], sort_keys=True))
                             for d in props.get("Dimensions", []))
            refs.append((props["Namespace"], props["MetricName"], dims, logical_id))
        elif resource["Type"] == "AWS::CloudWatch::Dashboard":
            body = props["DashboardBody"]
            text = body["Fn::Sub"] if isinstance(body, dict) else body
            text = re.sub(r"\$\{[^}]+\}", "SUBSTITUTED", text)
            for widget in json.loads(text)["widgets"]:
                if widget["type"] != "metric":
                    continue
                for namespace, metric, *dims in _expand_rows(widget["properties"]["metrics"]):
                    refs.append((namespace, metric, frozenset(zip(dims[::2], dims[1::2])), logical_id))
    return refs


OWN_REFERENCES = [r for r in template_metric_references() if r[0] == names.NAMESPACE]


def test_template_references_the_seed_names():
    alarms = {r["Properties"]["AlarmName"]["Fn::Sub"].split("-")[0] for r in TEMPLATE["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert {names.ALARM_CONNECTION_DROP_HIGH, names.ALARM_LATENCY_DEGRADED, names.ALARM_DEAD_LETTERS} <= alarms  # + AWS-metric alarms (bridge dead-letter queue)
    boards = {r["Properties"]["DashboardName"]["Fn::Sub"].split("-")[0] for r in TEMPLATE["Resources"].values() if r["Type"] == "AWS::CloudWatch::Dashboard"}
    assert boards == {names.DASHBOARD_HEALTH, names.DASHBOARD_PERFORMANCE}
    metrics = {metric for _, metric, _, _ in OWN_REFERENCES}
    # the seed's three, each on a dashboard
    assert {names.ACTIVE_CONNECTIONS, names.MESSAGE_LATENCY_MS, names.RECONNECTION_RATE} <= metrics
    assert NAMESPACE == names.NAMESPACE


def test_no_function_overrides_the_service_dimension():
    """Powertools' ``service`` dimension comes from POWERTOOLS_SERVICE_NAME: every
    Lambda must run with the Globals value the widgets name."""
    assert SERVICE == names.SERVICE_LAMBDAS
    for logical_id, resource in TEMPLATE["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            variables = ((resource["Properties"].get("Environment") or {}).get("Variables")) or {}
            assert variables.get("POWERTOOLS_SERVICE_NAME", SERVICE) == SERVICE, logical_id
            assert variables.get("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE) == NAMESPACE, logical_id


def test_every_template_metric_is_a_named_constant():
    constants = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and v.startswith("realtime_streaming.")}
    assert {metric for _, metric, _, _ in OWN_REFERENCES} <= constants


def _emitted_metric_names_are_constants(path: Path) -> list[str]:
    """add_metric / single_metric calls whose name is a string literal (a typo there
    would emit a metric no dashboard shows)."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if fn in ("add_metric", "single_metric"):
                for kw in node.keywords:
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {kw.value.value!r}")
    return bad


def test_emitters_use_the_constants():
    paths = [p for p in (ROOT / "functions").glob("*/app.py") if p.parent.name != "eventbridge_bridge"]  # the bridge is helper B's
    paths += list((ROOT / "layers" / "core" / "rtstream").rglob("*.py"))
    bad = [b for p in paths for b in _emitted_metric_names_are_constants(p)]
    assert not bad, bad


# ---- the emitted side: run the real emitters -------------------------------------------


def emf_metrics(stdout: str) -> dict[tuple[str, str, frozenset], list[float]]:
    """(namespace, metric, dimensions) -> values, from EMF documents on stdout."""
    out: dict[tuple[str, str, frozenset], list[float]] = {}
    for line in stdout.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        doc = json.loads(line)
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for dim_set in directive["Dimensions"]:
                dims = frozenset((d, doc[d]) for d in dim_set)
                for metric in directive["Metrics"]:
                    values = doc[metric["Name"]]
                    out.setdefault((directive["Namespace"], metric["Name"], dims), []).extend(values if isinstance(values, list) else [values])
    return out


def _with_cid(event: dict, cid: str, **authorizer) -> dict:
    event["requestContext"]["connectionId"] = cid
    event["requestContext"]["authorizer"].update(authorizer)
    return event


@pytest.fixture
def emitted(load_event, load_handler, token, monkeypatch, capsys):
    """Drive every emitter once through the situations the dashboards chart."""
    # the deployed environment: Globals (no function overrides them, checked below)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", SERVICE)
    monkeypatch.setenv("RTSTREAM_RATE_BURST", "1")
    monkeypatch.setenv("RTSTREAM_RATE_PER_SECOND", "0.001")
    monkeypatch.setenv("RTSTREAM_RATE_VIOLATIONS_BEFORE_CLOSE", "1000")
    capsys.readouterr()

    authorizer = load_handler("authorizer")
    authorizer(load_event("authorizer_query_token", token=token()))
    refused = authorizer(load_event("authorizer_query_token", token="garbage"))  # a Deny policy (403)
    assert refused["policyDocument"]["Statement"][0]["Effect"] == "Deny"

    connect = load_handler("connect")
    connect(load_event("connect"))
    connect(_with_cid(load_event("connect"), "second-1"))
    monkeypatch.setenv("RTSTREAM_MAX_CONNECTIONS_PER_USER", "1")
    refusing = load_handler("connect")
    assert refusing(_with_cid(load_event("connect"), "refused-1"))["statusCode"] == 429
    monkeypatch.delenv("RTSTREAM_MAX_CONNECTIONS_PER_USER")

    subscribe = load_handler("subscribe")
    subscribe(load_event("subscribe"))

    default = load_handler("default")
    default(_with_cid(load_event("default_unknown_type"), "agent-1", role="agent"))  # a publish attempt

    ping = load_handler("ping")
    flooder = f"flood-{uuid.uuid4().hex[:6]}"
    codes = [json.loads(ping(_with_cid(load_event("ping"), flooder))["body"]).get("code") for _ in range(2)]
    assert codes == [None, "rate_limited"]

    disconnect = load_handler("disconnect")
    dropped = _with_cid(load_event("disconnect"), "gone-1")
    dropped["requestContext"].update(disconnectStatusCode=1006, disconnectReason="Connection closed abnormally")
    disconnect(dropped)

    housekeeping = load_handler("housekeeping")
    housekeeping({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}})

    from rtstream_fanout.__main__ import _flush_emf
    from rtstream_fanout.metrics import WorkerMetrics

    worker = WorkerMetrics()
    worker.add("deliveries", 3)
    worker.add("delivery_errors")
    worker.add("pruned")
    worker.add("dead_letters")  # alarmed: realtime_streaming.dead_letters
    worker.observe_latency(12.5, n=3)
    _flush_emf(worker, NAMESPACE)

    return emf_metrics(capsys.readouterr().out)


def test_every_template_metric_is_emitted_with_its_dimensions(emitted):
    emitted_keys = set(emitted)
    missing = [
        f"{resource}: {metric} {dict(dims)}"
        for namespace, metric, dims, resource in OWN_REFERENCES
        if (namespace, metric, dims) not in emitted_keys
    ]
    assert not missing, f"not emitted (name or dimensions differ): {missing}\nemitted: {sorted((m, dict(d)) for _, m, d in emitted_keys)}"

    # and the figures are the situations' own
    lambdas = frozenset({("service", SERVICE)})
    assert emitted[(NAMESPACE, names.ACTIVE_CONNECTIONS, lambdas)] == [2.0]  # the two recorded connections
    assert emitted[(NAMESPACE, names.ACTIVE_CONNECTIONS, lambdas | {("transport", "websocket")})] == [2.0]
    assert emitted[(NAMESPACE, names.ACTIVE_CONNECTIONS, lambdas | {("transport", "sse")})] == [0.0]
    assert emitted[(NAMESPACE, names.RECONNECTION_RATE, lambdas)] == [float(names.FRESH)]
    assert emitted[(NAMESPACE, names.CONNECTIONS_DROPPED, lambdas)] == [1.0]
    assert emitted[(NAMESPACE, names.CONNECTIONS_CLOSED, lambdas)] == [1.0]
    assert emitted[(NAMESPACE, names.SECURITY_EVENTS, lambdas)] == [1.0]
    assert emitted[(NAMESPACE, names.RATE_LIMITED, lambdas)] == [1.0]
    assert emitted[(NAMESPACE, names.CONNECTIONS_REFUSED, lambdas)] == [1.0, 1.0]  # authorizer + limit
    assert emitted[(NAMESPACE, names.MESSAGE_LATENCY_MS, frozenset({("service", names.SERVICE_WORKER)}))] == [12.5]
