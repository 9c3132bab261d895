"""Lambda events shaped like API Gateway's for WebSocket APIs (CONNECT, MESSAGE,
DISCONNECT, and the REQUEST authorizer's), built from plain values.

Shapes follow AWS's documented events; the tests validate them against
aws-lambda-powertools' parser models as an outside oracle.
"""

from __future__ import annotations

import base64
import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

_ALPHABET = string.ascii_letters + string.digits


def aws_id() -> str:
    """An API Gateway-style id (connectionId, messageId, requestId): 15
    alphanumerics and '=', like ``TF9dteHXoAMCJ5g=``."""
    return "".join([_ALPHABET[b % 62] for b in secrets.token_bytes(15)]) + "="  # one syscall, not 15


def api_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(10))


def request_time(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).strftime("%d/%b/%Y:%H:%M:%S +0000")


def iso8601(epoch_ms: int) -> str:
    dt = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class ConnectionInfo:
    """What API Gateway knows about a connection; every event of it carries this."""

    connection_id: str
    api_id: str
    stage: str
    domain_name: str
    source_ip: str
    user_agent: str | None
    connected_at: int  # epoch ms
    headers: list[tuple[str, str]]  # the handshake's, in order, original case
    query: list[tuple[str, str]]
    authorizer: dict[str, Any] | None = None  # principalId + context keys, as AWS flattens them
    extra: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        identity: dict[str, Any] = {"sourceIp": self.source_ip}
        if self.user_agent is not None:
            identity["userAgent"] = self.user_agent
        return identity

    def request_context(self, route_key: str, event_type: str, epoch_ms: int) -> dict[str, Any]:
        context: dict[str, Any] = {
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": aws_id(),
            "requestTime": request_time(epoch_ms),
            "messageDirection": "IN",
            "stage": self.stage,
            "connectedAt": self.connected_at,
            "requestTimeEpoch": epoch_ms,
            "identity": self.identity(),
            "requestId": aws_id(),
            "domainName": self.domain_name,
            "connectionId": self.connection_id,
            "apiId": self.api_id,
        }
        if self.authorizer is not None:
            context["authorizer"] = dict(self.authorizer)
        return context


def _header_maps(headers: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in headers:
        single[name] = value  # the last value wins, as in API Gateway's proxy events
        multi.setdefault(name, []).append(value)
    return single, multi


def _query_maps(query: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in query:
        single[name] = value  # the last value wins, as in API Gateway
        multi.setdefault(name, []).append(value)
    return single, multi


def _forwarded_headers(info: ConnectionInfo) -> list[tuple[str, str]]:
    port = info.domain_name.rpartition(":")[2] if ":" in info.domain_name else "80"
    return [*info.headers, ("X-Forwarded-For", info.source_ip), ("X-Forwarded-Port", port),
            ("X-Forwarded-Proto", "http"), ("X-Amzn-Trace-Id", f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}")]


def connect_event(info: ConnectionInfo, epoch_ms: int) -> dict[str, Any]:
    headers, multi_headers = _header_maps(_forwarded_headers(info))
    event: dict[str, Any] = {
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "requestContext": info.request_context("$connect", "CONNECT", epoch_ms),
        "isBase64Encoded": False,
    }
    if info.query:
        event["queryStringParameters"], event["multiValueQueryStringParameters"] = _query_maps(info.query)
    return event


def authorizer_event(info: ConnectionInfo, epoch_ms: int, *, region: str, account_id: str) -> dict[str, Any]:
    headers, multi_headers = _header_maps(_forwarded_headers(info))
    query, multi_query = _query_maps(info.query)
    context = info.request_context("$connect", "CONNECT", epoch_ms)
    context.pop("authorizer", None)
    return {
        "type": "REQUEST",
        "methodArn": f"arn:aws:execute-api:{region}:{account_id}:{info.api_id}/{info.stage}/$connect",
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "stageVariables": {},
        "requestContext": context,
    }


def message_event(info: ConnectionInfo, route_key: str, body: bytes | str, epoch_ms: int) -> dict[str, Any]:
    context = info.request_context(route_key, "MESSAGE", epoch_ms)
    context["messageId"] = aws_id()
    if isinstance(body, str):
        return {"requestContext": context, "body": body, "isBase64Encoded": False}
    return {"requestContext": context, "body": base64.b64encode(body).decode("ascii"), "isBase64Encoded": True}


def disconnect_event(info: ConnectionInfo, status_code: int, reason: str, epoch_ms: int) -> dict[str, Any]:
    headers = [("Host", info.domain_name), ("x-api-key", ""), ("X-Forwarded-For", ""), ("x-restapi", "")]
    single, multi = _header_maps(headers)
    context = info.request_context("$disconnect", "DISCONNECT", epoch_ms)
    context["disconnectStatusCode"] = status_code
    context["disconnectReason"] = reason
    return {"headers": single, "multiValueHeaders": multi, "requestContext": context, "isBase64Encoded": False}
