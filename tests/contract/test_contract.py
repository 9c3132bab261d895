"""The machine-readable contract: docs/asyncapi.yaml (AsyncAPI 3) and
docs/schemas/*.json are what the core's schemas generate, the AsyncAPI document
is valid against the official AsyncAPI 3.0.0 schema, the payload schemas agree
with the core's own validator, and real frames captured from the running system
(WebSocket through the gateway emulator, and SSE) validate against them."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest
import websockets
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from rtstream.errors import InvalidPayload
from rtstream.topics import EVENT_TOPICS, PRESENCE, validate_payload

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schemas"
ASYNCAPI_SCHEMA = ROOT / ".venv" / "share" / "asyncapi-specs-6.11.1" / "3.0.0.json"

sys.path.insert(0, str(ROOT / "tests" / "clients"))
from system_thread import SystemThread, fresh_entity  # noqa: E402


def _generator():
    spec = importlib.util.spec_from_file_location("gen_contract", ROOT / "scripts" / "gen_contract.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _registry() -> Registry:
    resources = [(p.resolve().as_uri(), Resource.from_contents(json.loads(p.read_text()), default_specification=DRAFT202012))
                 for p in SCHEMAS.glob("*.json")]
    return Registry().with_resources(resources)


REGISTRY = None


def validator(name: str) -> jsonschema.Draft202012Validator:
    global REGISTRY
    REGISTRY = REGISTRY or _registry()
    path = SCHEMAS / f"{name}.json"
    schema = {**json.loads(path.read_text()), "$id": path.resolve().as_uri()}  # base for the relative $refs
    return jsonschema.Draft202012Validator(schema, registry=REGISTRY, format_checker=jsonschema.FormatChecker())


def assert_valid(name: str, instance) -> None:
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator(name).iter_errors(instance)]
    assert not problems, (name, instance, problems)


# ---- the documents ------------------------------------------------------------------------


def test_documents_are_what_the_core_generates():
    generated = _generator().render()
    on_disk = {p.relative_to(ROOT).as_posix(): p.read_text() for p in [*SCHEMAS.glob("*.json"), ROOT / "docs" / "asyncapi.yaml"]}
    assert sorted(on_disk) == sorted(generated), "run: .venv/bin/python scripts/gen_contract.py"
    stale = [path for path, text in generated.items() if on_disk[path] != text]
    assert not stale, f"out of date (run .venv/bin/python scripts/gen_contract.py): {stale}"


def test_asyncapi_document_is_valid_asyncapi_3_and_every_reference_resolves():
    assert ASYNCAPI_SCHEMA.is_file(), "the AsyncAPI 3.0.0 JSON Schema is provisioned by scripts/test (.ci/setup.d/asyncapi-specs.sh)"
    meta = jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert doc["asyncapi"] == "3.0.0"
    problems = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in meta.iter_errors(doc)]
    assert not problems, problems
    broken = {**doc, "channels": {"x": {"address": 5}}}
    assert not meta.is_valid(broken)  # the check can fail

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for ref in walk(doc):
        if ref.startswith("#/"):
            target = doc
            for part in ref[2:].split("/"):
                target = target[part]
        else:
            assert (ROOT / "docs" / ref).is_file(), ref
    # one SSE message per topic, named as the SSE event is
    sse = doc["components"]["messages"]
    assert {m["name"] for m in sse.values() if m["title"].startswith("SSE ")} == {*EVENT_TOPICS, PRESENCE, "cursor", "error"}


SAMPLES = {
    "transactions.new": ({"transactionId": "t1", "amount": -42.5, "merchant": "Cafe", "category": "Food", "extra": 1},
                         [{"transactionId": "t1", "amount": "42", "merchant": "Cafe"}, {"amount": 1, "merchant": "x"},
                          {"transactionId": "t1", "amount": True, "merchant": "Cafe"}]),
    "agent.action.completed": ({"agentId": "a", "action": "categorize", "result": {"ok": True}},
                               [{"agentId": "a", "action": "x"}, {"agentId": 3, "action": "x", "result": None}]),
    "balance.updated": ({"accountId": "a1", "newBalance": 957.5, "change": -42.5},
                        [{"accountId": "a1", "newBalance": 1}, {"accountId": "a1", "newBalance": "1", "change": 0}]),
    "sync.completed": ({"source": "bank", "recordsUpdated": 3}, [{"source": "bank", "recordsUpdated": 2.5}, {"source": "bank"}]),
}


@pytest.mark.parametrize("topic", list(SAMPLES))
def test_payload_schemas_agree_with_the_cores_validator(topic):
    good, bad = SAMPLES[topic]
    validate_payload(topic, good)
    assert_valid(topic, good)
    for payload in bad:
        with pytest.raises(InvalidPayload):
            validate_payload(topic, payload)
        assert not validator(topic).is_valid(payload), payload


# ---- real frames from the running system ----------------------------------------------------


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = SystemThread(log_dir=tmp_path_factory.mktemp("contract-logs"), with_eventbridge=False).start()
    try:
        yield running
    finally:
        running.stop()


PAYLOADS = {
    "transactions.new": {"transactionId": "t1", "amount": 42.5, "merchant": "Cafe"},
    "agent.action.completed": {"agentId": "ag1", "action": "categorize", "result": {"category": "Food"}},
    "balance.updated": {"accountId": "a1", "newBalance": 957.5, "change": -42.5},
    "sync.completed": {"source": "bank", "recordsUpdated": 3},
}


async def _recv(ws, n: int, timeout: float = 10.0) -> list[dict]:
    return [json.loads(await asyncio.wait_for(ws.recv(), timeout)) for _ in range(n)]


async def test_websocket_frames_from_the_running_system_match_the_schemas(system):
    entity = fresh_entity("contract-ws")
    sent = [
        {"type": "subscribe", "topic": "*", "filters": {"types": list(EVENT_TOPICS), "minAmount": 0}},
        {"type": "subscribe", "topic": "presence"},
        {"type": "ping"},
        {"type": "presence"},
    ]
    for frame in sent:
        assert_valid(f"client-{frame['type']}", frame)
    captured: list[dict] = []
    async with websockets.connect(f"{system.ws_url}?token={system.token(entity, 'watcher')}", open_timeout=10, ping_interval=None) as ws:
        for frame in sent:
            await ws.send(json.dumps(frame))
        captured += await _recv(ws, len(sent))
        async with websockets.connect(f"{system.ws_url}?token={system.token(entity, 'joiner')}", open_timeout=10, ping_interval=None):
            presence_event = await _recv(ws, 1)
        captured += presence_event
        for topic, data in PAYLOADS.items():
            await asyncio.to_thread(system.publish, entity, topic, data)
        captured += await _recv(ws, len(PAYLOADS) + 1)  # the joiner's leave comes too, in some order
        for bad in ('{"type":"subscribe","topic":"nope"}', '{"type":"subscribe","topic":"*","since":"x"}', "not json"):
            await ws.send(bad)
        await ws.send(json.dumps({"type": "unsubscribe", "topic": "*"}))
        captured += await _recv(ws, 4)
    kinds = {(f["type"], f.get("topic")) for f in captured}
    assert {("subscribed", "*"), ("pong", None), ("presence", None), ("error", None), ("unsubscribed", "*")} <= kinds, kinds
    assert {f["topic"] for f in captured if f["type"] == "event"} == {*EVENT_TOPICS, PRESENCE}
    for frame in captured:
        assert_valid(f"server-{frame['type']}", frame)


async def test_websocket_rewind_frames_from_the_running_system_match_the_schemas(system):
    entity = fresh_entity("contract-rewind")
    ids = [await asyncio.to_thread(system.publish, entity, topic, data) for topic, data in PAYLOADS.items()]
    sent = {"type": "subscribe", "topic": "*", "rewind": 2}
    assert_valid("client-subscribe", sent)
    for bad in ({**sent, "rewind": 0}, {**sent, "rewind": 101}, {**sent, "rewind": "2"}, {**sent, "since": ids[0]}):
        assert not validator("client-subscribe").is_valid(bad), bad
    async with websockets.connect(f"{system.ws_url}?token={system.token(entity, 'rewinder')}", open_timeout=10, ping_interval=None) as ws:
        await ws.send(json.dumps(sent))
        captured = await _recv(ws, 3)
    assert captured[0] == {"type": "subscribed", "topic": "*", "cursor": ids[-1]}
    assert [f["id"] for f in captured[1:]] == ids[-2:]
    for frame in captured:
        assert_valid(f"server-{frame['type']}", frame)


def _sse_frames(text: str) -> list[dict]:
    frames = []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
        if "data" in fields:
            frames.append(fields)
    return frames


async def _read_sse(url: str, params: dict, headers: dict, until, timeout: float = 10.0) -> list[dict]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=timeout)) as http:
        async with http.stream("GET", url, params=params, headers=headers) as response:
            assert response.status_code == 200
            buffer = ""
            async with asyncio.timeout(timeout):
                async for chunk in response.aiter_text():
                    buffer += chunk
                    frames = _sse_frames(buffer.rsplit("\n\n", 1)[0])
                    if until(frames):
                        return frames
    raise AssertionError("stream ended")


async def test_sse_frames_from_the_running_system_match_the_schemas(system):
    entity = fresh_entity("contract-sse")
    first = await asyncio.to_thread(system.publish, entity, "balance.updated", PAYLOADS["balance.updated"])
    auth = {"authorization": f"Bearer {system.token(entity, 'reader')}"}
    params = {"topics": "*,presence", "rewind": "5"}

    async def publish_later():
        await asyncio.sleep(0.5)
        for topic, data in PAYLOADS.items():
            await asyncio.to_thread(system.publish, entity, topic, data)
        async with websockets.connect(f"{system.ws_url}?token={system.token(entity, 'joiner')}", open_timeout=10, ping_interval=None):
            await asyncio.sleep(0.3)

    later = asyncio.ensure_future(publish_later())
    frames = await _read_sse(system.sse_url, params, auth,
                             lambda fs: {f.get("event") for f in fs} >= {*EVENT_TOPICS, PRESENCE, "cursor"} and len(fs) >= 7)
    await later
    # a cursor into lost history: the error frame
    frames += await _read_sse(system.sse_url, {}, {**auth, "last-event-id": "1-0"}, lambda fs: any(f.get("event") == "error" for f in fs))
    assert frames[0]["id"] == first and frames[0]["event"] == "balance.updated"  # the rewound one
    for frame in frames:
        name = frame["event"]
        data = json.loads(frame["data"])
        schema = {"cursor": "sse-cursor", "error": "server-error"}.get(name, name)  # events: the topic's payload
        assert_valid(schema, data)
        assert ("id" in frame) == (name not in (PRESENCE, "error")), frame
