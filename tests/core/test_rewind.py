"""The rewind rule (rtstream.history.RewindScan) over both EventLog
implementations, in-memory and Redis, read through the port's ``recent``."""

from __future__ import annotations

import uuid

import pytest
import redis

from rtstream.adapters.redis_eventlog import RedisEventLog
from rtstream.errors import InvalidMessage
from rtstream.history import MAX_REWIND, RewindScan, require_rewind
from rtstream.inmemory.eventlog import InMemoryEventLog
from rtstream.models import Filters
from rtstream.settings import Settings


@pytest.fixture(params=["inmemory", "redis"])
def log(request, redis_url):
    settings = Settings().replace(history_maxlen=50)
    if request.param == "inmemory":
        yield InMemoryEventLog(settings)
        return
    client = redis.Redis.from_url(redis_url)
    yield RedisEventLog(client, settings)
    client.close()


def drive(log, entity_id, count, wants, page_size=7):
    scan = RewindScan(count, wants, page_size=page_size, max_scan=log.settings.history_maxlen)
    while scan.more:
        scan.feed(log.recent(entity_id, scan.page_size, before=scan.before))
    return scan


def tx(amount):
    return {"transactionId": uuid.uuid4().hex[:8], "amount": amount, "merchant": "Cafe"}


def test_recent_pages_newest_first_and_exclusive(log):
    entity = f"e-{uuid.uuid4().hex[:8]}"
    ids = [log.append(entity, "transactions.new", tx(i), "t").id for i in range(10)]
    first = log.recent(entity, 4)
    assert [e.id for e in first] == ids[::-1][:4]
    assert [e.id for e in log.recent(entity, 4, before=first[-1].id)] == ids[::-1][4:8]
    assert first[0].data["amount"] == 9 and first[0].topic == "transactions.new"
    assert log.recent(f"none-{uuid.uuid4().hex}", 4) == []


def test_last_n_matching_oldest_first_across_pages(log):
    entity = f"e-{uuid.uuid4().hex[:8]}"
    events = []
    for i in range(30):
        events.append(log.append(entity, "transactions.new", tx(i * 10), "bank"))
        if i % 3 == 0:
            events.append(log.append(entity, "balance.updated", {"accountId": "a", "newBalance": 1.0, "change": 1.0}, "bank"))
    big = Filters(min_amount=200)
    wants = lambda e: e.topic == "transactions.new" and big.matches(e.topic, e.source, e.data)  # noqa: E731
    scan = drive(log, entity, 5, wants)
    expected = [e.id for e in events if wants(e)][-5:]
    assert [e.id for e in scan.events] == expected  # oldest first, spanning several pages
    assert scan.cursor == events[-1].id  # the seam: the newest id when the scan began


def test_fewer_matching_than_asked_and_bounded_by_history(log):
    entity = f"e-{uuid.uuid4().hex[:8]}"
    events = [log.append(entity, "transactions.new", tx(i), "t") for i in range(60)]  # history keeps 50
    scan = drive(log, entity, 100, lambda e: True)
    assert [e.id for e in scan.events] == [e.id for e in events[-50:]]
    assert drive(log, entity, 3, lambda e: False).events == []
    empty = drive(log, f"none-{uuid.uuid4().hex}", 3, lambda e: True)
    assert empty.events == [] and empty.cursor == ""


@pytest.mark.parametrize("raw", [0, 101, -1, 1.5, True, "0", "101", "1e2", " 5", "5 ", "+5", "", "٣", None, [3]])
def test_rewind_out_of_range_is_invalid_message(raw):
    with pytest.raises(InvalidMessage) as exc:
        require_rewind(raw)
    assert exc.value.code == "invalid_message"


def test_rewind_in_range():
    assert require_rewind(1) == 1 and require_rewind(MAX_REWIND) == 100 and require_rewind("25") == 25
