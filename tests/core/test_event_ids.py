"""Strict event ids (issue 11) and the "0-0" cursor rule, without a network:
the one parser, the WebSocket frame parser, the SSE query parser, and the replay
rule on the in-memory twin and a real Redis (same scripts the worker runs)."""

from __future__ import annotations

import json
import time

import pytest
from starlette.datastructures import Headers, QueryParams

from bad_ids import BAD_EVENT_IDS, GOOD_EDGE_IDS, MAX_PART
from rtstream import protocol
from rtstream.adapters.redis_eventlog import RedisEventLog
from rtstream.errors import InvalidMessage, ReplayGap
from rtstream.history import require_cursor
from rtstream.inmemory.eventlog import InMemoryEventLog
from rtstream.inmemory.limits import ManualClock
from rtstream.models import is_event_id, parse_event_id
from rtstream.settings import Settings
from rtstream_sse.query import parse_events_request

TX = {"transactionId": "t1", "amount": 5, "merchant": "Cafe"}


@pytest.mark.parametrize("bad", BAD_EVENT_IDS)
def test_malformed_ids_are_refused_by_every_parser(bad):
    with pytest.raises(ValueError):
        parse_event_id(bad)
    assert not is_event_id(bad)
    with pytest.raises(InvalidMessage) as frame_error:
        protocol.parse_client_frame(json.dumps({"type": "subscribe", "topic": "*", "since": bad}), max_bytes=32768)
    assert frame_error.value.code == "invalid_message"
    with pytest.raises(InvalidMessage):
        require_cursor(bad)
    with pytest.raises(InvalidMessage):
        parse_events_request(QueryParams({"lastEventId": bad}), Headers({}))


@pytest.mark.parametrize("good", GOOD_EDGE_IDS)
def test_edge_ids_in_range_are_accepted(good):
    ms, seq = parse_event_id(good)
    assert 0 <= ms <= MAX_PART and 0 <= seq <= MAX_PART
    frame = protocol.parse_client_frame(json.dumps({"type": "subscribe", "topic": "*", "since": good}), max_bytes=32768)
    assert frame.since == good
    assert parse_events_request(QueryParams({"lastEventId": good}), Headers({})).last_event_id == good
    assert parse_events_request(QueryParams({}), Headers({"last-event-id": good})).last_event_id == good


def test_sse_header_wins_over_query_and_an_empty_header_is_no_id():
    assert parse_events_request(QueryParams({"lastEventId": "1-0"}), Headers({"last-event-id": "2-0"})).last_event_id == "2-0"
    assert parse_events_request(QueryParams({}), Headers({"last-event-id": ""})).last_event_id is None
    with pytest.raises(InvalidMessage):
        parse_events_request(QueryParams({"lastEventId": ""}), Headers({}))
    with pytest.raises(InvalidMessage):
        parse_events_request(QueryParams({}), Headers({"last-event-id": f"{MAX_PART + 1}-0"}))


# ---- "0-0": the cursor of an entity without history -------------------------------------


@pytest.fixture(params=["inmemory", "redis"])
def make_log(request):
    """Both EventLog implementations, fresh per call, same rule."""
    if request.param == "inmemory":
        return lambda settings: InMemoryEventLog(settings, clock=ManualClock())
    client = request.getfixturevalue("redis_client")
    return lambda settings: RedisEventLog(client, settings)


def test_zero_cursor_on_an_entity_without_history_replays_nothing(make_log):
    log = make_log(Settings())
    assert log.replay("zero-a", "0-0") == []
    assert log.replay("zero-a", "0-0", "") == []  # the worker's form: no history at request time


def test_zero_cursor_replays_everything_published_since(make_log):
    log = make_log(Settings())
    ids = [log.append("zero-b", "transactions.new", {**TX, "amount": i}, "sdk").id for i in range(3)]
    assert [e.id for e in log.replay("zero-b", "0-0")] == ids
    assert [e.id for e in log.replay("zero-b", "0-0", ids[1])] == ids[:2]


def test_zero_cursor_after_trimming_is_a_gap(make_log):
    log = make_log(Settings().replace(history_maxlen=3))
    for i in range(30):
        log.append("zero-c", "transactions.new", {**TX, "amount": i}, "sdk")
    with pytest.raises(ReplayGap):
        log.replay("zero-c", "0-0")


def test_a_real_cursor_into_expired_history_is_still_a_gap(make_log):
    log = make_log(Settings())
    old = log.append("zero-d", "transactions.new", TX, "sdk").id
    # what the TTL does (both implementations): the stream and its horizon go
    if isinstance(log, RedisEventLog):
        from rtstream import keys

        log.client.delete(keys.history("zero-d", log.settings).name, keys.history_horizon("zero-d", log.settings).name)
        time.sleep(0.002)  # a real TTL expiry is seconds later, never in the same ms
    else:
        log.clock.advance(log.settings.history_ttl_seconds + 1)
    log.append("zero-d", "transactions.new", TX, "sdk")
    with pytest.raises(ReplayGap):
        log.replay("zero-d", old)
    assert len(log.replay("zero-d", "0-0")) == 1


def test_the_largest_id_replays_nothing_instead_of_failing(make_log):
    log = make_log(Settings())
    log.append("zero-e", "transactions.new", TX, "sdk")
    assert log.replay("zero-e", f"{MAX_PART}-{MAX_PART}") == []
    assert log.replay("zero-e", f"{MAX_PART}-0") == []
