"""publish(): validation before any I/O, Redis and EventBridge paths; raw parsing."""

from __future__ import annotations

import json

import boto3
import pytest

from rtstream import keys
from rtstream.adapters.publishing import publish
from rtstream.errors import InvalidMessage, InvalidPayload, MessageTooLarge, UnknownTopic
from rtstream.fanout import decode_entry
from rtstream.publishing import parse_raw
from rtstream.settings import Settings

TX = {"transactionId": "t1", "amount": 42.5, "merchant": "Cafe"}


class NoIO:
    """A client that fails the test if anything touches it."""

    def __getattr__(self, name):
        raise AssertionError(f"I/O attempted: {name}")


@pytest.mark.parametrize(
    "kwargs, error, code",
    [
        (dict(entity_id="e1", topic="nope", data=TX), UnknownTopic, "unknown_topic"),
        (dict(entity_id="e1", topic="presence", data=TX), UnknownTopic, "unknown_topic"),
        (dict(entity_id="e1", topic="*", data=TX), UnknownTopic, "unknown_topic"),
        (dict(entity_id="e1:x", topic="transactions.new", data=TX), InvalidMessage, "invalid_message"),
        (dict(entity_id="", topic="transactions.new", data=TX), InvalidMessage, "invalid_message"),
        (dict(entity_id="e1", topic="transactions.new", data={"amount": "x"}), InvalidPayload, "invalid_payload"),
        (dict(entity_id="e1", topic="transactions.new", data=[1]), InvalidPayload, "invalid_payload"),
        (dict(entity_id="e1", topic="transactions.new", data={**TX, "n": float("nan")}), InvalidPayload, "invalid_payload"),
        (dict(entity_id="e1", topic="transactions.new", data={**TX, "blob": "x" * 200_000}), MessageTooLarge, "message_too_large"),
        (dict(entity_id="e1", topic="transactions.new", data=TX, source="bad source!"), InvalidMessage, "invalid_message"),
        (dict(entity_id="e1", topic="transactions.new", data=TX, via="carrier-pigeon"), InvalidMessage, "invalid_message"),
    ],
)
def test_bad_input_is_refused_before_any_io(kwargs, error, code):
    with pytest.raises(error) as info:
        publish(**kwargs, client=NoIO(), events_client=NoIO(), settings=Settings())
    assert info.value.code == code
    assert info.value.to_frame()["message"]


def test_publish_via_redis_returns_the_history_id(redis_client):
    settings = Settings()
    event_id = publish("e1", "transactions.new", TX, source="data_pool", client=redis_client, settings=settings)
    [(hid, fields)] = redis_client.xrange(keys.history("e1", settings).name)
    assert hid.decode() == event_id
    [(entry_id, queued)] = redis_client.xrange(keys.fanout_stream(keys.partition_of("e1", settings)).name)
    event = decode_entry(entry_id, queued)
    assert (event.id, event.source, event.data) == (event_id, "data_pool", TX)


def test_publish_via_eventbridge_puts_detail_type_topic(moto_endpoint):
    events = boto3.client("events", endpoint_url=moto_endpoint, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName="pub-test")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="pub-test", EventPattern=json.dumps({"detail-type": ["transactions.new"]}))
    events.put_targets(Rule="pub-test", Targets=[{"Id": "q", "Arn": arn}])
    try:
        event_id = publish("e1", "transactions.new", TX, source="data_pool", via="eventbridge", events_client=events, settings=Settings())
        assert event_id
        [message] = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=2)["Messages"]
        body = json.loads(message["Body"])
        assert body["detail-type"] == "transactions.new" and body["source"] == "rtstream"
        assert body["detail"] == {"entityId": "e1", "data": TX, "source": "data_pool"}
    finally:
        events.remove_targets(Rule="pub-test", Ids=["q"])
        events.delete_rule(Name="pub-test")


def test_parse_raw_accepts_seed_payloads_and_envelopes():
    seed = parse_raw(b"transactions.new:entity:e1", json.dumps({**TX, "timestamp": "2026-11-25T12:00:00Z"}).encode())
    assert (seed.entity_id, seed.topic, seed.source, seed.data["amount"]) == ("e1", "transactions.new", "redis", 42.5)
    env = parse_raw("balance.updated:entity:e2", json.dumps({"data": {"accountId": "a", "newBalance": 1, "change": 1}, "source": "core"}))
    assert (env.entity_id, env.source) == ("e2", "core")


@pytest.mark.parametrize(
    "channel, payload, code",
    [
        (b"transactions.new:entity:e1", b"{not json", "invalid_payload"),
        (b"transactions.new:entity:e1", b'{"amount": 1}', "invalid_payload"),
        (b"bogus.topic:entity:e1", json.dumps(TX).encode(), "unknown_topic"),
        (b"presence:entity:e1", b'{"userId":"u","state":"online","connections":1,"transports":[]}', "unknown_topic"),
        (b"transactions.new:entity:e#1", json.dumps(TX).encode(), "invalid_message"),
        (b"transactions.new:entity:e1", b"\xff\xfe", "invalid_message"),
    ],
)
def test_parse_raw_refuses_invalid_with_codes(channel, payload, code):
    from rtstream.errors import RealtimeError

    with pytest.raises(RealtimeError) as info:
        parse_raw(channel, payload)
    assert info.value.code == code


@pytest.mark.parametrize("key", ["", " k", "k ", "k\n", "a b", "k\u00e9", "x" * 129, "k#1", 17])
def test_bad_idempotency_keys_are_refused_before_any_io(key):
    from rtstream.errors import InvalidMessage

    with pytest.raises(InvalidMessage) as info:
        publish("e1", "transactions.new", {"transactionId": "t", "amount": 1, "merchant": "m"}, idempotency_key=key,
                client=object())  # never reached: validation first
    assert info.value.code == "invalid_message" and "idempotency key" in info.value.message


def test_sdk_publish_with_an_idempotency_key_returns_the_first_id(redis_client):
    from rtstream import keys
    from rtstream.settings import Settings

    tx = {"transactionId": "t1", "amount": 1, "merchant": "m"}
    a = publish("idem-sdk", "transactions.new", tx, idempotency_key="pay-1", client=redis_client, settings=Settings())
    b = publish("idem-sdk", "transactions.new", tx, idempotency_key="pay-1", client=redis_client, settings=Settings())
    c = publish("idem-sdk", "transactions.new", tx, client=redis_client, settings=Settings())
    d = publish("idem-sdk", "transactions.new", tx, client=redis_client, settings=Settings())
    assert a == b and len({a, c, d}) == 3
    assert redis_client.xlen(keys.history("idem-sdk", Settings()).name) == 3


# ---- the core's publish: a publisher injected, no client opened by the core ----------------


def test_core_publish_validates_before_touching_the_publisher():
    from rtstream import publishing

    with pytest.raises(UnknownTopic):
        publishing.publish("e1", "nope", TX, publisher=NoIO())
    with pytest.raises(InvalidMessage):
        publishing.publish("e1", "transactions.new", TX, publisher=NoIO(), idempotency_key="a b")


def test_core_publish_through_an_event_log_publisher(redis_client):
    """The same publication through the in-memory twin and the Redis adapter."""
    from rtstream import publishing
    from rtstream.adapters.redis_eventlog import RedisEventLog
    from rtstream.inmemory import InMemoryEventLog

    settings = Settings()
    for log in (InMemoryEventLog(settings), RedisEventLog(redis_client, settings)):
        publisher = publishing.EventLogPublisher(log)
        first = publishing.publish("e9", "transactions.new", TX, publisher=publisher, source="pos", idempotency_key="k-1")
        again = publishing.publish("e9", "transactions.new", TX, publisher=publisher, source="pos", idempotency_key="k-1")
        other = publishing.publish("e9", "transactions.new", TX, publisher=publisher)
        assert first == again != other
        assert [(e.id, e.source) for e in log.replay("e9", "0-0")] == [(first, "pos"), (other, "sdk")]


def test_eventbridge_detail_reads_back_as_the_same_publication():
    from rtstream.publishing import eventbridge_detail, parse_eventbridge, validate

    pub = validate("e1", "transactions.new", TX, "data_pool", "order-9")
    assert parse_eventbridge("transactions.new", eventbridge_detail(pub), "ignored-event-id") == pub
