"""The worker's pooled, pipelined @connections client against a real HTTP server."""

from __future__ import annotations

import asyncio

import pytest

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


def botocore_verifier(secrets: dict[str, str], region: str, service: str = "execute-api"):
    """A server-side SigV4 check made of botocore's own signing code: rebuild the
    request from what arrived (the headers its Authorization says are signed),
    compute the signature as botocore does, compare."""
    import hmac as _hmac
    import re

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    pattern = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                         r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")

    def verify(method: str, path: str, headers: dict[str, str], body: bytes) -> bool:
        match = pattern.match(headers.get("authorization", ""))
        if match is None:
            return False
        access_key, date, req_region, req_service, signed, signature = match.groups()
        stamp = headers.get("x-amz-date", "")
        if access_key not in secrets or (req_region, req_service) != (region, service) or stamp[:8] != date:
            return False
        request = AWSRequest(method=method, url=f"http://{headers['host']}{path}", data=body)
        for name in signed.split(";"):
            request.headers[name] = headers[name]
        request.context["timestamp"] = stamp
        auth = SigV4Auth(Credentials(access_key, secrets[access_key], headers.get("x-amz-security-token")), service, region)
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        return _hmac.compare_digest(expected, signature)

    return verify


class _Creds:
    """Injected credentials (what botocore's credential chain hands the worker)."""

    def __init__(self, access_key, secret_key, token=None):
        from botocore.credentials import Credentials

        self.inner = Credentials(access_key, secret_key, token)

    def get_frozen_credentials(self):
        return self.inner.get_frozen_credentials()


@pytest.mark.parametrize("pipelining", [False, True])
async def test_signed_posts_are_accepted_by_a_sigv4_verifying_server(management_stub, pipelining):
    management_stub.verify = botocore_verifier({"AKIDWORKER": "worker-secret/+="}, "eu-west-1")
    ids = [f"sig{i}{'=' if i % 3 else '+/'}" for i in range(200)]
    management_stub.open.update(ids)
    poster = ManagementPoster(management_stub.endpoint, sign=True, region="eu-west-1", pool_size=2,
                              credentials=_Creds("AKIDWORKER", "worker-secret/+=", "session-token-xyz"),
                              pipelining=pipelining)
    try:
        assert await poster.post_many(ids, b'{"type":"event","n":1}') == [200] * 200
        assert await poster.post_in_order(ids[0], [b"a", b"b"]) == [200, 200]
        assert await poster.delete(ids[1]) == 204
    finally:
        await poster.close()
    assert management_stub.rejected == 0
    assert all(management_stub.received[cid][0] == b'{"type":"event","n":1}' for cid in ids)
    assert management_stub.headers[-1]["x-amz-security-token"] == "session-token-xyz"
    if pipelining:
        assert management_stub.max_requests_per_read > 1
    else:
        assert management_stub.max_requests_per_read == 1  # one request in flight per connection


async def test_a_wrong_secret_is_refused_by_the_verifier(management_stub):
    management_stub.verify = botocore_verifier({"AKIDWORKER": "worker-secret"}, "eu-west-1")
    management_stub.open.add("a=")
    poster = ManagementPoster(management_stub.endpoint, sign=True, region="eu-west-1",
                              credentials=_Creds("AKIDWORKER", "not-the-secret"))
    try:
        assert await poster.post("a=", b"x") == 403
    finally:
        await poster.close()
    assert management_stub.rejected == 1 and management_stub.received["a="] == []


async def test_pipelining_defaults_off_when_signing_and_on_otherwise(management_stub):
    signed = ManagementPoster(management_stub.endpoint, sign=True, region="us-east-1", credentials=_Creds("a", "b"))
    unsigned = ManagementPoster(management_stub.endpoint)
    assert (signed.pipelining, unsigned.pipelining) == (False, True)
    assert ManagementPoster(management_stub.endpoint, sign=True, region="us-east-1", credentials=_Creds("a", "b"),
                            pipelining=True).pipelining


def test_pipelining_setting_from_the_environment():
    from rtstream.settings import Settings

    assert Settings.from_env({}).fanout_pipelining_flag is None
    assert Settings.from_env({"RTSTREAM_FANOUT_PIPELINING": "on"}).fanout_pipelining_flag is True
    assert Settings.from_env({"RTSTREAM_FANOUT_PIPELINING": "OFF"}).fanout_pipelining_flag is False
    with pytest.raises(ValueError, match="RTSTREAM_FANOUT_PIPELINING"):
        Settings.from_env({"RTSTREAM_FANOUT_PIPELINING": "sometimes"})
