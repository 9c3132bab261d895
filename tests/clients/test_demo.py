"""`rtstream demo` publishes a realistic, consistent, bounded stream into real Redis."""

import random

import pytest

from rtstream import keys
from rtstream.models import parse_event_id
from rtstream.adapters.publishing import publish
from rtstream.settings import Settings
from rtstream.topics import EVENT_TOPICS, validate_payload
from rtstream_cli.demo import DemoFeed, run_demo
from rtstream_cli.main import main


def test_feed_is_valid_and_balances_follow_transactions():
    feed = iter(DemoFeed(random.Random(7)))
    events = [next(feed) for _ in range(400)]
    assert {topic for topic, _, _ in events} == set(EVENT_TOPICS)
    balances: dict[str, float] = {}
    last_tx = None
    for topic, data, source in events:
        validate_payload(topic, data)
        if topic == "transactions.new":
            last_tx = data
        if topic == "balance.updated":
            # each balance update is the previous transaction applied to its account
            assert last_tx is not None and data["accountId"] == last_tx["accountId"] and data["change"] == last_tx["amount"]
            if data["accountId"] in balances:
                assert data["newBalance"] == pytest.approx(balances[data["accountId"]] + data["change"], abs=0.005)
            balances[data["accountId"]] = data["newBalance"]
            last_tx = None


def test_run_demo_publishes_exactly_count_events_into_history(redis_client, redis_url):
    settings = Settings().replace(redis_url=redis_url)
    ids = []

    def publish_one(entity, topic, data, source):
        return publish(entity, topic, data, source=source, client=redis_client, settings=settings)

    n = run_demo("demo-e1", publish_one, rate=1000, count=25, rng=random.Random(1), on_published=lambda i, t, d: ids.append(i))
    assert n == 25 and len(ids) == 25
    assert [parse_event_id(i) for i in ids] == sorted(parse_event_id(i) for i in ids)
    assert redis_client.xlen(keys.history("demo-e1", settings).name) == 25


def test_run_demo_is_bounded_by_duration():
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    n = run_demo("e", lambda *a: "1-0", rate=2, count=0, duration=5, clock=lambda: now[0], sleep=sleep)
    assert n == 10 and now[0] == pytest.approx(5.0)  # paced at 2/s, stopped at 5 s


def test_run_demo_refuses_unbounded_or_bad_rate():
    with pytest.raises(ValueError):
        run_demo("e", lambda *a: "1-0", count=0, duration=None)
    with pytest.raises(ValueError):
        run_demo("e", lambda *a: "1-0", rate=0)


def test_cli_demo_publishes_and_reports_errors(redis_client, redis_url, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RTSTREAM_STATE_DIR", str(tmp_path))  # no running dev system
    assert main(["demo", "--redis-url", redis_url, "--entity", "cli-e", "--count", "6", "--rate", "500", "--seed", "3"]) == 0
    out = capsys.readouterr()
    assert len(out.out.strip().splitlines()) == 6
    assert redis_client.xlen(keys.history("cli-e", Settings()).name) == 6
    assert main(["demo", "--redis-url", redis_url, "--entity", "bad entity!", "--count", "1"]) == 2
    assert "entity id" in capsys.readouterr().err
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["demo", "--count", "1"]) == 2


def test_background_demo_feeds_until_stopped(redis_client, redis_url):
    import time

    from rtstream_cli.demo import BackgroundDemo

    demo = BackgroundDemo(redis_url, Settings().replace(redis_url=redis_url), "bg-e", rate=200).start()
    deadline = time.monotonic() + 5
    while demo.published < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    demo.stop()
    stopped_at = demo.published
    assert stopped_at >= 10
    time.sleep(0.1)
    assert demo.published == stopped_at  # nothing after stop
    assert redis_client.xlen(keys.history("bg-e", Settings()).name) == stopped_at
