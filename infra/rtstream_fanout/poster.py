"""Pooled, pipelined HTTP/1.1 client for the ``@connections`` management API.

boto3 costs milliseconds per call; one event to 1,000 connections needs 1,000
POSTs within tens of milliseconds. This client keeps a few keep-alive
connections open and pipelines requests on them (API Gateway and the local
emulator answer in order), so a whole batch costs a handful of writes.
Responses are parsed with httptools. With ``sign=True`` every request carries a
SigV4 signature (service ``execute-api``, :mod:`rtstream_fanout.sigv4`: cached
signing key, a few µs per request) with credentials from botocore's credential
chain (or injected): that is how the worker talks to a real API Gateway.

Pipelining (several requests in flight on one connection) is on by default
unsigned (the emulator) and off by default signed (AWS), until API Gateway's
handling of pipelined management requests is measured; ``pipelining=`` decides.

Statuses are returned, not raised: the worker decides (410 prune, 429/5xx retry).
A request whose connection broke before its answer gets status 0 (retryable).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httptools

from .sigv4 import SigV4Signer, canonical_host, canonical_uri

BROKEN = 0  # pseudo-status: no answer (connection lost / refused)


class _Batch:
    __slots__ = ("count", "statuses", "future")

    def __init__(self, count: int, future: "asyncio.Future[list[int]]") -> None:
        self.count = count
        self.statuses: list[int] = []
        self.future = future


class _Conn(asyncio.Protocol):
    """One keep-alive connection; requests are written in batches and the
    answers (in order) complete one future per batch, not one per request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.batches: deque[_Batch] = deque()
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.batches:
            batch = self.batches.popleft()
            if not batch.future.done():
                batch.future.set_result(batch.statuses + [BROKEN] * (batch.count - len(batch.statuses)))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    # httptools callback
    def on_message_complete(self) -> None:
        if self.batches:
            batch = self.batches[0]
            batch.statuses.append(self.parser.get_status_code())
            if len(batch.statuses) == batch.count:
                self.batches.popleft()
                if not batch.future.done():
                    batch.future.set_result(batch.statuses)
        if not self.parser.should_keep_alive() and self.transport is not None:
            self.transport.close()

    def send(self, payload: bytes, count: int) -> "asyncio.Future[list[int]]":
        future = asyncio.get_running_loop().create_future()
        self.batches.append(_Batch(count, future))
        assert self.transport is not None
        self.transport.write(payload)
        return future


class ManagementPoster:
    """``await poster.post_many(ids, data)`` -> one HTTP status per id, in order."""

    def __init__(
        self,
        endpoint: str,
        *,
        pool_size: int = 8,
        max_pipeline: int = 128,
        sign: bool = False,
        region: str | None = None,
        timeout_s: float = 10.0,
        credentials: Any = None,
        pipelining: bool | None = None,
    ) -> None:
        """``credentials``: a provider with ``get_frozen_credentials()`` (botocore's
        ``Credentials``); when signing without one, botocore's default chain.
        ``pipelining``: None = on unsigned, off signed."""
        parts = urlsplit(endpoint.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"management endpoint must be http(s)://host[:port]/stage, got {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        # the Host sent is the one SigV4 signs (lowercase, no default port)
        self.host_header = canonical_host(parts.hostname, parts.port, self.tls)
        self.base_path = parts.path.rstrip("/")
        self.pool_size = max(1, pool_size)
        self.max_pipeline = max(1, max_pipeline)
        self.timeout_s = timeout_s
        self._conns: list[_Conn | None] = [None] * self.pool_size
        self._locks = [asyncio.Lock() for _ in range(self.pool_size)]
        self._next = 0
        self._signer = _default_signer(credentials, region) if sign else None
        self.pipelining = (not sign) if pipelining is None else bool(pipelining)
        self._depth = self.max_pipeline if self.pipelining else 1
        self._quoted: dict[str, tuple[bytes, bytes]] = {}

    @property
    def signed(self) -> bool:
        return self._signer is not None

    def _path(self, connection_id: str) -> str:
        return f"{self.base_path}/@connections/{quote(connection_id, safe='')}"

    def _quote(self, connection_id: str) -> tuple[bytes, bytes]:
        """(the id as it goes in the path, the request's canonical URI for SigV4)."""
        found = self._quoted.get(connection_id)
        if found is None:
            if len(self._quoted) > 100_000:
                self._quoted.clear()
            q = quote(connection_id, safe="")
            found = self._quoted[connection_id] = (q.encode(), canonical_uri(f"{self.base_path}/@connections/{q}").encode())
        return found

    def _requests(self, method: str, connection_ids: Sequence[str], data: bytes) -> list[bytes]:
        """One request per connection; they share everything but the path (and,
        signed, the signature: one hash and one HMAC each)."""
        prefix = f"{method} {self.base_path}/@connections/".encode()
        head = (f" HTTP/1.1\r\nHost: {self.host_header}\r\nContent-Length: {len(data)}\r\n"
                "Content-Type: application/octet-stream\r\n").encode("latin-1")
        quoted = self._quote
        if self._signer is None:
            suffix = head + b"\r\n" + data
            return [prefix + quoted(cid)[0] + suffix for cid in connection_ids]
        batch = self._signer.batch(method, self.host_header, data)
        sign = batch.header_lines
        body = b"\r\n" + data
        out = []
        for cid in connection_ids:
            q, canonical = quoted(cid)
            out.append(prefix + q + head + sign(canonical) + body)
        return out

    async def _conn(self, slot: int) -> _Conn:
        conn = self._conns[slot]
        if conn is None or conn.closed:
            loop = asyncio.get_running_loop()
            ctx = ssl.create_default_context() if self.tls else None
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Conn, self.host, self.port, ssl=ctx, server_hostname=self.host if self.tls else None),
                self.timeout_s,
            )
            self._conns[slot] = conn
        return conn

    async def _send_on(self, slot: int, requests: list[bytes]) -> list[int]:
        results: list[int] = []
        async with self._locks[slot]:
            # pipelined: up to max_pipeline requests per write; else one at a time
            for start in range(0, len(requests), self._depth):
                chunk = requests[start : start + self._depth]
                try:
                    conn = await self._conn(slot)
                except (OSError, asyncio.TimeoutError):
                    results += [BROKEN] * len(chunk)
                    continue
                future = conn.send(b"".join(chunk), len(chunk))
                try:
                    results += await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
                except asyncio.TimeoutError:
                    if conn.transport is not None:
                        conn.transport.abort()  # connection_lost completes the batch with BROKEN
                    results += await future
        return results

    async def post_many(self, connection_ids: Sequence[str], data: bytes) -> list[int]:
        """POST ``data`` to every connection; statuses in the order of ``connection_ids``."""
        n = len(connection_ids)
        if n == 0:
            return []
        requests = self._requests("POST", connection_ids, data)
        slots = min(self.pool_size, max(1, (n + 31) // 32))
        first = self._next
        self._next = (self._next + slots) % self.pool_size
        shares: list[list[int]] = [[] for _ in range(slots)]
        for i in range(n):
            shares[i % slots].append(i)
        answers = await asyncio.gather(*(self._send_on((first + s) % self.pool_size, [requests[i] for i in shares[s]]) for s in range(slots)))
        out = [BROKEN] * n
        for s, idxs in enumerate(shares):
            for i, status in zip(idxs, answers[s]):
                out[i] = status
        return out

    async def post(self, connection_id: str, data: bytes) -> int:
        return (await self.post_many([connection_id], data))[0]

    async def post_in_order(self, connection_id: str, frames: Sequence[bytes]) -> list[int]:
        """Several frames to one connection, pipelined on one HTTP connection so
        they arrive in order."""
        slot = self._next
        self._next = (self._next + 1) % self.pool_size
        return await self._send_on(slot, [self._requests("POST", [connection_id], f)[0] for f in frames])

    async def delete(self, connection_id: str) -> int:
        slot = self._next
        self._next = (self._next + 1) % self.pool_size
        return (await self._send_on(slot, self._requests("DELETE", [connection_id], b"")))[0]

    async def close(self) -> None:
        for conn in self._conns:
            if conn is not None and conn.transport is not None:
                conn.transport.close()
        self._conns = [None] * self.pool_size


def _default_signer(credentials: Any, region: str | None) -> SigV4Signer:
    """A signer with the injected credentials, else botocore's default chain
    (environment, shared files, container/instance role: refreshed as they rotate)."""
    if credentials is None or not region:
        import botocore.session

        session = botocore.session.get_session()
        if credentials is None:
            credentials = session.get_credentials()
            if credentials is None:
                raise ValueError("signing requested but no AWS credentials found")
        region = region or session.get_config_variable("region") or "us-east-1"
    return SigV4Signer(credentials, region, "execute-api")
