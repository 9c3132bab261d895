"""The local system's one /metrics (dashboard port): the SSE server's own
metrics, the fan-out worker's and the housekeeping report, each labelled by
component; housekeeping runs periodically inside LocalSystem."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import redis
import websockets

from rtstream.auth import issue_dev_token
from rtstream_cli.dev import LocalSystem


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of ``name`` carrying all ``labels``."""
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


async def test_dashboard_port_metrics_include_worker_and_housekeeping(tmp_path, monkeypatch):
    monkeypatch.setenv("RTSTREAM_STATE_DIR", str(tmp_path))
    log_dir = tmp_path / "not" / "yet" / "there"  # LocalSystem creates it
    # a region of its own: moto's backends are per process, so an earlier test's
    # connections (whose $disconnect never ran) would count in the same tables
    system = LocalSystem(log_dir=log_dir, housekeeping_interval=0.5, write_state_file=False, with_eventbridge=False,
                         region="ap-southeast-2")
    assert log_dir.is_dir()
    await system.start()
    try:
        token = issue_dev_token(system.jwt_secret, user_id="u-metrics", entity_id="acme-metrics")
        async with websockets.connect(f"{system.ws_url}?token={token}", open_timeout=10, ping_interval=None) as ws:
            await ws.send('{"type":"subscribe","topic":"transactions.new"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "subscribed"
            redis.Redis.from_url(system.redis_url).publish(
                "transactions.new:entity:acme-metrics", json.dumps({"transactionId": "m1", "amount": -2.5, "merchant": "Deli"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["data"]["transactionId"] == "m1"

            url = f"http://127.0.0.1:{system.sse_port}/metrics"
            deadline = time.monotonic() + 15
            text = ""
            async with httpx.AsyncClient(timeout=5) as http:
                while time.monotonic() < deadline:
                    response = await http.get(url)
                    assert response.status_code == 200
                    text = response.text
                    # a scrape can miss a part (1 s federation timeout under load): wait for one that has both
                    if (sample(text, "realtime_streaming_active_connections", component="housekeeping", transport="websocket") == 1
                            and sample(text, "realtime_streaming_federated_up", component="worker") == 1
                            and sample(text, "realtime_streaming_federated_up", component="housekeeping") == 1):
                        break
                    await asyncio.sleep(0.2)
        assert sample(text, "realtime_streaming_active_connections", component="housekeeping", transport="websocket") == 1, text
        assert sample(text, "realtime_streaming_active_connections", component="housekeeping", transport="sse") == 0
        assert sample(text, "realtime_streaming_active_connections", component="sse", transport="sse") == 0  # the SSE process's own
        assert sample(text, "realtime_streaming_message_latency_ms_count", component="worker") >= 1
        assert sample(text, "realtime_streaming_message_latency_ms_bucket", component="worker", le="+Inf") >= 1
        assert sample(text, "realtime_streaming_deliveries_total", component="worker") >= 1
        assert sample(text, "realtime_streaming_deliveries_total", component="sse", transport="sse") == 0
        assert sample(text, "realtime_streaming_federated_up", component="worker") == 1
        assert sample(text, "realtime_streaming_federated_up", component="housekeeping") == 1
        # valid exposition: one HELP/TYPE per family, all its samples right after it
        types = re.findall(r"^# TYPE (\S+) ", text, re.M)
        assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)
        assert system.housekeeping_report is not None and system.housekeeping_report.active.get("websocket") == 1
    finally:
        await system.stop()
    assert system._housekeeping_task is None


async def test_housekeeping_can_be_turned_off_and_a_dead_part_is_reported_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setenv("RTSTREAM_STATE_DIR", str(tmp_path))
    system = LocalSystem(housekeeping_interval=0, write_state_file=False, with_eventbridge=False)
    await system.start()
    try:
        assert system._housekeeping_task is None
        assert "housekeeping=" not in system.child_env["RTSTREAM_METRICS_FEDERATE"]
        await system.worker.stop()  # its metrics endpoint goes away with it
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(f"http://127.0.0.1:{system.sse_port}/metrics")
        assert response.status_code == 200
        assert sample(response.text, "realtime_streaming_federated_up", component="worker") == 0
        assert sample(response.text, "realtime_streaming_active_connections", component="sse", transport="sse") == 0
    finally:
        await system.stop()
