"""Presence events of SSE connections (with and without a registry), the batch
presence refresh and the reconnection metrics (Prometheus and EMF)."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx

from rtstream.inmemory.limits import InMemoryPresence
from rtstream.settings import Settings
from rtstream_sse.app import ServerState
from rtstream_sse.config import SSEConfig
from rtstream_sse.metrics import EMF_MAX_VALUES, emit_emf

from .conftest import publish
from .support import start_server


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(match.group(3))
    return None


async def presence_of(stream, user_id: str, timeout: float = 5.0) -> dict:
    """The next presence event about ``user_id`` (the watcher's own may come first)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        frame = await stream.next_event(max(0.05, deadline - asyncio.get_running_loop().time()))
        assert frame is not None and frame.event == "presence", frame
        data = frame.json()  # data: is the presence payload
        if data["userId"] == user_id:
            return data


async def check_join_and_leave_events(url: str, entity: str, token_for, open_stream) -> None:
    watcher = await open_stream(url, token_for(entity, user_id="watcher"), params={"topics": "presence"})
    await watcher.next_frame()  # retry
    joiner = await open_stream(url, token_for(entity, user_id="joiner"))
    await joiner.next_frame()
    online = await presence_of(watcher, "joiner")
    assert online == {"userId": "joiner", "state": "online", "connections": 1, "transports": ["sse"]}
    await joiner.response.aclose()
    offline = await presence_of(watcher, "joiner")
    assert offline["state"] == "offline" and offline["connections"] == 0


async def test_sse_connect_and_disconnect_publish_presence_without_a_registry(sse_server, entity, token_for, open_stream):
    await check_join_and_leave_events(sse_server.url, entity, token_for, open_stream)


async def test_sse_connect_and_disconnect_publish_presence_with_a_registry(redis_url, sse_secret, sse_logs, moto_endpoint, tables, entity, token_for, open_stream):
    server = start_server(redis_url, sse_secret, sse_logs, CONNECTIONS_TABLE=tables["ConnectionsTable"],
                          SUBSCRIPTIONS_TABLE=tables["SubscriptionsTable"], AWS_ENDPOINT_URL=moto_endpoint)
    try:
        await check_join_and_leave_events(server.url, entity, token_for, open_stream)
    finally:
        server.stop()


async def test_presence_is_refreshed_past_its_ttl_while_the_stream_lives(redis_url, sse_secret, sse_logs, entity, token_for, open_stream):
    server = start_server(redis_url, sse_secret, sse_logs, RTSTREAM_PRESENCE_TTL_SECONDS="2")
    try:
        streams = [await open_stream(server.url, token_for(entity, user_id=f"stay-{i % 2}")) for i in range(3)]
        for stream in streams:
            await stream.next_frame()
        await asyncio.sleep(4.5)  # > 2 TTLs: only the periodic refresh keeps them
        async with httpx.AsyncClient() as http:
            r = await http.get(server.url + "/presence", headers={"authorization": f"Bearer {token_for(entity)}"})
        users = {u["userId"]: u["connections"] for u in r.json()["users"]}
        assert users == {"stay-0": 2, "stay-1": 1}
    finally:
        server.stop()
    assert "presence heartbeats failed" not in server.log_text()


class CountingPresence(InMemoryPresence):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, int]] = []

    def heartbeat(self, entity_id, user_id, connection_id, transport):
        self.calls.append(("heartbeat", entity_id, 1))
        return super().heartbeat(entity_id, user_id, connection_id, transport)

    def touch(self, entity_id, members):
        self.calls.append(("touch", entity_id, len(members)))
        return super().touch(entity_id, members)


def test_the_periodic_refresh_is_one_batch_touch_per_entity():
    presence = CountingPresence()
    state = ServerState(Settings(), SSEConfig(), redis_url="redis://unused", verifier=None, service=None, presence=presence,
                        redis_factory=lambda **_: None)
    members = {"e1": [(f"u{i}", f"c{i}", "sse") for i in range(50)], "e2": [("u9", "c9", "sse")]}
    state._touch_all(members)
    assert presence.calls == [("touch", "e1", 50), ("touch", "e2", 1)]
    assert {u["userId"] for u in presence.online("e1")} == {f"u{i}" for i in range(50)}


async def test_resumes_are_counted_for_the_reconnection_rate(redis_url, sse_secret, sse_logs, event_log, entity, token_for, open_stream):
    server = start_server(redis_url, sse_secret, sse_logs, RTSTREAM_EMF_INTERVAL_S="0.3")
    try:
        [first] = await asyncio.to_thread(publish, event_log, entity, 1)
        token = token_for(entity)
        fresh = await open_stream(server.url, token)
        by_header = await open_stream(server.url, token, headers={"Last-Event-ID": first.id})
        by_query = await open_stream(server.url, token, params={"lastEventId": first.id})
        for stream in (fresh, by_header, by_query):
            await stream.next_frame()
        async with httpx.AsyncClient() as http:
            text = (await http.get(server.url + "/metrics")).text
        assert sample(text, "realtime_streaming_reconnects_total", transport="sse") == 2
        assert sample(text, "realtime_streaming_connections_opened_total", transport="sse") == 3
        assert text.count("# TYPE realtime_streaming_reconnects_total counter") == 1
        deadline = time.monotonic() + 5
        values: list[int] = []
        while time.monotonic() < deadline and len(values) < 3:
            await asyncio.sleep(0.1)
            values = [v for line in server.log_text().splitlines() if line.startswith('{"_aws"')
                      for v in json.loads(line).get("realtime_streaming.reconnection_rate", [])]
        assert sorted(values) == [0, 1, 1]  # Average = 2/3 resumed, Sum = 2 reconnects
    finally:
        server.stop()


def emf_records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]


def test_emf_reconnection_values_are_split_at_the_emf_limit(capsys):
    emit_emf("NS", "svc", active_connections=4, deliveries=9, resumed=130, fresh=20)
    lines = emf_records(capsys)
    assert len(lines) == 2
    assert lines[0]["realtime_streaming.active_connections"] == [4] and lines[0]["realtime_streaming.deliveries"] == [9]
    assert "realtime_streaming.active_connections" not in lines[1]  # counted once
    rates = [v for record in lines for v in record["realtime_streaming.reconnection_rate"]]
    assert len(rates) == 150 and sum(rates) == 130 and all(len(r["realtime_streaming.reconnection_rate"]) <= EMF_MAX_VALUES for r in lines)
    for record in lines:
        declared = {m["Name"] for m in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
        assert declared == {k for k in record if k.startswith("realtime_streaming.")}
        assert record["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["ServiceName"]] and record["ServiceName"] == "svc"
    emit_emf("NS", "svc", active_connections=0, deliveries=0, resumed=0, fresh=0)
    quiet = emf_records(capsys)
    assert len(quiet) == 1 and "realtime_streaming.reconnection_rate" not in quiet[0]


async def test_agent_presence_refusals_are_security_events_in_emf_and_prometheus(redis_url, sse_secret, sse_logs, entity, token_for):
    """Agents are refused presence on both SSE routes (issue 11), counted like the
    WebSocket refusals: the EMF metric CloudWatch alarms on, and /metrics."""
    server = start_server(redis_url, sse_secret, sse_logs, RTSTREAM_EMF_INTERVAL_S="0.3")
    try:
        agent = token_for(entity, user_id="agent-1", role="agent")
        async with httpx.AsyncClient(timeout=5) as http:
            r1 = await http.get(server.url + "/presence", headers={"authorization": f"Bearer {agent}"})
            r2 = await http.get(server.url + "/events", params={"topics": "presence"}, headers={"authorization": f"Bearer {agent}"})
            for r in (r1, r2):
                assert r.status_code == 403 and r.json()["code"] == "forbidden"
            text = (await http.get(server.url + "/metrics")).text
        assert sample(text, "realtime_streaming_security_events_total", transport="sse", event="agent_forbidden_operation") == 2
        deadline = time.monotonic() + 5
        total = 0
        while time.monotonic() < deadline and total < 2:
            await asyncio.sleep(0.1)
            total = sum(sum(json.loads(line).get("realtime_streaming.security_events", []))
                        for line in server.log_text().splitlines() if line.startswith('{"_aws"'))
        assert total == 2
        assert f"agent agent-1 of entity {entity} attempted a forbidden operation" in server.log_text()
        assert agent not in server.log_text()
    finally:
        server.stop()
