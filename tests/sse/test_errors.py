"""Refusals: 401 for missing/bad tokens, 400 for bad query values, 429 over the
per-user limit. Each is a JSON {code, message} and opens no stream."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import jwt
import pytest

from rtstream.auth import issue_dev_token

from .conftest import publish


def _tamper(token: str) -> str:
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["entity_id"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{sig}"


@pytest.mark.parametrize(
    "case",
    ["missing", "garbage", "expired", "tampered", "wrong_key", "alg_none", "not_bearer"],
)
async def test_unauthorized(sse_server, sse_secret, entity, case):
    good = issue_dev_token(sse_secret, user_id="u1", entity_id=entity)
    headers = {}
    if case == "garbage":
        headers["authorization"] = "Bearer not.a.jwt"
    elif case == "expired":
        headers["authorization"] = "Bearer " + issue_dev_token(sse_secret, user_id="u1", entity_id=entity, ttl_seconds=1, now=time.time() - 3600)
    elif case == "tampered":
        headers["authorization"] = "Bearer " + _tamper(good)
    elif case == "wrong_key":
        headers["authorization"] = "Bearer " + issue_dev_token("another-secret-entirely-0123456789abcdef", user_id="u1", entity_id=entity)
    elif case == "alg_none":
        headers["authorization"] = "Bearer " + jwt.encode({"sub": "u1", "entity_id": entity, "exp": int(time.time()) + 60}, None, algorithm="none")
    elif case == "not_bearer":
        headers["authorization"] = "Basic " + good
    async with httpx.AsyncClient() as http:
        r = await http.get(sse_server.url + "/events", headers=headers, timeout=5)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["code"] == "unauthorized" and r.json()["message"]
    assert good not in r.text


@pytest.mark.parametrize(
    "params,headers,code",
    [
        ({"topics": "bogus"}, {}, "unknown_topic"),
        ({"topics": ""}, {}, "invalid_message"),
        ({"topics": "transactions.new,,balance.updated"}, {}, "invalid_message"),
        ({"types": "presence"}, {}, "invalid_message"),
        ({"types": "nope"}, {}, "invalid_message"),
        ({"sources": ""}, {}, "invalid_message"),
        ({"minAmount": "abc"}, {}, "invalid_message"),
        ({"minAmount": "-1"}, {}, "invalid_message"),
        ({"minAmount": "nan"}, {}, "invalid_message"),
        ({"minAmount": "1e400"}, {}, "invalid_message"),
        ({"lastEventId": "yesterday"}, {}, "invalid_message"),
        ({}, {"Last-Event-ID": "12-x"}, "invalid_message"),
        ({"topics": ["transactions.new", "balance.updated"]}, {}, "invalid_message"),
    ],
)
async def test_bad_query_values_are_400(sse_server, entity, token_for, params, headers, code):
    async with httpx.AsyncClient() as http:
        r = await http.get(sse_server.url + "/events", params=params, headers={"authorization": f"Bearer {token_for(entity)}", **headers}, timeout=5)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == code and r.json()["message"]


async def test_bad_query_without_token_is_401_not_400(sse_server):
    async with httpx.AsyncClient() as http:
        r = await http.get(sse_server.url + "/events", params={"topics": "bogus"}, timeout=5)
    assert r.status_code == 401


async def test_over_the_per_user_limit_is_429(sse_server, event_log, entity, token_for, open_stream):
    token = token_for(entity, user_id="limited-user")  # the shared server allows 3 per user
    streams = [await open_stream(sse_server.url, token) for _ in range(3)]
    refused = await open_stream(sse_server.url, token, expect=429)
    body = json.loads(await refused.response.aread())
    assert body["code"] == "too_many_connections"
    # another user of the same entity is not affected
    other = await open_stream(sse_server.url, token_for(entity, user_id="other-user"))
    await other.next_frame()
    # closing one stream frees a slot
    await streams[0].response.aclose()
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        again = await open_stream(sse_server.url, token, expect=None)
        status = again.response.status_code
        if status == 200 or asyncio.get_running_loop().time() > deadline:
            break
        await again.response.aclose()
        await asyncio.sleep(0.1)
    assert status == 200
    [event] = await asyncio.to_thread(publish, event_log, entity, 1)
    assert (await streams[1].next_event()).id == event.id
