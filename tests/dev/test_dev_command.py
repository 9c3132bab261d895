"""`rtstream dev` and `rtstream token` as a user runs them: subprocesses, real
ports, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
import pytest
import websockets
from rtstream.topics import validate_payload
from helpers import free_port  # noqa: E402

ENDPOINT_PREFIXES = ("WebSocket: ", "SSE: ", "Dashboard: ", "Management API: ")



def cli_env(state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RTSTREAM_JWT_SECRET", "REDIS_URL", "AWS_ENDPOINT_URL")}
    env.update({"RTSTREAM_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1", **extra})
    return env


def state_file(state_dir: Path, ws_port: int, sse_port: int) -> Path:
    """Where `rtstream dev` on these ports keeps its state (one file per instance)."""
    return state_dir / "instances" / f"dev-{ws_port}-{sse_port}.json"


def rtstream(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtstream_cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def read_lines_until(proc: subprocess.Popen, prefix: str, timeout: float) -> list[str]:
    """Lines of stdout up to the one starting with ``prefix`` (a reader thread: pipes and deadlines)."""
    found: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            found.put(line.rstrip("\n"))
        found.put(None)

    threading.Thread(target=pump, daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = found.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no {prefix!r} line within {timeout}s; got {lines}; "
                         f"stderr: {proc.stderr.read() if proc.poll() is not None else ''}")


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def ping(ws_url: str, token: str) -> dict:
    async with websockets.connect(f"{ws_url}?token={token}", open_timeout=5, ping_interval=None) as ws:
        await ws.send('{"type":"ping"}')
        return json.loads(await asyncio.wait_for(ws.recv(), 5))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to list child processes")
def test_rtstream_dev_endpoints_ws_within_5s_and_sigterm_stops_children(tmp_path):
    env = cli_env(tmp_path)
    # a token minted before the system runs works with it: both use this machine's dev key
    issued = rtstream("token", "--user", "dev-user", "--entity", "demo-entity", env=env)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()

    ws_port, sse_port = free_port(), free_port()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "rtstream_cli.main", "dev", "--ws-port", str(ws_port), "--sse-port", str(sse_port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = read_lines_until(proc, "Management API: ", timeout=20)
        reply = asyncio.run(ping(f"ws://127.0.0.1:{ws_port}/dev", token))
        ready_after = time.monotonic() - started
        assert reply["type"] == "pong"
        assert ready_after < 5.0, f"WebSocket working after {ready_after:.1f}s"

        endpoint_lines = [line for line in lines if line.startswith(ENDPOINT_PREFIXES)]
        assert endpoint_lines == [
            f"WebSocket: ws://127.0.0.1:{ws_port}/dev",
            f"SSE: http://127.0.0.1:{sse_port}/events",
            f"Dashboard: http://127.0.0.1:{sse_port}/",
            f"Management API: http://127.0.0.1:{ws_port}/dev/@connections",
        ]
        state = json.loads(state_file(tmp_path, ws_port, sse_port).read_text())
        assert state_file(tmp_path, ws_port, sse_port).stat().st_mode & 0o077 == 0  # it holds the signing key
        assert state["ws_url"] == f"ws://127.0.0.1:{ws_port}/dev" and state["pid"] == proc.pid
        jwt.decode(token, state["jwt_secret"], algorithms=["HS256"])

        children = children_of(proc.pid)
        assert len(children) >= 3, children  # redis-server, fan-out worker, SSE server
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, "rtstream dev did not exit cleanly on SIGTERM"
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if alive(pid)]
        assert not state_file(tmp_path, ws_port, sse_port).exists()
        for port in (ws_port, sse_port):
            with socket.socket() as s:  # released: a new system can listen there (servers set SO_REUSEADDR)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                s.listen()
    except AssertionError as exc:
        if proc.poll() is None:
            proc.kill()
        raise AssertionError(f"{exc}\n--- rtstream dev stderr:\n{proc.stderr.read()[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_rtstream_dev_refuses_a_taken_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = rtstream("dev", "--ws-port", str(port), "--sse-port", str(free_port()), env=cli_env(tmp_path), timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "in use" in lines[0]
    assert time.monotonic() - started < 10
    assert not (tmp_path / "instances").exists() or not list((tmp_path / "instances").iterdir())


def test_rtstream_token_uses_env_secret_else_dev_key(tmp_path):
    explicit = rtstream("token", "--user", "u1", "--entity", "e1", "--role", "agent", "--ttl", "120",
                        env=cli_env(tmp_path, RTSTREAM_JWT_SECRET="explicit-secret-0123456789abcdef-0123"))
    assert explicit.returncode == 0, explicit.stderr
    claims = jwt.decode(explicit.stdout.strip(), "explicit-secret-0123456789abcdef-0123", algorithms=["HS256"])
    assert claims["sub"] == "u1" and claims["entity_id"] == "e1" and claims["role"] == "agent"
    assert 115 <= claims["exp"] - claims["iat"] <= 120

    dev_key = rtstream("token", "--user", "u1", "--entity", "e1", env=cli_env(tmp_path))
    assert dev_key.returncode == 0
    secret = (tmp_path / "dev-secret").read_text().strip()
    assert jwt.decode(dev_key.stdout.strip(), secret, algorithms=["HS256"])["role"] == "user"
    assert (tmp_path / "dev-secret").stat().st_mode & 0o077 == 0  # private to the user

    refused = rtstream("token", "--user", "not valid", "--entity", "e1", env=cli_env(tmp_path))
    assert refused.returncode != 0 and refused.stdout == "" and "identifier" in refused.stderr


def _dev(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, int, list[str]]:
    sse_port = free_port()
    ws_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rtstream_cli.main", "dev", "--ws-port", str(ws_port), "--sse-port", str(sse_port), *extra],
                            env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.ws_port = ws_port  # type: ignore[attr-defined]
    return proc, sse_port, read_lines_until(proc, "Hint: ", timeout=30)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


async def _first_demo_event(sse_port: int, timeout: float) -> tuple[str, dict, str]:
    import httpx

    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=timeout)) as http:
        config = (await http.get(f"http://127.0.0.1:{sse_port}/dashboard/config")).json()
        async with http.stream("GET", f"http://127.0.0.1:{sse_port}/events", params={"access_token": config["token"]}) as response:
            assert response.status_code == 200
            buffer = ""
            async with asyncio.timeout(timeout):
                async for chunk in response.aiter_text():
                    buffer += chunk
                    while "\n\n" in buffer:
                        block, buffer = buffer.split("\n\n", 1)
                        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(":"))
                        if fields.get("event") in ("transactions.new", "balance.updated", "agent.action.completed", "sync.completed"):
                            return fields["event"], json.loads(fields["data"]), config["entityId"]
    raise AssertionError("stream ended")


def test_rtstream_dev_starts_the_demo_feed_for_the_dashboard_entity(tmp_path):
    proc, sse_port, lines = _dev(tmp_path)
    try:
        assert any(line.startswith("Demo: ") and "demo-entity" in line for line in lines), lines
        assert f"Metrics: http://127.0.0.1:{sse_port}/metrics" in lines
        started = time.monotonic()
        topic, payload, entity = asyncio.run(_first_demo_event(sse_port, timeout=10))
        assert entity == "demo-entity"
        validate_payload(topic, payload)  # data: is the topic's payload
        assert time.monotonic() - started < 5, "the dashboard should move within seconds"
        assert json.loads(state_file(tmp_path, proc.ws_port, sse_port).read_text())["demo_entity"] == "demo-entity"
    finally:
        _stop(proc)


def test_rtstream_dev_no_demo_publishes_nothing(tmp_path):
    import redis

    from rtstream import keys
    from rtstream.settings import Settings

    proc, sse_port, lines = _dev(tmp_path, "--no-demo")
    try:
        assert not any(line.startswith("Demo: ") for line in lines), lines
        redis_url = json.loads(state_file(tmp_path, proc.ws_port, sse_port).read_text())["redis_url"]
        time.sleep(2.5)  # the feed would have published 2 events by now
        client = redis.Redis.from_url(redis_url)
        assert client.xlen(keys.history("demo-entity", Settings()).name) == 0
        client.close()
    finally:
        _stop(proc)
