"""The agent boundary in the core (issue 11): presence is refused to agents on
every path through the service, as a security event; refusals that keep coming
close the connection with the reason first (``policy_violation``)."""

from __future__ import annotations

import json
import logging

from rtstream.inmemory.eventlog import InMemoryEventLog
from rtstream.inmemory.limits import InMemoryPresence, InMemoryRateLimiter, ManualClock
from rtstream.inmemory.registry import InMemoryRegistry
from rtstream.models import Principal
from rtstream.service import RealtimeService, presence_refusal
from rtstream.settings import Settings

AGENT = Principal("bot-1", "entity-a", "agent")
ALICE = Principal("alice", "entity-a", "user")


def make_service(**overrides):
    clock = ManualClock()
    settings = Settings().replace(rate_per_second=1000, rate_burst=1000, **overrides)
    return RealtimeService(registry=InMemoryRegistry(clock), settings=settings, event_log=InMemoryEventLog(settings, clock=clock),
                           rate_limiter=InMemoryRateLimiter(clock), presence=InMemoryPresence(660, clock), clock=clock)


def test_presence_refusal_is_for_agents_only_and_logged_without_the_frame(caplog):
    assert presence_refusal(ALICE) is None
    with caplog.at_level(logging.WARNING, logger="rtstream.security"):
        refusal = presence_refusal(AGENT, "GET /presence")
    assert refusal is not None and refusal.security_event == "agent_forbidden_operation"
    assert refusal.frames[0]["code"] == "forbidden"
    assert "agent bot-1 of entity entity-a attempted a forbidden operation: GET /presence" in caplog.text


def test_agents_cannot_read_presence_by_frame_or_by_subscribing():
    svc = make_service()
    svc.connect(AGENT, "c1")
    for frame in ({"type": "presence"}, {"type": "subscribe", "topic": "presence"}):
        reply = svc.handle("c1", AGENT, json.dumps(frame))
        assert reply.frames[0]["code"] == "forbidden" and reply.security_event == "agent_forbidden_operation" and not reply.close
    assert svc.registry.connection_subscriptions("c1") == []
    assert svc.handle("c1", AGENT, json.dumps({"type": "subscribe", "topic": "*"})).frames[0]["type"] == "subscribed"
    # users may
    svc.connect(ALICE, "c2")
    assert svc.handle("c2", ALICE, json.dumps({"type": "subscribe", "topic": "presence"})).frames[0]["type"] == "subscribed"


def test_an_agent_that_keeps_trying_is_told_why_then_closed():
    svc = make_service(rate_violations_before_close=3)
    svc.connect(AGENT, "c1")
    replies = [svc.handle("c1", AGENT, json.dumps({"type": "presence"})) for _ in range(3)]
    assert [(r.frames[0]["code"], r.close) for r in replies] == [("forbidden", False), ("forbidden", False), ("policy_violation", True)]
    assert replies[-1].security_event == "agent_forbidden_operation"


def test_malformed_frames_do_not_count_toward_closing():
    """Only refusals that mean abuse count (rate limit, forbidden operations): a
    client with a bug that sends bad ids gets invalid_message, never closed."""
    svc = make_service(rate_violations_before_close=2)
    svc.connect(ALICE, "c1")
    replies = [svc.handle("c1", ALICE, json.dumps({"type": "subscribe", "topic": "*", "since": "1-0\n"})) for _ in range(5)]
    assert all(r.frames[0]["code"] == "invalid_message" and not r.close for r in replies)
