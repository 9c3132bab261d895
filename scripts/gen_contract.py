"""Write the machine-readable contract from the core's own schemas:

- ``docs/schemas/<name>.json``: every topic's payload and every frame
  (:mod:`rtstream.jsonschemas`);
- ``docs/asyncapi.yaml``: AsyncAPI 3 for the WebSocket and SSE protocols,
  referencing those files.

Run ``.venv/bin/python scripts/gen_contract.py`` after changing a topic, a frame
or an error code; ``tests/contract`` fails while the files are out of date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "core")]

from rtstream import protocol, topics  # noqa: E402
from rtstream.jsonschemas import all_schemas, schema_name  # noqa: E402

DOCS = ROOT / "docs"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"./schemas/{name}.json"}


def _message(name: str, title: str, summary: str, payload: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "title": title, "summary": summary, "contentType": "application/json", "payload": _ref(payload), **extra}


def _camel(topic: str) -> str:
    head, *rest = topic.replace("*", "all").split(".")
    return head + "".join(part.capitalize() for part in rest)


def asyncapi() -> dict[str, Any]:
    ws_client = {
        "subscribe": ("Subscribe to a topic of the token's entity, with optional filters and either `since` (replay after that id) "
                      "or `rewind` (the last N matching events first, 1-100).",),
        "unsubscribe": ("Stop a subscription.",),
        "ping": ("Keep-alive; answered with `pong`.",),
        "presence": ("Who of the entity is online; answered with a `presence` reply.",),
    }
    messages: dict[str, Any] = {}
    for frame_type in protocol.CLIENT_FRAME_TYPES:
        messages[f"client{frame_type.capitalize()}"] = _message(frame_type, f"client {frame_type}", ws_client[frame_type][0], f"client-{frame_type}")
    server = {
        "serverSubscribed": ("subscribed", "The subscription is active; replayed events (after `since`) or rewound ones (the last N, "
                             "oldest first; `cursor` = the newest id the rewind considered) follow, then live ones.", "server-subscribed"),
        "serverUnsubscribed": ("unsubscribed", "The subscription is gone.", "server-unsubscribed"),
        "serverPong": ("pong", "Answer to ping.", "server-pong"),
        "serverPresence": ("presence", "The entity's online users.", "server-presence"),
        "serverEvent": ("event", "One event of a subscribed topic: the envelope, with the topic's payload in `data`.", "server-event"),
        "serverError": ("error", "A refused frame or a lost replay (`replay_gap`); the connection stays usable.", "server-error"),
    }
    for key, (name, summary, payload) in server.items():
        messages[key] = _message(name, f"server {name}", summary, payload)
    sse_messages: dict[str, Any] = {}
    for topic in (*topics.EVENT_TOPICS, topics.PRESENCE):
        key = f"sse{_camel(topic)[0].upper()}{_camel(topic)[1:]}"
        sse_messages[key] = _message(
            topic, f"SSE {topic}",
            f"`event: {topic}`, `data:` the payload only" + ("" if topic == topics.PRESENCE else ", `id:` the event id (the browser's Last-Event-ID)")
            + ("; no `id:` (presence is not kept in history)" if topic == topics.PRESENCE else ""),
            schema_name(topic),
        )
    sse_messages["sseCursor"] = _message("cursor", "SSE cursor", "`id:` and `event: cursor`: where a stream without Last-Event-ID starts "
                                                                   "(after any rewound events).", "sse-cursor")
    sse_messages["sseError"] = _message("error", "SSE error", "`event: error` (no `id:`), e.g. `replay_gap`: reload state; the stream goes on.", "server-error")
    messages.update(sse_messages)

    def refs(keys: list[str]) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{channel_of[k]}/messages/{k}"} for k in keys]

    ws_keys = [k for k in messages if k.startswith(("client", "server"))]
    sse_keys = list(sse_messages)
    channel_of = {**{k: "websocket" for k in ws_keys}, **{k: "events" for k in sse_keys}}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "realtime-streaming",
            "version": protocol.PROTOCOL_VERSION,
            "description": "Live financial events pushed to dashboards over API Gateway WebSocket and Server-Sent Events. "
                           "Generated from the core's schemas by scripts/gen_contract.py; the prose contract is docs/CONTRACT.md. "
                           "Operations are described from the server's side: it receives client frames and sends the rest.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "websocket": {"host": "{apiId}.execute-api.{region}.amazonaws.com", "pathname": "/{stage}", "protocol": "wss",
                          "description": "API Gateway WebSocket API; token as ?token=JWT (browsers) or Authorization: Bearer JWT.",
                          "variables": {"apiId": {"default": "example"}, "region": {"default": "us-east-1"}, "stage": {"default": "dev"}},
                          "security": [{"$ref": "#/components/securitySchemes/queryToken"}, {"$ref": "#/components/securitySchemes/bearer"}]},
            "sse": {"host": "{host}", "protocol": "https", "description": "The SSE service (ECS behind an ALB).",
                    "variables": {"host": {"default": "sse.example.com"}},
                    "security": [{"$ref": "#/components/securitySchemes/accessToken"}, {"$ref": "#/components/securitySchemes/bearer"}]},
            "localWebsocket": {"host": "127.0.0.1:3001", "pathname": "/dev", "protocol": "ws", "description": "`rtstream dev`",
                               "security": [{"$ref": "#/components/securitySchemes/queryToken"}]},
            "localSse": {"host": "127.0.0.1:3002", "protocol": "http", "description": "`rtstream dev`",
                         "security": [{"$ref": "#/components/securitySchemes/accessToken"}]},
        },
        "channels": {
            "websocket": {
                "address": "/",
                "title": "WebSocket",
                "description": "Route selection on `type`. Frames over 32 KB close with 1009.",
                "servers": [{"$ref": "#/servers/websocket"}, {"$ref": "#/servers/localWebsocket"}],
                "messages": {k: {"$ref": f"#/components/messages/{k}"} for k in ws_keys},
            },
            "events": {
                "address": "/events",
                "title": "SSE GET /events",
                "description": "text/event-stream. Query: `topics` (comma-separated, default `*`), `types`, `sources`, `minAmount`, "
                               "`lastEventId`, `rewind` (1..100: the last N matching events first, ignored with a cursor), "
                               "`access_token`. Header `Last-Event-ID` resumes. `retry:` first, `: heartbeat` comments. "
                               "The SSE event name is the topic, so EventSource code listens with addEventListener(topic) "
                               "(onmessage never fires). Bad query values answer 400 with {\"code\",\"message\"}.",
                "servers": [{"$ref": "#/servers/sse"}, {"$ref": "#/servers/localSse"}],
                "messages": {k: {"$ref": f"#/components/messages/{k}"} for k in sse_keys},
            },
        },
        "operations": {
            "receiveClientFrames": {"action": "receive", "channel": {"$ref": "#/channels/websocket"},
                                    "summary": "Client frames (a frame that is none of these answers `error`).",
                                    "messages": refs([k for k in ws_keys if k.startswith("client")])},
            "sendServerFrames": {"action": "send", "channel": {"$ref": "#/channels/websocket"},
                                 "summary": "Replies, events and errors.",
                                 "messages": refs([k for k in ws_keys if k.startswith("server")])},
            "sendSseEvents": {"action": "send", "channel": {"$ref": "#/channels/events"},
                              "summary": "The SSE stream.", "messages": refs(sse_keys)},
        },
        "components": {
            "messages": messages,
            "securitySchemes": {
                "queryToken": {"type": "httpApiKey", "name": "token", "in": "query", "description": "JWT (HS256 dev / RS256 JWKS)"},
                "accessToken": {"type": "httpApiKey", "name": "access_token", "in": "query", "description": "JWT, for EventSource"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }


def render() -> dict[str, str]:
    """Relative path -> file text, exactly as written."""
    import yaml

    out = {f"docs/schemas/{name}.json": json.dumps(schema, indent=2, ensure_ascii=False) + "\n" for name, schema in all_schemas().items()}
    header = "# Generated by scripts/gen_contract.py from the core's schemas: do not edit by hand.\n"
    out["docs/asyncapi.yaml"] = header + yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True, width=120)
    return out


def main() -> int:
    files = render()
    stale = {p.relative_to(ROOT).as_posix() for p in (DOCS / "schemas").glob("*.json")} - set(files)
    for rel in stale:
        (ROOT / rel).unlink()
    for rel, text in files.items():
        path = ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(files)} files ({len(stale)} stale removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
