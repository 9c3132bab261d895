"""The EventBridge bridge Lambda, called directly and through moto EventBridge -> SQS."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import boto3
import pytest

from rtstream import keys
from rtstream.adapters.lambda_runtime import LambdaRuntime
from rtstream.errors import BackendUnavailable
from rtstream.adapters.publishing import publish
from rtstream.settings import Settings
from rtstream_cli import eventbridge_local
from rtstream_cli.eventbridge_local import _Context, load_bridge

TX = {"transactionId": "t1", "amount": 42.5, "merchant": "Cafe"}


def eb_event(detail, detail_type="transactions.new", event_id="11111111-2222-3333-4444-555555555555"):
    return {
        "version": "0", "id": event_id, "detail-type": detail_type, "source": "rtstream",
        "account": "000000000000", "time": "2026-11-25T12:00:00Z", "region": "us-east-1",
        "resources": [], "detail": detail,
    }


def bridge_handler(settings: Settings):
    """The bridge's handler as its module builds it, on a runtime over ``settings``."""
    return load_bridge().build_handler(LambdaRuntime(settings=settings))


@pytest.fixture
def bridge(redis_client, redis_url):
    return SimpleNamespace(handler=bridge_handler(Settings(redis_url=redis_url)))


def history(redis_client, entity):
    return redis_client.xrange(keys.history(entity, Settings()).name)


def test_valid_event_becomes_the_redis_publication(bridge, redis_client):
    reply = bridge.handler(eb_event({"entityId": "e1", "data": TX, "source": "data_pool"}), _Context())
    assert reply["status"] == "published"
    [(hid, fields)] = history(redis_client, "e1")
    assert hid.decode() == reply["id"] and fields[b"source"] == b"data_pool"


def test_retried_delivery_is_recorded_once(bridge, redis_client):
    event = eb_event({"entityId": "e1", "data": TX})
    first = bridge.handler(event, _Context())
    assert first["status"] == "published"
    again = bridge.handler(event, _Context())
    assert again == {"status": "duplicate", "id": first["id"]}  # the original event's id
    assert len(history(redis_client, "e1")) == 1


def test_identical_events_with_different_ids_are_two_events(bridge, redis_client):
    """The EventBridge id is the key, not the content (issue 11: no content-hash merging)."""
    a = bridge.handler(eb_event({"entityId": "e1", "data": TX}, event_id="aaaaaaaa-0000-0000-0000-000000000001"), _Context())
    b = bridge.handler(eb_event({"entityId": "e1", "data": TX}, event_id="aaaaaaaa-0000-0000-0000-000000000002"), _Context())
    assert a["status"] == b["status"] == "published" and a["id"] != b["id"]
    assert len(history(redis_client, "e1")) == 2


def test_detail_idempotency_key_wins_over_the_event_id(bridge, redis_client):
    detail = {"entityId": "e1", "data": TX, "idempotencyKey": "order-9"}
    a = bridge.handler(eb_event(detail, event_id="bbbbbbbb-0000-0000-0000-000000000001"), _Context())
    b = bridge.handler(eb_event(detail, event_id="bbbbbbbb-0000-0000-0000-000000000002"), _Context())
    assert a["status"] == "published" and b == {"status": "duplicate", "id": a["id"]}
    bad = bridge.handler(eb_event({**detail, "idempotencyKey": "has space"}), _Context())
    assert bad == {"status": "invalid", "code": "invalid_message"}
    assert len(history(redis_client, "e1")) == 1


@pytest.mark.parametrize(
    "detail, detail_type, code",
    [
        ({"entityId": "e1", "data": {"amount": 1}}, "transactions.new", "invalid_payload"),
        ({"entityId": "e1", "data": TX}, "nope", "unknown_topic"),
        ({"entityId": "e#1", "data": TX}, "transactions.new", "invalid_message"),
        ({"entityId": "e1", "data": TX, "extra": 1}, "transactions.new", "invalid_message"),
    ],
)
def test_invalid_event_is_logged_counted_and_dropped(bridge, redis_client, capsys, caplog, detail, detail_type, code):
    reply = bridge.handler(eb_event(detail, detail_type), _Context())
    assert reply == {"status": "invalid", "code": code}
    assert history(redis_client, "e1") == []
    out = capsys.readouterr().out
    assert "realtime_streaming.invalid_events" in out  # EMF metric
    assert "invalid EventBridge event dropped" in caplog.text


def test_redis_down_raises_so_eventbridge_retries():
    handler = bridge_handler(Settings(redis_url="redis://127.0.0.1:1/0"))  # nothing listens on port 1
    with pytest.raises(BackendUnavailable):
        handler(eb_event({"entityId": "e1", "data": TX}), _Context())


async def test_put_events_reaches_history_through_the_local_drain(moto_endpoint, redis_url, redis_client):
    system = SimpleNamespace(aws_endpoint=moto_endpoint, redis_url=redis_url, settings=Settings())
    drain = await eventbridge_local.start(system)
    try:
        events = boto3.client("events", endpoint_url=moto_endpoint, region_name="us-east-1")
        await asyncio.to_thread(publish, "e7", "transactions.new", TX, source="data_pool", via="eventbridge", events_client=events)
        # an invalid event put straight on the bus is handled (dropped), never crashes the drain
        await asyncio.to_thread(events.put_events, Entries=[{"Source": "rtstream", "DetailType": "transactions.new", "Detail": json.dumps({"entityId": "e7", "data": {}})}])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and drain.handled < 2:
            await asyncio.sleep(0.05)
        assert drain.handled == 2
        [(hid, fields)] = history(redis_client, "e7")
        assert json.loads(fields[b"data"]) == TX and fields[b"source"] == b"data_pool"
    finally:
        await drain.stop()


async def test_sdk_idempotency_key_travels_through_eventbridge(moto_endpoint, redis_url, redis_client):
    """publish(via="eventbridge", idempotency_key=k) twice: two EventBridge events
    (two ids), one recorded event: the key rides in the detail to the bridge."""
    system = SimpleNamespace(aws_endpoint=moto_endpoint, redis_url=redis_url, settings=Settings())
    drain = await eventbridge_local.start(system)
    try:
        events = boto3.client("events", endpoint_url=moto_endpoint, region_name="us-east-1")
        ids = [await asyncio.to_thread(publish, "e8", "transactions.new", TX, via="eventbridge", events_client=events,
                                       idempotency_key="ledger:tx-8") for _ in range(2)]
        assert ids[0] != ids[1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and drain.handled < 2:
            await asyncio.sleep(0.05)
        assert drain.handled == 2
        assert len(history(redis_client, "e8")) == 1
    finally:
        await drain.stop()


def run_cli(*args, env=None):
    import os

    full = {**os.environ, **(env or {})}
    # only the publish subcommand's parser: independent of the other subcommands' modules
    code = (
        "import argparse, sys; from rtstream_cli import publish_cmd; p = argparse.ArgumentParser(prog='rtstream'); "
        "publish_cmd.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    return subprocess.run([sys.executable, "-c", code, "publish", *args], capture_output=True, text=True, env=full, timeout=60)


def test_cli_publish_prints_the_id(redis_url, redis_client, tmp_path):
    proc = run_cli("transactions.new", "--entity", "e3", "--data", json.dumps(TX), "--source", "ops", env={"REDIS_URL": redis_url, "RTSTREAM_STATE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    [(hid, fields)] = history(redis_client, "e3")
    assert proc.stdout.strip() == hid.decode() and fields[b"source"] == b"ops"


@pytest.mark.parametrize(
    "args, code",
    [
        (["transactions.new", "--entity", "e3", "--data", "{oops"], "invalid_payload"),
        (["transactions.new", "--entity", "e3", "--data", '{"amount": 1}'], "invalid_payload"),
        (["nope", "--entity", "e3", "--data", json.dumps(TX)], "unknown_topic"),
        (["transactions.new", "--entity", "e 3", "--data", json.dumps(TX)], "invalid_message"),
    ],
)
def test_cli_publish_bad_input_is_one_line_and_nonzero(redis_url, redis_client, tmp_path, args, code):
    proc = run_cli(*args, env={"REDIS_URL": redis_url, "RTSTREAM_STATE_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {code}: ") and proc.stderr.count("\n") == 1
    assert proc.stdout == "" and history(redis_client, "e3") == []
