"""The shared JSON vectors (clients/vectors/) against the Python client's logic;
the browser package runs the same files with node --test."""

import json
from pathlib import Path

import pytest

from rtstream_client.logic import (
    Cursor,
    SseMessage,
    StallWatch,
    TransportChooser,
    backoff_delay,
    classify_ws_frame,
    frame_from_sse,
    is_replayed,
    normalize_topics,
    sse_query,
    subscribe_frame,
)

VECTORS = Path(__file__).resolve().parents[2] / "clients" / "vectors"


def vectors(name):
    return json.loads((VECTORS / name).read_text())


@pytest.mark.parametrize("case", vectors("backoff.json")["cases"], ids=lambda c: c["name"])
def test_backoff(case):
    assert backoff_delay(case["attempt"], base=case["base"], cap=case["cap"], rand=lambda: case["rand"]) == case["expect"]


@pytest.mark.parametrize("case", vectors("cursor.json")["cases"], ids=lambda c: c["name"])
def test_cursor(case):
    cursor = Cursor(case["start"])
    for i, step in enumerate(case["steps"]):
        if "advance" in step:
            cursor.advance(step["advance"])
        else:
            assert cursor.accept(step["accept"], older=bool(step.get("older"))) is step["expect"], f"step {i}"
        assert cursor.last_id == step["last"], f"step {i}"


@pytest.mark.parametrize("start", vectors("cursor.json")["malformed_start"])
def test_cursor_refuses_a_malformed_start(start):
    with pytest.raises(ValueError):
        Cursor(start)


@pytest.mark.parametrize("case", vectors("transport.json")["cases"], ids=lambda c: c["name"])
def test_transport(case):
    chooser = TransportChooser(case["mode"], case["limit"], case["ws_retry_after"], case["outage_probe_after"])
    for i, step in enumerate(case["steps"]):
        op = step["op"]
        if op == "failed":
            chooser.failed(step["transport"], step["now"])
        elif op == "opened":
            chooser.opened(step["transport"], step["now"])
        elif op == "probed":
            chooser.probed(step["reachable"], step["now"])
        elif op == "stalled":
            chooser.stalled(step["now"])
        elif op == "delivered":
            chooser.delivered()
        else:
            raise AssertionError(f"unknown op {op}")
        assert {"current": chooser.choose(), "probe_at": chooser.probe_at} == step["expect"], f"step {i} ({op})"


@pytest.mark.parametrize("mode", vectors("transport.json")["invalid_modes"])
def test_transport_refuses_unknown_modes(mode):
    with pytest.raises(ValueError):
        TransportChooser(mode)


@pytest.mark.parametrize("case", vectors("stall.json")["cases"], ids=lambda c: c["name"])
def test_stall_watch(case):
    watch = StallWatch(case["after"], case["pongs"])
    for i, step in enumerate(case["steps"]):
        if "caught_up" in step:
            watch.caught_up(step["caught_up"])
        else:
            assert watch.pong(step["pong"], step["now"]) == step["expect"], f"step {i}"


@pytest.mark.parametrize("case", vectors("subscribe.json")["cases"], ids=lambda c: c["name"])
def test_subscribe_frame_and_sse_query(case):
    topics = tuple(case["topics"])
    assert subscribe_frame(topics, case["filters"], case["since"], case["rewind"]) == case["frame"]
    assert sse_query(topics, case["filters"], None if case["since"] else case["rewind"]) == case["sse_query"]


@pytest.mark.parametrize("case", vectors("subscribe.json")["normalize"], ids=str)
def test_normalize_topics(case):
    assert list(normalize_topics(case["topics"])) == case["expect"]


@pytest.mark.parametrize("case", vectors("sse_frames.json")["cases"], ids=lambda c: c["name"])
def test_sse_frames(case):
    assert frame_from_sse(SseMessage(event=case["event"], data=case["data"], id=case["id"])) == case["expect"]


@pytest.mark.parametrize("case", vectors("ws_frames.json")["cases"], ids=lambda c: json.dumps(c["frame"]))
def test_ws_frames(case):
    assert classify_ws_frame(case["frame"], case["subscribed"]) == case["expect"]


@pytest.mark.parametrize("case", vectors("replayed.json")["cases"], ids=str)
def test_replayed(case):
    assert is_replayed(case["id"], resumed=case["resumed"], session_started_ms=case["started_ms"]) is case["expect"]
