"""The emulator against hostile HTTP before any login: request lines and headers
capped as API Gateway caps them (414 / 431 at once), slow heads timed out (408),
garbage refused (400), and the process's memory bounded whatever is streamed
at it. Real sockets against the fixture API."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest
import websockets
from helpers import loop_and_gateway_errors

from rtstream_gateway.server import MAX_HEAD_BYTES, MAX_URL_CHARS


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc")


@pytest.fixture
def task_errors(caplog):
    """Errors logged by asyncio (unretrieved task exceptions) or the emulator."""
    caplog.set_level(logging.ERROR)
    return lambda: loop_and_gateway_errors(caplog.records)


def endless(head: bytes, filler: bytes, total: int, chunk: int = 64 * 1024):
    """``head`` then ``filler`` repeated up to ``total`` bytes, made as it is sent:
    the client side holds one chunk, so the process's RSS measures the server."""
    yield head
    block = filler * (chunk // len(filler))
    for _ in range(total // len(block)):
        yield block


async def send_and_read(port: int, data, *, chunk: int = 64 * 1024, budget_s: float = 5.0) -> tuple[bytes, int, float]:
    """Write ``data`` (bytes, or an iterable of chunks) until the server answers,
    and read the answer (to EOF). Returns (answer, bytes written, seconds until
    the answer was complete)."""
    chunks = (data[i:i + chunk] for i in range(0, len(data), chunk)) if isinstance(data, bytes) else data
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = asyncio.ensure_future(reader.read())
    sent = 0
    try:
        for piece in chunks:
            if answer.done():
                break
            writer.write(piece)
            try:
                await asyncio.wait_for(writer.drain(), 1.0)
            except (ConnectionError, asyncio.TimeoutError):
                break
            sent += len(piece)
        try:
            received = await asyncio.wait_for(answer, budget_s)
        except ConnectionError:
            received = b""
        return received, sent, time.monotonic() - started
    finally:
        answer.cancel()
        writer.close()


def request_line(stage: str, url_tail: str) -> bytes:
    return f"GET /{stage}?token={url_tail} HTTP/1.1\r\n".encode()


HANDSHAKE = ("Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


async def test_100k_token_in_the_url_answers_414_within_a_second(fixture_gateway, task_errors):
    async with fixture_gateway() as gw:
        answer, _, took = await send_and_read(gw.port, request_line(gw.stage, "a" * 100_000) + HANDSHAKE.encode() + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 414 "), answer[:80]
        assert took < 1.0
        # the limit is API Gateway's: a URL of exactly the limit still reaches the authorizer
        path = f"/{gw.stage}?token=allow-u1&pad="
        ok_url = path + "p" * (MAX_URL_CHARS - len(path))
        async with await websockets.connect(f"ws://127.0.0.1:{gw.port}{ok_url}", ping_interval=None, open_timeout=5) as ws:
            await ws.send("hello")
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{gw.port}{ok_url}p", open_timeout=5)
        assert refused.value.response.status_code == 414
    assert task_errors() == []


async def test_huge_or_many_headers_answer_431_within_a_second(fixture_gateway, task_errors):
    async with fixture_gateway() as gw:
        big = request_line(gw.stage, "allow-u1") + HANDSHAKE.encode() + b"Authorization: Bearer " + b"t" * 100_000 + b"\r\n\r\n"
        answer, _, took = await send_and_read(gw.port, big)
        assert answer.startswith(b"HTTP/1.1 431 ") and took < 1.0
        many = request_line(gw.stage, "allow-u1") + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n"
        answer, _, took = await send_and_read(gw.port, many)
        assert answer.startswith(b"HTTP/1.1 431 ") and took < 1.0
        # a handshake whose head is just under the limit is served
        pad = MAX_HEAD_BYTES - 1200
        async with await websockets.connect(gw.ws_url + "?token=allow-u1", additional_headers={"X-Pad": "p" * pad},
                                            ping_interval=None, open_timeout=5):
            pass
    assert task_errors() == []


async def test_never_ending_request_line_and_header_are_cut_off_with_bounded_memory(fixture_gateway, task_errors):
    async with fixture_gateway() as gw:
        before = rss_bytes()
        endless_url = endless(b"GET /" + gw.stage.encode() + b"?token=", b"a", 40 * 1024 * 1024)
        answer, sent, took = await send_and_read(gw.port, endless_url)
        assert answer.startswith(b"HTTP/1.1 414 ") and took < 2.0
        assert sent < 20 * 1024 * 1024, f"the client wrote {sent} bytes before it was answered"
        endless_header = endless(request_line(gw.stage, "x") + b"X-Endless: ", b"b", 40 * 1024 * 1024)
        answer, sent, took = await send_and_read(gw.port, endless_header)
        assert answer.startswith(b"HTTP/1.1 431 ") and took < 2.0
        assert sent < 20 * 1024 * 1024
        # a body that never ends (to the management API, which needs no login here)
        endless_body = endless(f"POST /{gw.stage}/@connections/abc HTTP/1.1\r\nHost: x\r\n"
                               f"Content-Length: {1 << 34}\r\n\r\n".encode(), b"c", 40 * 1024 * 1024)
        answer, sent, took = await send_and_read(gw.port, endless_body)
        assert answer.startswith(b"HTTP/1.1 413 ") and took < 2.0
        # garbage from 20 clients at once: each refused, nothing kept
        garbage = os.urandom(64 * 1024)
        results = await asyncio.gather(*(send_and_read(gw.port, endless(b"", garbage, 4 * 1024 * 1024)) for _ in range(20)))
        assert all(a.startswith(b"HTTP/1.1 400 ") for a, _, _ in results)
        grown = rss_bytes() - before
        assert grown < 30 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB"
        # and the emulator still serves
        async with await websockets.connect(gw.ws_url + "?token=allow-u1", ping_interval=None, open_timeout=5) as ws:
            await ws.send("still here")
    assert task_errors() == []


async def test_slow_headers_and_silent_connections_time_out_with_408(fixture_gateway, task_errors):
    async with fixture_gateway(head_timeout=0.5) as gw:
        async def slow(first: bytes, trickle: bool) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            answer = asyncio.ensure_future(reader.read())
            try:
                writer.write(first)
                for _ in range(30):  # one byte every 0.1 s: never a whole head
                    if answer.done():
                        break
                    if trickle:
                        writer.write(b"a")
                    await asyncio.sleep(0.1)
                return await asyncio.wait_for(answer, 5)
            except ConnectionError:
                return b""
            finally:
                answer.cancel()
                writer.close()

        before = rss_bytes()
        started = time.monotonic()
        answers = await asyncio.gather(*(slow(request_line(gw.stage, "allow-u1") + b"X-Slow: ", True) for _ in range(50)),
                                       *(slow(b"", False) for _ in range(50)))
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers)
        assert time.monotonic() - started < 3.0
        assert rss_bytes() - before < 20 * 1024 * 1024
        assert gw._tcp == set() or all(c.lost for c in gw._tcp)
    assert task_errors() == []


async def test_pipelined_management_posts_are_not_mistaken_for_a_long_head(fixture_gateway, recorder, task_errors):
    """Head accounting counts each request's own head: 2,000 pipelined POSTs in
    one write (far more than the head limit in total) are all answered."""
    async with fixture_gateway() as gw:
        async with await websockets.connect(gw.ws_url + "?token=allow-u1", ping_interval=None, open_timeout=5) as ws:
            await ws.send("who am i")
            cid = (await recorder.wait_for("$default"))[0]["requestContext"]["connectionId"]
            await asyncio.wait_for(ws.recv(), 5)  # the echo route's own reply
            one = (f"POST /{gw.stage}/@connections/{cid} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi").encode()
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(one * 2000)
            data = b""
            while data.count(b"HTTP/1.1 200 ") < 2000:
                chunk = await asyncio.wait_for(reader.read(65536), 5)
                assert chunk, data[-200:]
                data += chunk
            writer.close()
            for _ in range(2000):
                assert await asyncio.wait_for(ws.recv(), 5) == "hi"
    assert task_errors() == []
