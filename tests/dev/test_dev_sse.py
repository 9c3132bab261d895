"""Dev code only in dev: the dashboard, its dev token and metrics federation are
served by `rtstream dev`'s wrapper of the SSE app (``rtstream_cli.dev_sse``);
the production app neither has nor imports any of it."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rtstream.auth import TokenVerifier
from rtstream.models import Principal
from rtstream.settings import Settings
from rtstream_cli.federate import merge, parse_targets
from sse.support import start_server

SECRET = "dev-sse-test-secret-0123456789abcdef-0123"
DEV_PATHS = ("/", "/static/rtstream.js", "/dashboard/config")


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_the_production_app_has_no_dev_routes_and_imports_no_dev_code():
    code = (
        "import json, sys\n"
        "from rtstream.settings import Settings\n"
        "from rtstream_sse.app import create_app\n"
        "import rtstream_sse.__main__\n"
        "app = create_app(Settings(jwt_secret='x' * 32), redis_factory=lambda **kw: None)\n"
        "print(json.dumps({'paths': sorted(r.path for r in app.routes),\n"
        "                  'dev': sorted(m for m in sys.modules if m.startswith(('rtstream_cli', 'rtstream_client', 'prometheus_client.parser')))}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["paths"] == ["/events", "/healthz", "/metrics", "/presence"]
    assert report["dev"] == []


def test_dev_wrapper_serves_dashboard_dev_token_and_passes_the_rest_through(redis_url, tmp_path):
    server = start_server(redis_url, SECRET, tmp_path, module="rtstream_cli.dev_sse", RTSTREAM_DASHBOARD_DEV_TOKEN="1",
                          RTSTREAM_DEV_ENTITY="dev-entity", RTSTREAM_PUBLIC_WS_URL="ws://127.0.0.1:1/dev")
    try:
        page = httpx.get(server.url + "/")
        js = httpx.get(server.url + "/static/rtstream.js")
        missing = [httpx.get(server.url + p) for p in ("/static/nope.js", "/static/..%2Fapp.py")]
        config = httpx.get(server.url + "/dashboard/config").json()
        health = httpx.get(server.url + "/healthz")  # the production app's, through the wrapper
        metrics = httpx.get(server.url + "/metrics")
    finally:
        server.stop()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert [(r.status_code, r.json()["code"]) for r in missing] == [(404, "not_found")] * 2
    assert config["wsUrl"] == "ws://127.0.0.1:1/dev" and config["sseUrl"] == server.url + "/events"
    assert config["entityId"] == "dev-entity" and config["userId"] == "demo-user"
    principal = TokenVerifier(Settings(jwt_secret=SECRET)).verify(config["token"])
    assert principal == Principal(user_id="demo-user", entity_id="dev-entity", role="user")
    assert health.status_code == 200 and health.json()["redis"] == "connected"
    assert metrics.status_code == 200 and "realtime_streaming_active_connections" in families(metrics.text)


def test_dev_wrapper_without_dev_token_hands_out_none(redis_url, tmp_path):
    server = start_server(redis_url, SECRET, tmp_path, module="rtstream_cli.dev_sse")
    try:
        config = httpx.get(server.url + "/dashboard/config").json()
    finally:
        server.stop()
    assert config["token"] is None and config["entityId"] is None and config["sseUrl"] == server.url + "/events"
    assert config["rewind"] == 100  # a freshly opened dashboard starts with the latest events


def test_merge_labels_each_part_and_keeps_one_help_and_type_per_family():
    sse = ('# HELP realtime_streaming_active_connections Open SSE streams.\n# TYPE realtime_streaming_active_connections gauge\n'
           'realtime_streaming_active_connections{transport="sse"} 2\n'
           '# HELP realtime_streaming_message_latency_ms Latency.\n# TYPE realtime_streaming_message_latency_ms histogram\n'
           'realtime_streaming_message_latency_ms_bucket{le="5"} 1\nrealtime_streaming_message_latency_ms_bucket{le="+Inf"} 1\n'
           'realtime_streaming_message_latency_ms_sum 3.000\nrealtime_streaming_message_latency_ms_count 1\n')
    worker = ('# HELP realtime_streaming_message_latency_ms Other help.\n# TYPE realtime_streaming_message_latency_ms histogram\n'
              'realtime_streaming_message_latency_ms_bucket{le="5"} 4\nrealtime_streaming_message_latency_ms_bucket{le="+Inf"} 5\n'
              'realtime_streaming_message_latency_ms_sum 40.5\nrealtime_streaming_message_latency_ms_count 5\n'
              '# TYPE realtime_streaming_fanout_owned_partitions gauge\nrealtime_streaming_fanout_owned_partitions 16\n'
              '# HELP realtime_streaming_posts_total Posts.\n# TYPE realtime_streaming_posts_total counter\n'
              'realtime_streaming_posts_total{outcome="ok"} 9\n')
    housekeeping = ('# HELP realtime_streaming_active_connections Live connections.\n# TYPE realtime_streaming_active_connections gauge\n'
                    'realtime_streaming_active_connections{transport="websocket"} 7\n'
                    '# TYPE realtime_streaming_fanout_owned_partitions counter\nrealtime_streaming_fanout_owned_partitions_total 3\n')
    text = merge([("sse", sse), ("worker", worker), ("housekeeping", housekeeping)])
    lines = text.splitlines()
    assert lines.count("# TYPE realtime_streaming_message_latency_ms histogram") == 1
    assert "# HELP realtime_streaming_active_connections sse: Open SSE streams. | housekeeping: Live connections." in lines
    assert "# HELP realtime_streaming_message_latency_ms sse: Latency. | worker: Other help." in lines
    parsed = families(text)  # valid exposition text, read back by prometheus_client
    latency = {(s.name, s.labels.get("component"), s.labels.get("le")): s.value
               for s in parsed["realtime_streaming_message_latency_ms"].samples}
    assert latency == {
        ("realtime_streaming_message_latency_ms_bucket", "sse", "5"): 1,
        ("realtime_streaming_message_latency_ms_bucket", "sse", "+Inf"): 1,
        ("realtime_streaming_message_latency_ms_sum", "sse", None): 3.0,
        ("realtime_streaming_message_latency_ms_count", "sse", None): 1,
        ("realtime_streaming_message_latency_ms_bucket", "worker", "5"): 4,
        ("realtime_streaming_message_latency_ms_bucket", "worker", "+Inf"): 5,
        ("realtime_streaming_message_latency_ms_sum", "worker", None): 40.5,
        ("realtime_streaming_message_latency_ms_count", "worker", None): 5,
    }
    active = {(s.labels["component"], s.labels["transport"]): s.value
              for s in parsed["realtime_streaming_active_connections"].samples}
    assert active == {("sse", "sse"): 2, ("housekeeping", "websocket"): 7}
    # the same name with another type in a later part: that part's samples are dropped, the rest kept
    owned = parsed["realtime_streaming_fanout_owned_partitions"]
    assert owned.type == "gauge" and [(s.labels, s.value) for s in owned.samples] == [({"component": "worker"}, 16)]
    posts = parsed["realtime_streaming_posts"]
    assert posts.type == "counter" and [(s.name, s.labels, s.value) for s in posts.samples] == [
        ("realtime_streaming_posts_total", {"component": "worker", "outcome": "ok"}, 9)]


def test_a_part_that_is_not_exposition_text_is_left_out_not_the_scrape():
    good = "# TYPE realtime_streaming_up gauge\nrealtime_streaming_up 1\n"
    text = merge([("sse", good), ("worker", "<html>oops</html>\n{{{ not metrics")])
    parsed = families(text)
    assert [(s.labels, s.value) for s in parsed["realtime_streaming_up"].samples] == [({"component": "sse"}, 1)]


def test_federation_targets_are_validated():
    assert parse_targets("worker=http://127.0.0.1:9/metrics, hk=http://localhost:10/m") == (
        ("worker", "http://127.0.0.1:9/metrics"), ("hk", "http://localhost:10/m"))
    assert parse_targets("") == ()
    for bad in ("http://127.0.0.1:9/metrics", "worker=https://h:1/m", "worker=http://h/m", "bad name=http://h:1/m"):
        with pytest.raises(ValueError):
            parse_targets(bad)
