"""The emulator's server: one asyncio TCP server on one port for the WebSocket
endpoint (``/{stage}``) and the ``@connections`` management API
(``/{stage}/@connections/{id}``).

HTTP is parsed with httptools (keep-alive, pipelining); upgraded connections
run websockets' Sans-I/O ``ServerProtocol``, which exposes individual frames,
so the 32 KB frame and 128 KB message limits are API Gateway's. A management
POST is handled synchronously on the event loop and writes its frame straight
to the socket: no thread hop, no task per request.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import fnmatch
import json
import logging
import os
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import httptools
from websockets.datastructures import Headers
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from rtstream_cli.cloudformation import ACCOUNT_ID, TEMPLATE_PATH

from . import events as ev
from . import urls
from .api import ApiSpec, AuthorizerSpec, FunctionSpec, load_api, select_route
from .lambda_host import LocalLambdaHost

log = logging.getLogger("rtstream_gateway")

# Bodies larger than this are refused (413) as they arrive; over the message
# limit (128 KB for a POST) a body is counted but not kept.
MAX_HTTP_BODY = 1024 * 1024
# Bytes a client may send before its handshake completes.
MAX_PREOPEN_BUFFER = 256 * 1024
# API Gateway's limits on what precedes a body: a WebSocket API URL is at most
# 4,096 characters (414 above), the request line and headers together at most
# 10,240 bytes (431 above). Counting as bytes arrive bounds the memory an
# unauthenticated client can hold, whatever it sends.
MAX_URL_CHARS = 4096
MAX_HEAD_BYTES = 10 * 1024
# Seconds a client has to send a whole request head (slow headers answer 408).
HEAD_TIMEOUT_S = 10.0
# After refusing a request head: how long input is read and discarded before closing.
LINGER_S = 1.0
# Per-connection queue of received messages awaiting their route's handler;
# reading pauses above HIGH and resumes below LOW (backpressure, bounded memory).
INBOX_HIGH = 64
INBOX_LOW = 16

_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 410: "Gone",
            413: "Payload Too Large", 414: "URI Too Long", 426: "Upgrade Required", 429: "Too Many Requests",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable"}


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a request head over a limit."""


class _TokenBucket:
    def __init__(self, rate: float):
        self.rate = float(rate)
        self.capacity = max(1.0, float(rate))
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _DateCache:
    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = email.utils.formatdate(now, usegmt=True).encode()
        return self.value


_date = _DateCache()


def _http_response(status: int, body: bytes = b"", *, headers: list[tuple[str, str]] = (), close: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}".encode(), b"Date: " + _date.get(),
             b"Content-Length: " + str(len(body)).encode()]
    lines.extend(f"{k}: {v}".encode("latin-1") for k, v in headers)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _aws_error(status: int, error_type: str, message: str | None, *, close: bool = False) -> bytes:
    body = json.dumps({"message": message}).encode()
    return _http_response(status, body, close=close, headers=[
        ("Content-Type", "application/json"), ("x-amzn-RequestId", str(uuid.uuid4())), ("x-amzn-ErrorType", error_type)])


class _HttpRequest:
    __slots__ = ("method", "url", "headers", "body", "body_size", "keep_alive")

    def __init__(self, method: str, url: bytes, headers: list[tuple[str, str]], body: bytes, keep_alive: bool,
                 body_size: int | None = None):
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body  # empty when the body was over the limit (only its size is kept)
        self.body_size = len(body) if body_size is None else body_size
        self.keep_alive = keep_alive

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


class WsSession:
    """One open WebSocket connection (after a successful handshake)."""

    def __init__(self, gateway: "GatewayEmulator", conn: "_Connection", protocol: ServerProtocol, info: ev.ConnectionInfo):
        self.gateway = gateway
        self.conn = conn
        self.transport = conn.transport
        self.protocol = protocol
        self.info = info
        self.id = info.connection_id
        now = time.monotonic()
        self.opened_at = now
        self.last_active = now
        self.last_active_ms = info.connected_at
        self.open = True  # False once closing starts: @connections answers 410 from then on
        self.lost = False
        self.inbox: deque[str | bytes] = deque()
        self.worker: asyncio.Task | None = None
        self.paused = False
        self.skip_inbox = False
        self._parts: list[bytes] = []
        self._binary = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._server_close: tuple[int, str] | None = None

    # ---- incoming
    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
        self.flush()

    def _on_frame(self, frame: Frame) -> None:
        self.last_active = time.monotonic()
        self.last_active_ms = ev.now_ms()
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._binary = opcode is Opcode.BINARY
            self._parts = [frame.data]
        elif opcode is Opcode.CONT:
            self._parts.append(frame.data)
        else:
            if opcode is Opcode.CLOSE:
                self.open = False
                self.gateway._unregister(self)
            return
        if not frame.fin:
            return
        data = b"".join(self._parts)
        self._parts = []
        if self._binary:
            self._enqueue(data)
            return
        try:
            self._enqueue(data.decode("utf-8"))
        except UnicodeDecodeError:
            self.close(CloseCode.INVALID_DATA, "Invalid UTF-8 in text frame")

    def _enqueue(self, message: str | bytes) -> None:
        if not self.open:
            return
        self.inbox.append(message)
        if len(self.inbox) >= INBOX_HIGH and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if self.worker is None:
            self.worker = self.gateway._spawn(self._run_inbox())

    async def _run_inbox(self) -> None:
        try:
            while self.inbox and not self.skip_inbox:
                message = self.inbox.popleft()
                if self.paused and len(self.inbox) <= INBOX_LOW and not self.lost:
                    self.paused = False
                    self.transport.resume_reading()
                try:
                    await self.gateway._dispatch_message(self, message)
                except Exception:
                    # one message's failure never stalls the messages queued behind it
                    log.exception("message dispatch failed on %s", self.id)
        finally:
            self.worker = None
            if self.lost:
                self.gateway._spawn(self.gateway._run_disconnect(self))

    # ---- outgoing
    def send(self, data: bytes | str) -> None:
        """Send one message, in frames of at most ``max_frame_bytes`` as API Gateway does.
        Messages either way keep a connection from idling out (as on AWS, where a
        server-sent keep-alive message every few minutes holds a connection open)."""
        self.last_active = time.monotonic()
        self.last_active_ms = ev.now_ms()
        if isinstance(data, str):
            payload, text = data.encode("utf-8"), True
        else:
            payload = bytes(data)
            text = payload.isascii()
            if not text:
                try:
                    payload.decode("utf-8")
                    text = True
                except UnicodeDecodeError:
                    text = False
        limit = self.gateway.max_frame_bytes
        protocol = self.protocol
        if len(payload) <= limit:
            if text:
                protocol.send_text(payload)
            else:
                protocol.send_binary(payload)
        else:
            view = memoryview(payload)
            chunks = [view[i:i + limit] for i in range(0, len(payload), limit)]
            first = protocol.send_text if text else protocol.send_binary
            first(chunks[0], fin=False)
            for chunk in chunks[1:-1]:
                protocol.send_continuation(chunk, fin=False)
            protocol.send_continuation(chunks[-1], fin=True)
        self.flush()

    def flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:  # SEND_EOF: the server closes the TCP connection
                self.transport.close()
        if self.open and self.protocol.state is not State.OPEN:
            # the protocol failed the connection (oversize frame, protocol error...)
            self.open = False
            self.gateway._unregister(self)
            self._arm_close_timer()

    def close(self, code: int, reason: str) -> None:
        """Server-initiated close (idle, max age, @connections DELETE, limits, stop)."""
        if self.protocol.state is State.OPEN:
            self._server_close = (int(code), reason)
            self.protocol.send_close(code, reason)
        self.open = False
        self.gateway._unregister(self)
        self.flush()
        self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self.lost:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self.gateway.close_timeout, self.transport.abort)

    def lost_connection(self) -> None:
        self.lost = True
        self.open = False
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.gateway._unregister(self)
        if self.worker is None:
            self.gateway._spawn(self.gateway._run_disconnect(self))

    def disconnect_status(self) -> tuple[int, str]:
        rcvd = self.protocol.close_rcvd
        sent = self.protocol.close_sent
        if self._server_close is not None:
            return self._server_close
        if self.protocol.close_rcvd_then_sent and rcvd is not None:
            if rcvd.code == CloseCode.NO_STATUS_RCVD:
                return 1005, "Client-side close frame status not set"
            return int(rcvd.code), rcvd.reason
        if sent is not None and rcvd is None and sent.code != CloseCode.ABNORMAL_CLOSURE:
            return int(sent.code), sent.reason or "Closed by the server"
        return 1006, "Connection closed abnormally"


class _Connection(asyncio.Protocol):
    """One TCP connection: HTTP requests until it upgrades to a WebSocket."""

    def __init__(self, gateway: "GatewayEmulator"):
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.ws: WsSession | None = None
        self.handshaking = False
        self.preopen: list[bytes] = []
        self.preopen_size = 0
        self.lost = False
        self.discarding = False
        self._queue: deque[_HttpRequest] = deque()
        self._busy = False
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        # Request-head accounting: exact for the URL and completed headers; bytes
        # of later chunks that end inside an unfinished header count as well, so
        # a header that never ends is refused as soon as it passes the limit.
        self._in_head = False
        self._begun = 0
        self._head_size = 0
        self._head_partial = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused_status = 0

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gateway._tcp.add(self)
        self._arm_head_timer()  # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._cancel_head_timer()
        self.gateway._tcp.discard(self)
        if self.ws is not None:
            self.ws.lost_connection()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and self.gateway.head_timeout > 0:
            self._head_timer = asyncio.get_running_loop().call_later(self.gateway.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.lost and self.ws is None and not self.handshaking:
            self._refuse_head(408)

    def _refuse_head(self, status: int) -> None:
        """Answer a request whose head broke a limit, then close: nothing more is read."""
        self._cancel_head_timer()
        self.lost = True  # no queued request is answered after this one
        self.discarding = True
        self.transport.write(_http_response(status, _REASONS[status].encode(), close=True))
        # Lingering close: closing with unread input would reset the connection and
        # the client might never see the answer. Half-close, discard what still
        # arrives (nothing is kept), and close for good after a short linger.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.data_received(data)
            return
        if self.discarding:
            return
        if self.handshaking:
            self.preopen.append(data)
            self.preopen_size += len(data)
            if self.preopen_size > MAX_PREOPEN_BUFFER:
                self.transport.abort()
            return
        if self.lost:
            return
        continuing = self._in_head
        counted = self._head_size
        begun = self._begun
        try:
            self.parser.feed_data(data)
            if continuing and self._in_head and self._begun == begun:
                # this whole chunk belongs to the head still being received
                self._head_partial += len(data) - (self._head_size - counted)
                self._check_head()
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            request = self._queue.pop() if self._queue else None
            self._drain()
            if request is None:
                self.transport.close()
                return
            self.handshaking = True
            if offset < len(data):
                self.preopen.append(data[offset:])
            self.gateway._spawn(self.gateway._handshake(self, request))
            return
        except _HeadRefused:
            self._refuse_head(self._refused_status)
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadRefused):
                self._refuse_head(self._refused_status)
                return
            self._refuse_head(400)
            return
        self._drain()

    # ---- httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        self._in_head = True
        self._begun += 1
        self._head_size = 0
        self._head_partial = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if len(self._url) > MAX_URL_CHARS:
            self._refused_status = 414
            raise _HeadRefused()
        self._check_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        self._head_partial = 0
        self._check_head()
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()

    def _check_head(self) -> None:
        if self._head_size + self._head_partial > MAX_HEAD_BYTES:
            self._refused_status = 431
            raise _HeadRefused()

    def on_body(self, body: bytes) -> None:
        # A body over the message limit is counted, not kept (it is answered 413);
        # one past MAX_HTTP_BODY is refused at once.
        self._body_size += len(body)
        if self._body_size > MAX_HTTP_BODY:
            self._refused_status = 413
            raise _HeadRefused()
        if self._body_size <= self.gateway.max_message_bytes:
            self._body.append(body)
        else:
            self._body.clear()

    def on_message_complete(self) -> None:
        body = b"".join(self._body) if self._body_size <= self.gateway.max_message_bytes else b""
        self._queue.append(_HttpRequest(self.parser.get_method().decode("ascii", "replace"), self._url,
                                        self._headers, body, self.parser.should_keep_alive(), self._body_size))

    # ---- request processing, in order per connection
    def _drain(self) -> None:
        gateway = self.gateway
        while self._queue and not self._busy and not self.lost:
            request = self._queue.popleft()
            if gateway.post_latency > 0 and gateway._is_management(request):
                self._busy = True
                asyncio.get_running_loop().call_later(gateway.post_latency, self._finish_delayed, request)
                return
            self._respond(request, gateway._handle_http(request))

    def _finish_delayed(self, request: _HttpRequest) -> None:
        self._busy = False
        if self.lost:
            return
        self._respond(request, self.gateway._handle_http(request))
        self._drain()

    def _respond(self, request: _HttpRequest, response: bytes) -> None:
        self.transport.write(response)
        if not request.keep_alive:
            self.transport.close()
            self.lost = True


class GatewayEmulator:
    """A local API Gateway WebSocket API running the handlers `template.yaml` names."""

    def __init__(self, template_path: str | Path = TEMPLATE_PATH, *, host: str = "127.0.0.1", port: int = 0,
                 stage: str | None = None, env: dict[str, str] | None = None, idle_timeout: float = 600,
                 max_connection_seconds: float = 7200, max_frame_bytes: int = 32 * 1024,
                 max_message_bytes: int = 128 * 1024, post_latency_ms: float = 0, post_throttle: float | None = None,
                 region: str | None = None, resources: dict[str, str] | None = None,
                 client_buffer_limit: int = 4 * 1024 * 1024, close_timeout: float = 2.0,
                 head_timeout: float = HEAD_TIMEOUT_S):
        self.template_path = Path(template_path)
        self.host = host
        self.port = port
        self._stage_override = stage
        self.stage = stage or ""
        self.env = dict(env or {})
        self.idle_timeout = float(idle_timeout)
        self.max_connection_seconds = float(max_connection_seconds)
        self.max_frame_bytes = int(max_frame_bytes)
        self.max_message_bytes = int(max_message_bytes)
        self.post_latency = float(post_latency_ms) / 1000.0
        self.post_throttle = post_throttle
        self.region = region or self.env.get("AWS_REGION") or self.env.get("AWS_DEFAULT_REGION") \
            or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.resources = resources
        self.client_buffer_limit = client_buffer_limit
        self.close_timeout = close_timeout
        self.head_timeout = float(head_timeout)
        self.api: ApiSpec | None = None
        self.api_id = ev.api_id()
        self._host: LocalLambdaHost | None = None
        self._server: asyncio.base_events.Server | None = None
        self._sessions: dict[str, WsSession] = {}
        self._tcp: set[_Connection] = set()
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self._bucket = _TokenBucket(post_throttle) if post_throttle else None
        self._management_prefix = ""
        self._stopping = False

    # ---- public surface
    @property
    def ws_url(self) -> str:
        return urls.ws_url(self.host, self.port, self.stage)

    @property
    def management_endpoint(self) -> str:
        return urls.management_endpoint(self.host, self.port, self.stage)

    @property
    def management_url(self) -> str:
        return f"{self.management_endpoint}/@connections"

    @property
    def connection_ids(self) -> list[str]:
        return list(self._sessions)

    def function_environment(self, spec: FunctionSpec) -> dict[str, str]:
        """The environment one function runs with (given to it, never written to
        ``os.environ``). Precedence: the template's values (parameter defaults),
        then this process's environment (local configuration overrides defaults),
        then the emulator's own endpoint, then ``env``."""
        process = dict(os.environ)
        template_env = {k: v for k, v in spec.environment.items() if k not in process}
        return {**process, **template_env, "RTSTREAM_MANAGEMENT_ENDPOINT": self.management_endpoint,
                "AWS_REGION": self.region, **self.env}

    def set_post_behaviour(self, *, latency_ms: float = 0, throttle: float | None = None) -> None:
        """Change the injected @connections latency and throttling while running
        (e.g. a fan-out test turns on 429s mid-stream)."""
        self.post_latency = float(latency_ms) / 1000.0
        self.post_throttle = throttle
        self._bucket = _TokenBucket(throttle) if throttle else None

    async def start(self) -> None:
        self.api = load_api(self.template_path, region=self.region, stage=self._stage_override, resources=self.resources)
        self.stage = self.api.stage
        self._management_prefix = f"/{self.stage}/@connections/"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            functions = self.api.functions
            self._host = LocalLambdaHost(functions, region=self.region,
                                         environments={f.logical_id: self.function_environment(f) for f in functions})
            self._host.load()
        except BaseException:
            self._server.close()
            raise
        self._sweeper = asyncio.create_task(self._sweep())
        log.info("gateway emulator on %s (management %s)", self.ws_url, self.management_url)

    async def stop(self) -> None:
        if self._server is None or self._stopping:
            return
        self._stopping = True
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        closing = list(self._sessions.values())
        for session in closing:
            session.skip_inbox = True
            session.close(CloseCode.GOING_AWAY, "Going away")
        for conn in list(self._tcp):
            if conn.ws is None and not conn.handshaking:
                conn.transport.close()
        # $disconnect runs for every connection; bounded by the close handshake and handler timeouts
        deadline = time.monotonic() + self.close_timeout + 10
        while time.monotonic() < deadline and (self._tasks or any(not s.lost for s in closing)):
            await asyncio.sleep(0.01)
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._tcp):
            conn.transport.abort()
        self._server = None
        self._stopping = False
        if self._host is not None:
            self._host.close()
            self._host = None

    async def __aenter__(self) -> "GatewayEmulator":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # ---- bookkeeping
    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        # Every task's outcome is retrieved here: a bug surfaces as one logged
        # error naming the task, never as "Task exception was never retrieved".
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway task %s failed", task.get_coro().__qualname__, exc_info=task.exception())

    def _unregister(self, session: WsSession) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    async def _sweep(self) -> None:
        interval = min(max(min(self.idle_timeout, self.max_connection_seconds) / 10, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for session in list(self._sessions.values()):
                if now - session.opened_at >= self.max_connection_seconds or now - session.last_active >= self.idle_timeout:
                    session.close(CloseCode.GOING_AWAY, "Going away")

    # ---- @connections management API
    def _is_management(self, request: _HttpRequest) -> bool:
        return request.url.startswith(self._management_prefix.encode())

    def _handle_http(self, request: _HttpRequest) -> bytes:
        close = not request.keep_alive
        try:
            url = httptools.parse_url(request.url)
        except httptools.HttpParserInvalidURLError:
            return _http_response(400, b"Bad Request", close=close)
        path = unquote(url.path.decode("latin-1"))
        if path.startswith(self._management_prefix):
            return self._management(request, path[len(self._management_prefix):], close)
        if path in (f"/{self.stage}", f"/{self.stage}/"):
            return _http_response(426, b"Upgrade Required", headers=[("Upgrade", "websocket")], close=close)
        if "/@connections" in path:
            return _aws_error(403, "ForbiddenException", "Forbidden", close=close)
        return _http_response(404, b'{"message":"Not Found"}', headers=[("Content-Type", "application/json")], close=close)

    def _management(self, request: _HttpRequest, connection_id: str, close: bool) -> bytes:
        if self._bucket is not None and not self._bucket.take():
            return _aws_error(429, "LimitExceededException", "Rate exceeded", close=close)
        method = request.method
        if method == "POST" and request.body_size > self.max_message_bytes:
            return _aws_error(413, "PayloadTooLargeException", "Message too long", close=close)
        session = self._sessions.get(connection_id)
        if session is None or not session.open:
            return _aws_error(410, "GoneException", None, close=close)
        if method == "POST":
            if session.transport.get_write_buffer_size() > self.client_buffer_limit:
                return _aws_error(429, "LimitExceededException", "Client side buffer full", close=close)
            session.send(request.body)
            return _http_response(200, headers=[("Content-Type", "application/json"),
                                                ("x-amzn-RequestId", str(uuid.uuid4()))], close=close)
        if method == "GET":
            identity = {"sourceIp": session.info.source_ip, "userAgent": session.info.user_agent or ""}
            body = json.dumps({"connectedAt": ev.iso8601(session.info.connected_at),
                               "lastActiveAt": ev.iso8601(session.last_active_ms), "identity": identity}).encode()
            return _http_response(200, body, headers=[("Content-Type", "application/json")], close=close)
        if method == "DELETE":
            session.close(CloseCode.NORMAL_CLOSURE, "")
            return _http_response(204, close=close)
        return _aws_error(405, "MethodNotAllowedException", "Method not allowed", close=close)

    # ---- WebSocket handshake: authorizer, $connect, then 101
    async def _handshake(self, conn: _Connection, request: _HttpRequest) -> None:
        try:
            await self._open_session(conn, request)
        except Exception:
            log.exception("WebSocket handshake failed")
            if conn.ws is None:
                self._refuse(conn, 500, "Internal server error")

    async def _open_session(self, conn: _Connection, request: _HttpRequest) -> None:
        assert self.api is not None and self._host is not None
        transport = conn.transport
        # One protocol object validates the handshake; the session's starts OPEN
        # (its parser then reads frames, not an HTTP request).
        response = ServerProtocol().accept(WsRequest(path=request.url.decode("latin-1"), headers=Headers(request.headers)))
        if response.status_code != 101:
            transport.write(response.serialize())
            transport.close()
            return
        try:
            url = httptools.parse_url(request.url)
        except httptools.HttpParserInvalidURLError:
            return self._refuse(conn, 400, "Bad Request")
        path = unquote(url.path.decode("latin-1"))
        if path not in (f"/{self.stage}", f"/{self.stage}/"):
            return self._refuse(conn, 403, "Forbidden")
        peer = transport.get_extra_info("peername") or ("127.0.0.1", 0)
        connected_at = ev.now_ms()
        info = ev.ConnectionInfo(
            connection_id=ev.aws_id(), api_id=self.api_id, stage=self.stage,
            domain_name=request.header("host") or f"{urls.connectable_host(self.host)}:{self.port}",
            source_ip=str(peer[0]), user_agent=request.header("user-agent"), connected_at=connected_at,
            headers=list(request.headers),
            query=parse_qsl(url.query.decode("latin-1"), keep_blank_values=True) if url.query else [],
        )
        route = self.api.routes.get("$connect")
        if route is not None and route.authorizer is not None:
            status, context = await self._authorize(route.authorizer, info)
            if context is None:
                return self._refuse(conn, status, _REASONS.get(status, "Error"))
            info.authorizer = context
        extra_headers: list[tuple[str, str]] = []
        connect_ran = False
        if route is not None and route.function is not None:
            try:
                result = await self._host.invoke(route.function, ev.connect_event(info, ev.now_ms()))
            except Exception:
                log.exception("$connect handler failed")
                return self._refuse(conn, 500, "Internal server error")
            status = _status_of(result)
            if not 200 <= status < 300:
                return self._refuse(conn, status, _body_of(result) or _REASONS.get(status, "Error"))
            connect_ran = True
            if isinstance(result, dict):
                for name, value in (result.get("headers") or {}).items():
                    if str(name).lower() == "sec-websocket-protocol":
                        extra_headers.append(("Sec-WebSocket-Protocol", str(value)))
        protocol = ServerProtocol(state=State.OPEN, max_size=(self.max_message_bytes, self.max_frame_bytes))
        session = WsSession(self, conn, protocol, info)
        if conn.lost or self._stopping:
            # the client left (or the server stopped) while $connect ran: the connection never opened
            session.lost = True
            session.open = False
            if connect_ran:
                await self._run_disconnect(session)
            if not conn.lost:
                transport.abort()
            return
        for name, value in extra_headers:
            response.headers[name] = value
        transport.write(response.serialize())
        self._sessions[info.connection_id] = session
        conn.ws = session
        conn.handshaking = False
        session.flush()
        pending, conn.preopen = conn.preopen, []
        for data in pending:
            if conn.lost:
                break
            session.data_received(data)

    def _refuse(self, conn: _Connection, status: int, message: str) -> None:
        if not conn.lost:
            body = json.dumps({"message": message}).encode()
            conn.transport.write(_http_response(status, body, headers=[("Content-Type", "application/json")], close=True))
            conn.transport.close()

    async def _authorize(self, spec: AuthorizerSpec, info: ev.ConnectionInfo) -> tuple[int, dict[str, Any] | None]:
        assert self._host is not None
        for kind, name in spec.identity_sources:
            if kind == "header":
                present = any(k.lower() == name.lower() and v for k, v in info.headers)
            else:
                present = any(k == name and v for k, v in info.query)
            if not present:
                return 401, None  # API Gateway refuses without calling the authorizer
        event = ev.authorizer_event(info, ev.now_ms(), region=self.region, account_id=ACCOUNT_ID)
        started = time.monotonic()
        try:
            result = await self._host.invoke(spec.function, event)
        except Exception as exc:
            if str(exc) == "Unauthorized":
                return 401, None
            log.exception("authorizer failed")
            return 500, None
        if not isinstance(result, dict) or "policyDocument" not in result:
            log.error("authorizer returned no policyDocument")
            return 500, None
        if not _policy_allows(result["policyDocument"], event["methodArn"]):
            return 403, None
        context: dict[str, Any] = {"principalId": result.get("principalId")}
        context.update(result.get("context") or {})
        context["integrationLatency"] = int((time.monotonic() - started) * 1000)
        return 200, context

    # ---- messages and $disconnect
    async def _dispatch_message(self, session: WsSession, message: str | bytes) -> None:
        assert self.api is not None and self._host is not None
        body: Any = None
        if isinstance(message, str) and self.api.route_selection_expression.startswith("$request.body."):
            try:
                body = json.loads(message)
            except (ValueError, RecursionError):
                # not JSON, or nested deeper than a parser goes: API Gateway
                # routes what it cannot read to $default
                body = None
        key = select_route(self.api.route_selection_expression, body, self.api.routes)
        if key is None:
            if session.open:
                session.send(json.dumps({"message": "Forbidden", "connectionId": session.id, "requestId": ev.aws_id()}))
            return
        route = self.api.routes[key]
        if route.function is None:
            return
        event = ev.message_event(session.info, key, message, ev.now_ms())
        try:
            result = await self._host.invoke(route.function, event)
        except Exception:
            log.exception("route %s handler failed", key)
            if session.open:
                session.send(json.dumps({"message": "Internal server error", "connectionId": session.id,
                                         "requestId": event["requestContext"]["requestId"]}))
            return
        if route.has_route_response and session.open:
            reply = _route_response(result)
            if reply is not None:
                session.send(reply)

    async def _run_disconnect(self, session: WsSession) -> None:
        assert self.api is not None and self._host is not None
        route = self.api.routes.get("$disconnect")
        if route is None or route.function is None:
            return
        code, reason = session.disconnect_status()
        try:
            await self._host.invoke(route.function, ev.disconnect_event(session.info, code, reason, ev.now_ms()))
        except Exception:
            log.exception("$disconnect handler failed")


def _status_of(result: Any) -> int:
    if isinstance(result, dict) and "statusCode" in result:
        try:
            return int(result["statusCode"])
        except (TypeError, ValueError):
            return 502
    return 200


def _body_of(result: Any) -> str | None:
    if isinstance(result, dict) and isinstance(result.get("body"), str):
        return result["body"]
    return None


def _route_response(result: Any) -> str | bytes | None:
    """What API Gateway sends back for a Lambda proxy integration's result."""
    if isinstance(result, dict):
        if "body" not in result or result["body"] is None:
            return None
        body = result["body"]
        if result.get("isBase64Encoded") and isinstance(body, str):
            return base64.b64decode(body)
        return body if isinstance(body, str) else json.dumps(body)
    if isinstance(result, str):
        return result
    return None


def _matches(patterns: Any, value: str) -> bool:
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(isinstance(p, str) and fnmatch.fnmatchcase(value, p) for p in patterns or [])


def _policy_allows(policy: Any, method_arn: str) -> bool:
    statements = policy.get("Statement") if isinstance(policy, dict) else None
    if isinstance(statements, dict):
        statements = [statements]
    allowed = False
    for statement in statements or []:
        if not isinstance(statement, dict):
            continue
        if not _matches(statement.get("Action"), "execute-api:Invoke") or not _matches(statement.get("Resource"), method_arn):
            continue
        effect = statement.get("Effect")
        if effect == "Deny":
            return False
        if effect == "Allow":
            allowed = True
    return allowed
