"""Fixtures for the fan-out tests.

``management_stub``: a small real HTTP/1.1 server (keep-alive, pipelining) with
the ``@connections`` semantics the worker relies on: 200 for open connections,
410 for unknown ones, and scripted 429/500 answers to exercise retries. The
end-to-end tests use the real gateway emulator instead.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict, deque
from urllib.parse import unquote

import httptools
import pytest


class ManagementStub:
    def __init__(self) -> None:
        self.open: set[str] = set()
        self.received: dict[str, list[bytes]] = defaultdict(list)
        self.script: dict[str, deque[int]] = defaultdict(deque)
        self.requests = 0
        self.headers: list[dict[str, str]] = []  # of every request, in order
        self.close_after_response = False  # answer "Connection: close" and hang up
        self.connections_made = 0
        # verify(method, path, headers, body) -> bool: False answers 403 (e.g. a SigV4 check)
        self.verify = None
        self.rejected = 0
        self.max_requests_per_read = 0  # 1 = the client never pipelined
        self.server: asyncio.AbstractServer | None = None
        self.endpoint = ""

    def frames(self, cid: str) -> list[dict]:
        return [json.loads(b) for b in self.received[cid]]

    def event_ids(self, cid: str) -> list[str]:
        return [f["id"] for f in self.frames(cid) if f.get("type") == "event"]

    def answer(self, method: str, path: str, body: bytes) -> int:
        self.requests += 1
        prefix = "/dev/@connections/"
        if not path.startswith(prefix):
            return 404
        cid = unquote(path[len(prefix):])
        if self.script[cid]:
            return self.script[cid].popleft()
        if cid not in self.open:
            return 410
        if method == "POST":
            self.received[cid].append(body)
            return 200
        if method == "DELETE":
            self.open.discard(cid)
            return 204
        return 405

    async def start(self) -> None:
        stub = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                stub.connections_made += 1
                self.transport = transport
                self.parser = httptools.HttpRequestParser(self)
                self.url = b""
                self.body = bytearray()

            def data_received(self, data):
                self.in_read = 0
                self.parser.feed_data(data)
                stub.max_requests_per_read = max(stub.max_requests_per_read, self.in_read)

            def on_message_begin(self):
                self.url, self.body, self.headers = b"", bytearray(), {}

            def on_header(self, name, value):
                self.headers[name.decode().lower()] = value.decode()

            def on_url(self, url):
                self.url += url

            def on_body(self, body):
                self.body += body

            def on_message_complete(self):
                self.in_read += 1
                stub.headers.append(self.headers)
                method, path, body = self.parser.get_method().decode(), self.url.decode(), bytes(self.body)
                if stub.verify is not None and not stub.verify(method, path, self.headers, body):
                    stub.rejected += 1
                    status = 403
                else:
                    status = stub.answer(method, path, body)
                if stub.close_after_response:
                    self.transport.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
                    self.transport.close()
                else:
                    self.transport.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())

        self.server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}/dev"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def management_stub():
    stub = ManagementStub()
    await stub.start()
    yield stub
    await stub.stop()
