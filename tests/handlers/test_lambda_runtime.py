"""The Lambda composition root: principal from the authorizer context, lazy wiring."""

from __future__ import annotations

import sys

import pytest

from rtstream.adapters import lambda_runtime as rt
from rtstream.errors import Unauthorized
from rtstream.models import Principal
from rtstream.settings import Settings


def event_with(authorizer):
    ctx = {"connectionId": "abc=", "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com", "stage": "prod"}
    if authorizer is not None:
        ctx["authorizer"] = authorizer
    return {"requestContext": ctx}


def test_principal_from_authorizer_context():
    event = event_with({"principalId": "u1", "integrationLatency": 12, "userId": "u1", "entityId": "e1", "role": "agent"})
    assert rt.principal_from_event(event) == Principal("u1", "e1", "agent")


@pytest.mark.parametrize(
    "authorizer",
    [
        None,
        {},
        {"userId": "u1"},
        {"userId": "u1", "entityId": "e1#transactions.new"},
        {"userId": "u 1", "entityId": "e1"},
        {"userId": "u1", "entityId": "e1", "role": "root"},
    ],
)
def test_missing_or_bad_authorizer_context_fails_closed(authorizer):
    with pytest.raises(Unauthorized):
        rt.principal_from_event(event_with(authorizer))


def test_management_endpoint():
    assert rt.management_endpoint_of(event_with({}), Settings(management_endpoint="http://127.0.0.1:9000/dev")) == "http://127.0.0.1:9000/dev"
    assert rt.management_endpoint_of(event_with({}), Settings()) == "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/prod"


def test_runtime_reads_environment_without_io():
    runtime = rt.LambdaRuntime({"CONNECTIONS_TABLE": "c", "SUBSCRIPTIONS_TABLE": "s", "RTSTREAM_MAX_SUBSCRIPTIONS": "7"})
    assert runtime.settings.connections_table == "c" and runtime.settings.max_subscriptions == 7
    assert runtime._cache == {}  # nothing built yet


def test_without_redis_url_no_redis_ports():
    runtime = rt.LambdaRuntime({"CONNECTIONS_TABLE": "c", "SUBSCRIPTIONS_TABLE": "s", "AWS_DEFAULT_REGION": "us-east-1"})
    assert runtime.redis() is None and runtime.event_log() is None and runtime.rate_limiter() is None and runtime.presence() is None


def test_clients_built_once(moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    runtime = rt.LambdaRuntime({"CONNECTIONS_TABLE": "c", "SUBSCRIPTIONS_TABLE": "s"})
    assert runtime.registry() is runtime.registry()
    assert runtime.boto3_client("dynamodb") is runtime.boto3_client("dynamodb")
    assert runtime.service() is runtime.service()


def test_handler_modules_import_without_heavy_clients():
    """Cold import stays cheap: boto3/redis/X-Ray are imported on first use only."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = (
        "import importlib.util, sys\n"
        "for name in ['authorizer','connect','disconnect','messages','housekeeping','eventbridge_bridge']:\n"
        "    s = importlib.util.spec_from_file_location('app_'+name, f'functions/{name}/app.py')\n"
        "    m = importlib.util.module_from_spec(s); s.loader.exec_module(m)\n"
        "print(sorted(x for x in ('boto3', 'botocore.client', 'redis', 'aws_xray_sdk') if x in sys.modules))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root / "layers" / "core"), "AWS_LAMBDA_FUNCTION_NAME": "x", "AWS_REGION": "us-east-1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
