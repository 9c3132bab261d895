"""Test support for the SSE server: a real ``python -m rtstream_sse`` subprocess
on a free port, and a small text/event-stream parser over httpx streaming."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from helpers import free_port, wait_for_port  # noqa: E402




ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    def __init__(self, env: dict[str, str], port: int, log_path: Path, module: str = "rtstream_sse"):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = env
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_for_port("127.0.0.1", port, timeout=15)
            self.wait_healthy()
        except Exception:
            self.stop()
            raise RuntimeError(f"SSE server did not start; log:\n{log_path.read_text()[-3000:]}")

    def wait_healthy(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = httpx.get(self.url + "/healthz", timeout=1)
                if r.status_code == 200 and r.json()["redis"] == "connected":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("SSE server not healthy")

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def server_env(redis_url: str, secret: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTSTREAM_") and k not in ("CONNECTIONS_TABLE", "SUBSCRIPTIONS_TABLE", "AWS_ENDPOINT_URL")}
    env.update(
        {
            "REDIS_URL": redis_url,
            "RTSTREAM_JWT_SECRET": secret,
            "RTSTREAM_SSE_HOST": "127.0.0.1",
            "RTSTREAM_SSE_PORT": str(port),
            "RTSTREAM_SSE_READ_BLOCK_MS": "1000",
            "RTSTREAM_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


def start_server(redis_url: str, secret: str, tmp_dir: Path, port: int | None = None, *,
                 module: str = "rtstream_sse", **extra: str) -> ServerProcess:
    """``python -m <module>``: the production entry point, or `rtstream dev`'s
    wrapper of it (``rtstream_cli.dev_sse``)."""
    port = port or free_port()
    return ServerProcess(server_env(redis_url, secret, port, **extra), port, tmp_dir / f"sse-{port}.log", module)


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self):
        import json

        return json.loads(self.data or "null")


def parse_block(block: bytes) -> Frame:
    frame = Frame()
    data_lines = []
    for raw in block.decode("utf-8").split("\n"):
        if raw.startswith(":"):
            frame.comments.append(raw[1:].strip())
            continue
        name, _, value = raw.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "data":
            data_lines.append(value)
        elif name == "retry":
            frame.retry = int(value)
    if data_lines:
        frame.data = "\n".join(data_lines)
    return frame


class SSEStream:
    """One open ``GET /events``: frames in order; None at the end of the stream."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self._chunks = response.aiter_raw()
        self._buf = b""
        self.ended = False

    async def next_frame(self, timeout: float = 5.0) -> Frame | None:
        deadline = asyncio.get_running_loop().time() + timeout
        while b"\n\n" not in self._buf:
            if self.ended:
                return None
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError("no SSE frame within timeout")
            try:
                chunk = await asyncio.wait_for(self._chunks.__anext__(), left)
            except StopAsyncIteration:
                self.ended = True
                continue
            except httpx.RemoteProtocolError:
                self.ended = True
                continue
            self._buf += chunk
        block, self._buf = self._buf.split(b"\n\n", 1)
        return parse_block(block)

    async def next_event(self, timeout: float = 5.0) -> Frame | None:
        """Next frame with data (skips comments, retry and the starting cursor frame)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            frame = await self.next_frame(max(0.01, deadline - asyncio.get_running_loop().time()))
            if frame is None or (frame.data is not None and frame.event != "cursor"):
                return frame
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("no SSE event within timeout")

    async def events(self, n: int, timeout: float = 5.0) -> list[Frame]:
        out = []
        for _ in range(n):
            frame = await self.next_event(timeout)
            assert frame is not None, f"stream ended after {len(out)} of {n} events"
            out.append(frame)
        return out

    async def no_event(self, within: float) -> None:
        """Assert no data frame arrives within ``within`` seconds."""
        try:
            frame = await self.next_event(within)
        except TimeoutError:
            return
        assert frame is None, f"unexpected event {frame}"
