"""Strict parsing of every client frame of the contract."""

from __future__ import annotations

import json

import pytest

from rtstream import protocol
from rtstream.errors import InvalidMessage, MessageTooLarge, UnknownTopic
from rtstream.models import Filters
from rtstream.protocol import Ping, PresenceQuery, Subscribe, Unsubscribe, parse_client_frame

MAX = 32 * 1024


def parse(obj_or_text, max_bytes=MAX):
    raw = obj_or_text if isinstance(obj_or_text, (str, bytes)) else json.dumps(obj_or_text)
    return parse_client_frame(raw, max_bytes=max_bytes)


# ---- accepted frames -------------------------------------------------------------


def test_subscribe_minimal():
    assert parse({"type": "subscribe", "topic": "transactions.new"}) == Subscribe("transactions.new", Filters(), None)


def test_subscribe_full():
    frame = parse(
        {
            "type": "subscribe",
            "topic": "*",
            "filters": {"types": ["transactions.new", "balance.updated"], "sources": ["data_pool"], "minAmount": 10},
            "since": "1764090000000-0",
        }
    )
    assert frame == Subscribe("*", Filters(types=("transactions.new", "balance.updated"), sources=("data_pool",), min_amount=10.0), "1764090000000-0")


@pytest.mark.parametrize("topic", ["transactions.new", "agent.action.completed", "balance.updated", "sync.completed", "*", "presence"])
def test_every_subscribable_topic(topic):
    assert parse({"type": "subscribe", "topic": topic}).topic == topic
    assert parse({"type": "unsubscribe", "topic": topic}) == Unsubscribe(topic)


def test_ping_and_presence():
    assert parse({"type": "ping"}) == Ping()
    assert parse('{"type":"presence"}') == PresenceQuery()


def test_bytes_input_and_empty_filters():
    assert parse(b'{"type":"subscribe","topic":"sync.completed","filters":{}}') == Subscribe("sync.completed")


def test_null_optional_fields_mean_absent():
    assert parse({"type": "subscribe", "topic": "*", "filters": None, "since": None}) == Subscribe("*")


@pytest.mark.parametrize("n", [1, 7, 100])
def test_subscribe_with_rewind(n):
    frame = parse({"type": "subscribe", "topic": "balance.updated", "filters": {"minAmount": 1}, "rewind": n})
    assert frame == Subscribe("balance.updated", Filters(min_amount=1.0), None, n)
    assert parse({"type": "subscribe", "topic": "*", "rewind": None}) == Subscribe("*")


def test_min_amount_zero_and_float_accepted():
    assert parse({"type": "subscribe", "topic": "*", "filters": {"minAmount": 0}}).filters.min_amount == 0.0
    assert parse({"type": "subscribe", "topic": "*", "filters": {"minAmount": 2.5}}).filters.min_amount == 2.5


def test_duplicate_filter_values_collapse():
    assert parse({"type": "subscribe", "topic": "*", "filters": {"sources": ["a", "a", "b"]}}).filters.sources == ("a", "b")


# ---- refused frames: each with its code -------------------------------------------

INVALID = {
    "not json": "{not json",
    "truncated json": '{"type":"ping"',
    "empty": "",
    "NaN constant": '{"type":"subscribe","topic":"*","filters":{"minAmount":NaN}}',
    "Infinity constant": '{"type":"subscribe","topic":"*","filters":{"minAmount":Infinity}}',
    "array": "[]",
    "string": '"ping"',
    "number": "42",
    "null": "null",
    "missing type": {"topic": "*"},
    "type not a string": {"type": 1},
    "type null": {"type": None},
    "unknown type": {"type": "bogus", "topic": "*"},
    "type case": {"type": "Subscribe", "topic": "*"},
    "unknown field on subscribe": {"type": "subscribe", "topic": "*", "entity": "other"},
    "entityId smuggled": {"type": "subscribe", "topic": "*", "entityId": "victim"},
    "unknown field on ping": {"type": "ping", "extra": 1},
    "unknown field on presence": {"type": "presence", "entity": "x"},
    "unknown field on unsubscribe": {"type": "unsubscribe", "topic": "*", "filters": {}},
    "missing topic": {"type": "subscribe"},
    "topic not a string": {"type": "subscribe", "topic": ["*"]},
    "topic number": {"type": "unsubscribe", "topic": 5},
    "filters not object": {"type": "subscribe", "topic": "*", "filters": []},
    "filters string": {"type": "subscribe", "topic": "*", "filters": "types=x"},
    "unknown filter": {"type": "subscribe", "topic": "*", "filters": {"entity": "x"}},
    "types not list": {"type": "subscribe", "topic": "*", "filters": {"types": "transactions.new"}},
    "types empty": {"type": "subscribe", "topic": "*", "filters": {"types": []}},
    "types entry number": {"type": "subscribe", "topic": "*", "filters": {"types": [1]}},
    "types entry not event topic": {"type": "subscribe", "topic": "*", "filters": {"types": ["presence"]}},
    "types entry wildcard": {"type": "subscribe", "topic": "*", "filters": {"types": ["*"]}},
    "types entry unknown": {"type": "subscribe", "topic": "*", "filters": {"types": ["nope"]}},
    "types too many": {"type": "subscribe", "topic": "*", "filters": {"types": ["transactions.new"] * 21}},
    "sources not list": {"type": "subscribe", "topic": "*", "filters": {"sources": {"a": 1}}},
    "sources empty": {"type": "subscribe", "topic": "*", "filters": {"sources": []}},
    "sources entry not string": {"type": "subscribe", "topic": "*", "filters": {"sources": [None]}},
    "sources entry empty string": {"type": "subscribe", "topic": "*", "filters": {"sources": [""]}},
    "sources entry too long": {"type": "subscribe", "topic": "*", "filters": {"sources": ["x" * 129]}},
    "sources too many": {"type": "subscribe", "topic": "*", "filters": {"sources": [f"s{i}" for i in range(21)]}},
    "minAmount bool": {"type": "subscribe", "topic": "*", "filters": {"minAmount": True}},
    "minAmount string": {"type": "subscribe", "topic": "*", "filters": {"minAmount": "10"}},
    "minAmount negative": {"type": "subscribe", "topic": "*", "filters": {"minAmount": -1}},
    "minAmount huge overflow": '{"type":"subscribe","topic":"*","filters":{"minAmount":1e999}}',
    "since number": {"type": "subscribe", "topic": "*", "since": 1764090000000},
    "since malformed": {"type": "subscribe", "topic": "*", "since": "yesterday"},
    "since injection": {"type": "subscribe", "topic": "*", "since": "0-0 + inf"},
    "since missing seq": {"type": "subscribe", "topic": "*", "since": "1764090000000"},
    "rewind zero": {"type": "subscribe", "topic": "*", "rewind": 0},
    "rewind 101": {"type": "subscribe", "topic": "*", "rewind": 101},
    "rewind negative": {"type": "subscribe", "topic": "*", "rewind": -1},
    "rewind float": {"type": "subscribe", "topic": "*", "rewind": 5.5},
    "rewind integral float": {"type": "subscribe", "topic": "*", "rewind": 5.0},
    "rewind bool": {"type": "subscribe", "topic": "*", "rewind": True},
    "rewind string": {"type": "subscribe", "topic": "*", "rewind": "5"},
    "rewind list": {"type": "subscribe", "topic": "*", "rewind": [5]},
    "rewind huge": '{"type":"subscribe","topic":"*","rewind":1e999}',
    "rewind with since": {"type": "subscribe", "topic": "*", "rewind": 5, "since": "1764090000000-0"},
    "rewind on unsubscribe": {"type": "unsubscribe", "topic": "*", "rewind": 5},
    "duplicate keys": '{"type":"subscribe","topic":"*","topic":"presence"}',
    "duplicate type": '{"type":"ping","type":"subscribe","topic":"*"}',
    "invalid utf-8": b'{"type":"ping","x":"\xff"}',
    "deep nesting": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("raw", list(INVALID.values()), ids=list(INVALID))
def test_invalid_frames_are_refused_with_invalid_message(raw):
    with pytest.raises(InvalidMessage) as info:
        parse(raw, max_bytes=10**7)
    assert info.value.code == "invalid_message"
    frame = info.value.to_frame()
    assert frame["type"] == "error" and frame["code"] == "invalid_message" and frame["message"]


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "subscribe", "topic": "transactions.deleted"},
        {"type": "subscribe", "topic": ""},
        {"type": "subscribe", "topic": "TRANSACTIONS.NEW"},
        {"type": "unsubscribe", "topic": "e2#transactions.new"},
    ],
)
def test_unknown_topic(raw):
    with pytest.raises(UnknownTopic) as info:
        parse(raw)
    assert info.value.code == "unknown_topic"


def test_oversize_refused_before_parsing():
    body = json.dumps({"type": "subscribe", "topic": "*", "filters": {"sources": ["x" * 100]}})
    with pytest.raises(MessageTooLarge) as info:
        parse(body, max_bytes=len(body) - 1)
    assert info.value.code == "message_too_large"
    assert parse(body, max_bytes=len(body)).topic == "*"


def test_oversize_counts_bytes_not_characters():
    body = '{"type":"ping"}' + " " * 10
    wide = '{"type":"subscribe","topic":"*","filters":{"sources":["' + "€" * 20 + '"]}}'
    assert len(wide.encode()) > len(wide)
    with pytest.raises(MessageTooLarge):
        parse(wide, max_bytes=len(wide.encode()) - 1)
    with pytest.raises(MessageTooLarge):
        parse(wide.encode(), max_bytes=len(wide.encode()) - 1)
    assert parse(body, max_bytes=len(body)) == Ping()


def test_message_too_large_is_an_invalid_message_subclass_with_own_code():
    assert issubclass(MessageTooLarge, InvalidMessage)


def test_error_messages_do_not_echo_huge_input():
    with pytest.raises(InvalidMessage) as info:
        parse({"type": "x" * 5000})
    assert len(info.value.message) < 300


# ---- server frames -----------------------------------------------------------------


def test_frame_builders_and_compact_dumps():
    assert protocol.subscribed("*") == {"type": "subscribed", "topic": "*"}
    assert protocol.unsubscribed("presence") == {"type": "unsubscribed", "topic": "presence"}
    assert protocol.pong(123) == {"type": "pong", "timestamp": 123, "cursor": "0-0"}
    assert protocol.pong(123, "17-2") == {"type": "pong", "timestamp": 123, "cursor": "17-2"}
    users = [{"userId": "u1", "connections": 2, "transports": ["websocket"]}]
    assert protocol.presence_reply(users) == {"type": "presence", "users": users}
    assert protocol.dumps({"type": "pong", "timestamp": 1}) == '{"type":"pong","timestamp":1}'
    assert protocol.dumps({"m": "café"}) == '{"m":"café"}'
