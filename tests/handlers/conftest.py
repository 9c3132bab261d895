"""Handlers driven like Lambda drives them: the module imported by path after the
function's environment is set (its cold start), then invoked with captured API
Gateway events, against DynamoDB in a moto server and a real Redis."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import time
from pathlib import Path

import pytest

from rtstream.auth import issue_dev_token
from helpers import LambdaContext, handler_file  # noqa: F401 - LambdaContext re-exported to tests/monitoring

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"
_counter = itertools.count()


def _load_event(name: str, **replacements: str) -> dict:
    text = (EVENTS / f"{name}.json").read_text()
    for key, value in replacements.items():
        text = text.replace(f"__{key.upper()}__", value)
    event = json.loads(text)
    # Re-time the capture, as a replay would: records derive their TTL from it.
    ctx = event.get("requestContext") or {}
    now_ms = int(time.time() * 1000)
    if "connectedAt" in ctx:
        ctx["connectedAt"] = now_ms - 1000
    if "requestTimeEpoch" in ctx:
        ctx["requestTimeEpoch"] = now_ms
    return event


@pytest.fixture
def load_event():
    """A captured event from tests/events/, placeholders (``__TOKEN__``) filled in."""
    return _load_event


@pytest.fixture
def lambda_env(monkeypatch, tables, moto_endpoint, redis_url, redis_client, jwt_secret):
    env = {
        "CONNECTIONS_TABLE": tables["ConnectionsTable"],
        "SUBSCRIPTIONS_TABLE": tables["SubscriptionsTable"],
        "REDIS_URL": redis_url,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "RTSTREAM_JWT_SECRET": jwt_secret,
        "RTSTREAM_MANAGEMENT_ENDPOINT": moto_endpoint,
        "POWERTOOLS_SERVICE_NAME": "realtime-streaming",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "RealtimeStreaming",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def load_handler(lambda_env):
    """Import the function's handler module fresh (a cold start; the file the
    template names) and return a callable ``invoke(event) -> result``; with
    ``runtime=``, the module's ``build_handler(runtime)`` instead of its ``handler``."""
    loaded = []

    def load(name: str, runtime=None):
        module_name = f"_handler_test_{name}_{next(_counter)}"
        spec = importlib.util.spec_from_file_location(module_name, handler_file(name))
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        loaded.append(module_name)

        # a runtime of the test's own (the composition root's ports, to watch them): the module's factory
        handler = module.handler if runtime is None else module.build_handler(runtime)

        def invoke(event: dict):
            return handler(event, LambdaContext(name))

        invoke.module = module
        return invoke

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


@pytest.fixture
def token(jwt_secret):
    def make(user_id="user-1", entity_id="entity-1", role="user", **kw):
        return issue_dev_token(jwt_secret, user_id=user_id, entity_id=entity_id, role=role, **kw)

    return make
