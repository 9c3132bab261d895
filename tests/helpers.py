"""Helpers shared by the test suites (importable as ``helpers``: pytest puts
``tests/`` on the path through its root conftest)."""

from __future__ import annotations

import json
import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


def emf_documents(text: str) -> list[dict]:
    """EMF documents in captured stdout. Handlers print from several threads in the
    emulator, so two documents may share a line: decode them where they start."""
    decoder = json.JSONDecoder()
    docs, start = [], text.find('{"_aws"')
    while start != -1:
        try:
            doc, end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find('{"_aws"', start + 1)
            continue
        docs.append(doc)
        start = text.find('{"_aws"', end)
    return docs


def handler_env(tables: dict[str, str], *, moto_endpoint: str, redis_url: str, jwt_secret: str) -> dict[str, str]:
    """Environment for the real handlers behind a test's gateway emulator."""
    return {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "REDIS_URL": redis_url,
        "RTSTREAM_JWT_SECRET": jwt_secret,
        "CONNECTIONS_TABLE": tables["ConnectionsTable"],
        "SUBSCRIPTIONS_TABLE": tables["SubscriptionsTable"],
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


def serialize_moto_dynamodb_writes() -> None:
    """Give moto (running in this process) DynamoDB's per-item write atomicity.

    DynamoDB applies each write to an item atomically with its condition; moto's
    threaded server evaluates a ConditionExpression and then writes without a
    lock, so two simultaneous ``ADD n :1 IF n < 10`` both pass at 9 (seen: 11 of
    50 admitted against a limit of 10). Tests and benchmarks of concurrent
    conditional writes call this once; idempotent."""
    import threading

    from moto.dynamodb.models import DynamoDBBackend

    if getattr(DynamoDBBackend, "_rtstream_serialized", False):
        return
    lock = threading.RLock()

    def locked(method):
        def run(self, *args, **kwargs):
            with lock:
                return method(self, *args, **kwargs)

        return run

    for name in ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item"):
        if hasattr(DynamoDBBackend, name):
            setattr(DynamoDBBackend, name, locked(getattr(DynamoDBBackend, name)))
    DynamoDBBackend._rtstream_serialized = True
