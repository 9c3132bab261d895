"""Limits end to end, with real WebSocket clients: `rtstream dev`'s LocalSystem
(gateway emulator running the template's handlers, DynamoDB in moto, a real
Redis). Each limit is hit AND recovered from; a flooder's socket really closes
(the handler calls the emulator's @connections DELETE); agents are refused
anything but following events, with a security event that never logs a token.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import pytest_asyncio
import websockets

from rtstream import metrics as names
from rtstream.auth import issue_dev_token
from helpers import emf_documents  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "limits-e2e-secret-0123456789abcdef0123456789"
RATE, BURST, VIOLATIONS = 2, 8, 4  # burst above what the non-flooding tests send
LIMITS = {
    "RTSTREAM_MAX_CONNECTIONS_PER_USER": "2",
    "RTSTREAM_MAX_CONNECTIONS_PER_ENTITY": "3",
    "RTSTREAM_MAX_SUBSCRIPTIONS": "2",
    "RTSTREAM_RATE_PER_SECOND": str(RATE),
    "RTSTREAM_RATE_BURST": str(BURST),
    "RTSTREAM_RATE_VIOLATIONS_BEFORE_CLOSE": str(VIOLATIONS),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(tmp_path_factory):
    from rtstream_cli.dev import LocalSystem

    local = LocalSystem(jwt_secret=SECRET, settings_overrides=LIMITS, with_worker=False, with_sse=False, with_eventbridge=False,
                        write_state_file=False, log_dir=tmp_path_factory.mktemp("limits-e2e"))
    await local.start()
    yield local
    await local.stop()



def token(user: str, entity: str, role: str = "user") -> str:
    return issue_dev_token(SECRET, user_id=user, entity_id=entity, role=role)


async def connect(system, user: str, entity: str, role: str = "user"):
    return await websockets.connect(f"{system.ws_url}?token={token(user, entity, role)}", open_timeout=10, ping_interval=None)


async def ask(ws, frame) -> dict:
    await ws.send(json.dumps(frame))
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def quiesce(system, timeout: float = 10.0) -> None:
    """Wait until earlier tests' $disconnect handlers are done (the registry's
    connection count is steady): the emulator runs handlers in one process, where
    Powertools' metric set is shared, so a concurrent flush would mix their
    metrics into this test's output."""
    from rtstream.adapters.lambda_runtime import LambdaRuntime

    registry = LambdaRuntime(env=system.handler_env).registry()
    deadline = time.monotonic() + timeout
    seen: list[int] = []
    while len(seen) < 4 or len(set(seen[-4:])) > 1:
        assert time.monotonic() < deadline, "the connection count never settled"
        seen.append(registry.count_connections(int(time.time()))["websocket"])
        await asyncio.sleep(0.1)


async def refused_status(system, user: str, entity: str) -> int | None:
    try:
        ws = await connect(system, user, entity)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return None


async def eventually_accepted(system, user: str, entity: str, timeout: float = 10.0):
    """$disconnect runs after the close handshake: retry (bounded) until the slot is free."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await connect(system, user, entity)
        except websockets.InvalidStatus as exc:
            if exc.response.status_code != 429 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_flooding_client_is_refused_then_really_disconnected(system):
    ws = await connect(system, "flooder", "ent-flood")
    try:
        replies = [await ask(ws, {"type": "ping"}) for _ in range(BURST)]
        assert all(r["type"] == "pong" for r in replies)
        codes = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            for _ in range(VIOLATIONS + 5):
                codes.append((await ask(ws, {"type": "ping"})).get("code"))
        # every refusal was answered with rate_limited; the last one with the
        # close reason (policy_violation: API Gateway cannot send 1008), then the close
        assert codes and set(codes[:-1]) <= {"rate_limited"} and codes[-1] == "policy_violation" and len(codes) <= VIOLATIONS
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000  # @connections DELETE, as on AWS
        await asyncio.wait_for(ws.wait_closed(), 5)
    finally:
        await ws.close()


async def test_rate_limit_recovers_when_the_bucket_refills(system):
    ws = await connect(system, "steady", "ent-rate")
    try:
        for _ in range(BURST):
            assert (await ask(ws, {"type": "ping"}))["type"] == "pong"
        refused = await ask(ws, {"type": "ping"})
        assert refused["type"] == "error" and refused["code"] == "rate_limited"
        await asyncio.sleep(2 / RATE + 0.1)  # two tokens back
        assert (await ask(ws, {"type": "ping"}))["type"] == "pong"
        assert (await ask(ws, {"type": "ping"}))["type"] == "pong"
    finally:
        await ws.close()


async def test_bucket_is_shared_by_every_invocation_of_a_connection(system):
    """Messages of one connection go to different route handlers (ping, presence,
    subscribe, $default): one bucket in Redis counts them all."""
    ws = await connect(system, "mixed", "ent-mixed")
    try:
        frames = [{"type": "ping"}, {"type": "presence"}, {"type": "subscribe", "topic": "*"}, {"type": "bogus"}]
        started = time.monotonic()
        accepted = 0
        for i in range(3 * BURST):
            if (await ask(ws, frames[i % len(frames)])).get("code") == "rate_limited":
                break
            accepted += 1
        refill = (time.monotonic() - started) * RATE
        assert BURST <= accepted <= BURST + refill + 1, (accepted, refill)
    finally:
        await ws.close()


async def test_subscription_limit_hit_and_recovered(system):
    ws = await connect(system, "subscriber", "ent-subs")
    try:
        assert (await ask(ws, {"type": "subscribe", "topic": "transactions.new"}))["type"] == "subscribed"
        assert (await ask(ws, {"type": "subscribe", "topic": "balance.updated"}))["type"] == "subscribed"
        # re-subscribing to a topic already held changes filters, it does not count twice
        assert (await ask(ws, {"type": "subscribe", "topic": "balance.updated", "filters": {"minAmount": 5}}))["type"] == "subscribed"
        refused = await ask(ws, {"type": "subscribe", "topic": "sync.completed"})
        assert refused["type"] == "error" and refused["code"] == "too_many_subscriptions"
        assert (await ask(ws, {"type": "unsubscribe", "topic": "transactions.new"}))["type"] == "unsubscribed"
        assert (await ask(ws, {"type": "subscribe", "topic": "sync.completed"}))["type"] == "subscribed"
    finally:
        await ws.close()


async def test_per_user_connection_limit_hit_and_recovered(system):
    first, second = await connect(system, "alice", "ent-user"), await connect(system, "alice", "ent-user")
    try:
        assert await refused_status(system, "alice", "ent-user") == 429
        assert await refused_status(system, "bob", "ent-user") is None  # other users are not affected
        await first.close()
        third = await eventually_accepted(system, "alice", "ent-user")
        assert (await ask(third, {"type": "ping"}))["type"] == "pong"
        await third.close()
    finally:
        await first.close()
        await second.close()


async def test_per_entity_connection_limit_hit_and_recovered(system):
    sockets = [await connect(system, f"user-{i}", "ent-entity") for i in range(3)]
    try:
        assert await refused_status(system, "user-9", "ent-entity") == 429
        assert await refused_status(system, "user-9", "ent-elsewhere") is None
        await sockets.pop().close()
        sockets.append(await eventually_accepted(system, "user-9", "ent-entity"))
    finally:
        for ws in sockets:
            await ws.close()


@pytest.mark.parametrize("role", ["agent", "user", "admin"])
async def test_publish_broadcast_disconnect_are_forbidden(system, role, capfd, caplog):
    victim = await connect(system, "victim", f"ent-{role}")
    ws = await connect(system, f"{role}-1", f"ent-{role}", role)
    await quiesce(system)
    capfd.readouterr()
    caplog.clear()
    try:
        attempts = [
            {"type": "publish", "topic": "transactions.new", "data": {"transactionId": "t1", "amount": 1, "merchant": "x"}},
            {"type": "broadcast", "data": {"message": "hi all"}},
            {"type": "disconnect", "connectionId": "anyone"},
        ]
        for frame in attempts:
            reply = await ask(ws, frame)
            assert reply["type"] == "error" and reply["code"] == "forbidden", reply
        # following events stays allowed; the victim was not disconnected
        assert (await ask(ws, {"type": "subscribe", "topic": "agent.action.completed"}))["type"] == "subscribed"
        assert (await ask(victim, {"type": "ping"}))["type"] == "pong"
        out = capfd.readouterr()
        text = out.out + out.err
        security_metrics = [doc for doc in emf_documents(text) if names.SECURITY_EVENTS in doc]
        security_logs = [r for r in caplog.records if r.name == "rtstream.security" or r.getMessage() == "security event"]
        if role == "agent":
            assert len(security_metrics) == len(attempts)
            assert len(security_logs) == 2 * len(attempts)  # the core's log line and the handler's structured one
            assert all(getattr(r, "userId", None) == "agent-1" or "agent-1" in r.getMessage() for r in security_logs)
        else:
            assert security_metrics == [] and security_logs == []
        assert token(f"{role}-1", f"ent-{role}", role) not in text + caplog.text  # never log tokens
    finally:
        await ws.close()
        await victim.close()


async def test_agent_may_only_follow_events_and_excess_subscriptions_are_security_events(system, capfd, caplog):
    ws = await connect(system, "bot", "ent-bot", "agent")
    await quiesce(system)
    capfd.readouterr()
    caplog.clear()
    try:
        assert (await ask(ws, {"type": "presence"}))["code"] == "forbidden"
        assert (await ask(ws, {"type": "subscribe", "topic": "transactions.new"}))["type"] == "subscribed"
        assert (await ask(ws, {"type": "subscribe", "topic": "balance.updated"}))["type"] == "subscribed"
        assert (await ask(ws, {"type": "subscribe", "topic": "*"}))["code"] == "too_many_subscriptions"
        assert (await ask(ws, {"type": "ping"}))["type"] == "pong"
        text = capfd.readouterr().out
        security_metrics = [doc for doc in emf_documents(text) if names.SECURITY_EVENTS in doc]
        assert len(security_metrics) == 2  # the presence query and the excess subscription
        events = [getattr(r, "securityEvent", None) for r in caplog.records if r.getMessage() == "security event"]
        assert events == ["agent_forbidden_operation", "agent_excessive_subscriptions"]
    finally:
        await ws.close()
