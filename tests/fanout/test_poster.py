"""The worker's pooled, pipelined @connections client against a real HTTP server."""

from __future__ import annotations

import asyncio

from rtstream_fanout.poster import BROKEN, ManagementPoster


async def test_statuses_come_back_in_order_for_many_connections(management_stub):
    ids = [f"c{i}=" for i in range(300)]
    for cid in ids[::2]:
        management_stub.open.add(cid)
    management_stub.script["c1="].append(429)
    poster = ManagementPoster(management_stub.endpoint, pool_size=4, max_pipeline=16)
    try:
        statuses = await poster.post_many(ids, b'{"type":"event"}')
        assert statuses[0] == 200 and statuses[1] == 429 and statuses[3] == 410
        assert statuses == [200 if i % 2 == 0 else (429 if i == 1 else 410) for i in range(300)]
        assert all(management_stub.received[cid] == [b'{"type":"event"}'] for cid in ids[::2])
        # ids are percent-encoded in the path, as API Gateway's own clients do
        assert len(management_stub.received) == 150
        ordered = await poster.post_in_order("c0=", [b"1", b"2", b"3"])
        assert ordered == [200, 200, 200] and management_stub.received["c0="][-3:] == [b"1", b"2", b"3"]
        assert await poster.delete("c2=") == 204 and "c2=" not in management_stub.open
    finally:
        await poster.close()


async def test_unreachable_endpoint_is_broken_not_an_exception(management_stub):
    await management_stub.stop()
    poster = ManagementPoster(management_stub.endpoint, timeout_s=1)
    try:
        assert await poster.post_many(["a", "b"], b"x") == [BROKEN, BROKEN]
    finally:
        await poster.close()


async def test_reconnects_when_the_server_closes_keepalive_connections(management_stub):
    management_stub.open.add("a")
    management_stub.close_after_response = True
    poster = ManagementPoster(management_stub.endpoint, pool_size=1)
    try:
        for i in range(3):
            assert await poster.post("a", str(i).encode()) == 200
            await asyncio.sleep(0.01)  # let the close arrive
        assert management_stub.received["a"] == [b"0", b"1", b"2"]
        assert management_stub.connections_made == 3
    finally:
        await poster.close()


async def test_requests_are_sigv4_signed_for_execute_api(management_stub, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    management_stub.open.add("abc=")
    poster = ManagementPoster(management_stub.endpoint, sign=True, region="eu-west-1")
    try:
        assert await poster.post("abc=", b"hello") == 200
    finally:
        await poster.close()
    headers = management_stub.headers[-1]
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/execute-api/aws4_request" in headers["authorization"]
    assert "x-amz-date" in headers
