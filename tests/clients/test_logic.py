"""Pure client rules: numeric id order and dedupe, full-jitter backoff, transport
fallback, one ordered subscription, SSE decoding."""

import pytest

from rtstream_client.logic import (
    Cursor,
    SseDecoder,
    TransportChooser,
    backoff_delay,
    frame_from_sse,
    is_replayed,
    normalize_topics,
    sse_query,
    subscribe_frame,
    with_query,
)


def test_cursor_compares_ids_numerically_and_drops_duplicates():
    cursor = Cursor()
    assert cursor.accept("9-0")
    assert cursor.accept("10-0")  # string order would call this older
    assert not cursor.accept("10-0")
    assert not cursor.accept("9-5")
    assert cursor.accept("10-1")
    assert cursor.last_id == "10-1"
    assert cursor.accept(None)  # frames without a cursor always pass
    assert cursor.last_id == "10-1"


def test_cursor_refuses_a_malformed_start():
    with pytest.raises(ValueError):
        Cursor("yesterday")


def test_backoff_is_full_jitter_and_capped():
    assert backoff_delay(0, base=0.5, cap=30, rand=lambda: 0.999) < 0.5
    assert backoff_delay(3, base=0.5, cap=30, rand=lambda: 1.0) == 4.0
    assert backoff_delay(50, base=0.5, cap=30, rand=lambda: 1.0) == 30
    assert backoff_delay(50, base=0.5, cap=30, rand=lambda: 0.0) == 0.0


def test_chooser_falls_back_to_sse_after_repeated_ws_failures_and_probes_ws_later():
    c = TransportChooser("auto", ws_failures_before_fallback=2, ws_retry_after=100)
    assert c.choose() == "ws"
    c.failed("ws", 1)
    assert c.choose() == "ws"
    c.failed("ws", 2)
    assert c.choose() == "sse"
    c.opened("sse", 3)
    assert c.probe_at == 103  # the WebSocket was blocked: probe it now and then
    c.probed(False, 103)
    assert c.choose() == "sse" and c.probe_at == 203
    c.probed(True, 203)
    assert c.choose() == "ws" and c.probe_at is None


def test_chooser_probes_soon_when_a_websocket_that_worked_fails_even_if_sse_never_did():
    """Server restart: the WebSocket fails, and SSE is back by the time the client
    falls back to it. A WebSocket that worked before is an outage, not a block."""
    c = TransportChooser("auto", ws_failures_before_fallback=2, ws_retry_after=100, outage_probe_after=1)
    c.opened("ws", 0)
    c.failed("ws", 1)
    c.failed("ws", 2)
    assert c.choose() == "sse"
    c.opened("sse", 3)
    assert c.probe_at == 4
    c.probed(False, 4)  # still down: back to the long interval
    assert c.probe_at == 104


def test_chooser_after_an_outage_probes_soon_and_alternates_while_both_fail():
    c = TransportChooser("auto", ws_failures_before_fallback=1, ws_retry_after=100, outage_probe_after=1)
    c.failed("ws", 0)
    assert c.choose() == "sse"
    c.failed("sse", 1)  # SSE down too: the server is away
    assert c.choose() == "ws"
    c.failed("ws", 2)
    assert c.choose() == "sse"
    c.opened("sse", 3)
    assert c.probe_at == 4
    fixed = TransportChooser("ws")
    for _ in range(5):
        fixed.failed("ws", 0)
    assert fixed.choose() == "ws"
    sse_only = TransportChooser("sse")
    sse_only.opened("sse", 0)
    assert sse_only.probe_at is None
    with pytest.raises(ValueError):
        TransportChooser("carrier-pigeon")


def test_several_topics_become_one_wildcard_subscription_with_types():
    topics = normalize_topics(["transactions.new", "balance.updated"])
    frame = subscribe_frame(topics, {"minAmount": 5}, "17-0")
    assert frame == {
        "type": "subscribe",
        "topic": "*",
        "filters": {"minAmount": 5, "types": ["transactions.new", "balance.updated"]},
        "since": "17-0",
    }
    assert subscribe_frame(("transactions.new",), None, None) == {"type": "subscribe", "topic": "transactions.new"}
    assert subscribe_frame(normalize_topics("*"), None, None) == {"type": "subscribe", "topic": "*"}
    assert normalize_topics([]) == ("*",)


def test_sse_query_and_url_token():
    assert sse_query(("transactions.new", "sync.completed"), {"sources": ["a", "b"], "minAmount": 10}) == {
        "topics": "transactions.new,sync.completed",
        "sources": "a,b",
        "minAmount": "10",
    }
    assert with_query("ws://h:1/dev?x=1&token=old", token="t.k.n") == "ws://h:1/dev?x=1&token=t.k.n"


def test_sse_decoder_follows_the_event_stream_rules():
    d = SseDecoder()
    lines = ["retry: 2000", "", ": heartbeat", "", "id: 5-0", "event: transactions.new", 'data: {"transactionId":"t1",', 'data: "amount":1}', ""]
    messages = [m for m in (d.feed(line) for line in lines) if m]
    assert len(messages) == 1
    assert d.retry_ms == 2000
    frame = frame_from_sse(messages[0])
    # data lines joined with "\n": the payload, with the SSE id and event name
    assert frame == {"type": "event", "topic": "transactions.new", "id": "5-0", "data": {"transactionId": "t1", "amount": 1}}
    # a bare payload is wrapped with the SSE id and event name
    bare = frame_from_sse(type(messages[0])(event="balance.updated", data='{"change":2}', id="6-0"))
    assert bare == {"type": "event", "topic": "balance.updated", "id": "6-0", "data": {"change": 2}}
    gap = frame_from_sse(type(messages[0])(event="error", data='{"code":"replay_gap","message":"gone"}'))
    assert gap["type"] == "error" and gap["code"] == "replay_gap"
    assert frame_from_sse(type(messages[0])(data="not json")) is None
    # the stream's starting cursor: an id-only frame, or a named "cursor" event
    cursor = [m for m in (d.feed(line) for line in ["id: 7-0", ""]) if m]
    assert frame_from_sse(cursor[0]) == {"type": "cursor", "id": "7-0"}
    assert frame_from_sse(type(messages[0])(event="cursor", data='{"type":"cursor","id":"8-0"}', id="8-0")) == {"type": "cursor", "id": "8-0"}


def test_replayed_means_published_before_a_resumed_session_started():
    assert is_replayed("1000-0", resumed=True, session_started_ms=2000)
    assert not is_replayed("3000-0", resumed=True, session_started_ms=2000)
    assert not is_replayed("1000-0", resumed=False, session_started_ms=2000)
