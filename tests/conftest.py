"""Shared fixtures: real parts, not mocks.

- ``redis_url``: a real Redis. A private ``redis-server`` on a free loopback port
  when the binary exists (so tests never touch a developer's data), else
  ``REDIS_URL`` / 127.0.0.1:6379 if one answers.
- ``moto_endpoint``: a moto server on its own port, reached by real boto3 clients.
- ``tables``: DynamoDB tables built from ``template.yaml``'s own definitions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from helpers import free_port, wait_for_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EVENTS_DIR = ROOT / "tests" / "events"
TEST_JWT_SECRET = "test-secret-for-unit-tests-only-0123456789abcdef"

# Fake credentials for moto; never real ones in tests.
for _k, _v in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}.items():
    os.environ[_k] = _v
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_PROFILE", None)
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "realtime_streaming")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "realtime-streaming")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")



def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_url():
    binary = shutil.which("redis-server")
    if binary:
        port = free_port()
        workdir = tempfile.mkdtemp(prefix="rtstream-redis-")
        proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port("127.0.0.1", port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            shutil.rmtree(workdir, ignore_errors=True)
        return
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not _redis_answers(url):
        pytest.fail("no redis-server on PATH and no Redis answering at REDIS_URL; .ci/run installs one")
    yield url


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=False)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port("127.0.0.1", port)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def dynamodb_client(moto_endpoint):
    import boto3

    return boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def table_names():
    suffix = uuid.uuid4().hex[:8]
    return {"ConnectionsTable": f"conns-{suffix}", "SubscriptionsTable": f"subs-{suffix}"}


@pytest.fixture
def tables(dynamodb_client, table_names):
    """Fresh tables per test, built from template.yaml's definitions."""
    from rtstream_cli.template import create_tables

    create_tables(dynamodb_client, table_names)
    yield table_names
    for name in table_names.values():
        try:
            dynamodb_client.delete_table(TableName=name)
        except Exception:
            pass


@pytest.fixture
def jwt_secret(monkeypatch):
    monkeypatch.setenv("RTSTREAM_JWT_SECRET", TEST_JWT_SECRET)
    return TEST_JWT_SECRET
