"""`rtstream dev` supervises its children: a killed fan-out worker or SSE server
is restarted (SSE on the same port) and the restart is printed; a child that
keeps crashing stops the system with its last log lines. Real processes, real
signals."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import websockets
from helpers import free_port  # noqa: E402

from rtstream.auth import issue_dev_token
from rtstream.adapters.publishing import publish
from rtstream_cli.dev import CrashWindow, LocalSystem, _http_ok

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc and POSIX signals")


def test_crash_window_counts_only_the_recent_crashes():
    window = CrashWindow(60.0)
    assert [window.record(t) for t in (0.0, 10.0, 59.0)] == [1, 2, 3]
    assert window.record(61.0) == 3  # the crash at 0 s left the window
    assert window.record(200.0) == 1


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


def _system(tmp_path: Path, notices: list[str], **options) -> LocalSystem:
    return LocalSystem(ws_port=0, sse_port=0, write_state_file=False, with_eventbridge=False, housekeeping_interval=0,
                       log_dir=tmp_path, notify=notices.append,
                       # a restarted worker takes the dead one's partitions when its lease lapses
                       settings_overrides={"RTSTREAM_FANOUT_LEASE_MS": "1500"}, **options)


async def test_killed_worker_and_sse_server_are_restarted_and_printed(tmp_path):
    notices: list[str] = []
    system = _system(tmp_path, notices)
    await system.start()
    try:
        killed = system.worker.proc.pid
        os.kill(killed, signal.SIGKILL)
        await _until(lambda: any("the fan-out worker is running again" in n for n in notices), 20, f"worker restart; {notices}")
        assert any(n.startswith("rtstream dev: the fan-out worker was killed by SIGKILL; restarting in ") for n in notices), notices
        assert system.worker.running and system.worker.proc.pid != killed and system.worker.starts == 2
        assert "--- rtstream dev: the fan-out worker was killed by SIGKILL; restarting ---" in system.worker.log_tail(200)

        # the restarted worker delivers
        token = issue_dev_token(system.jwt_secret, user_id="u1", entity_id="ent-sup")
        async with websockets.connect(f"{system.ws_url}?token={token}", open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "subscribe", "topic": "*"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "subscribed"
            import redis

            client = redis.Redis.from_url(system.redis_url)
            event_id = publish("ent-sup", "transactions.new", {"transactionId": "t1", "amount": 1, "merchant": "M"},
                               source="tests", client=client, settings=system.settings)
            client.close()
            frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
            assert frame["type"] == "event" and frame["id"] == event_id

        port, killed = system.sse_port, system.sse.proc.pid
        os.kill(killed, signal.SIGKILL)
        await _until(lambda: any("the SSE server is running again" in n for n in notices), 30, f"SSE restart; {notices}")
        assert system.sse.proc.pid != killed and system.sse_port == port
        assert await _http_ok("127.0.0.1", port, "/healthz")  # the same port: EventSource reconnects there
        assert not system.failed.is_set() and system.failure is None
    finally:
        await system.stop()
    assert system.worker is None and system.sse is None  # stop() is not mistaken for a crash


async def test_a_child_that_keeps_crashing_fails_the_system_with_its_last_lines(tmp_path):
    notices: list[str] = []
    system = _system(tmp_path, notices, with_sse=False, max_crashes=3)
    await system.start()
    try:
        # from now on every start of the worker fails: a bad environment
        system.worker.env = {**system.worker.env, "RTSTREAM_MANAGEMENT_ENDPOINT": ""}
        os.kill(system.worker.proc.pid, signal.SIGKILL)
        await asyncio.wait_for(system.failed.wait(), 30)
        failure = system.failure
        assert failure.name == "fan-out worker" and failure.crashes == 3 and failure.returncode == 2
        assert "RTSTREAM_MANAGEMENT_ENDPOINT is required" in failure.log_tail
        assert sum("restarting in" in n for n in notices) == 2, notices
        assert "giving up" in notices[-1] and "3 crashes within 60s" in notices[-1]
        assert not system.worker.running  # not restarted after giving up
    finally:
        await system.stop()


# ---- `rtstream dev` as a user runs it --------------------------------------------------

def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _wait_line(lines: queue.Queue, seen: list[str], needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no line with {needle!r} within {timeout}s; got {seen}")


def _child_pid(parent: int, module: str) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == parent and module.encode() in cmdline:
            return int(entry.name)
    raise AssertionError(f"no {module} child of {parent}")


def test_rtstream_dev_restarts_killed_children_and_gives_up_on_a_crash_loop(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RTSTREAM_JWT_SECRET", "REDIS_URL", "AWS_ENDPOINT_URL")}
    env = {k: v for k, v in env.items() if k != "RTSTREAM_FANOUT_LEASE_MS"}  # rtstream dev's own lease (3 s)
    env.update({"RTSTREAM_STATE_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"})
    sse_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rtstream_cli.main", "dev", "--no-demo", "--ws-port", str(free_port()),
                             "--sse-port", str(sse_port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: queue.Queue = queue.Queue()
    err: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, out), daemon=True).start()
    threading.Thread(target=_pump, args=(proc.stderr, err), daemon=True).start()
    seen: list[str] = []
    blocker = None
    try:
        _wait_line(out, [], "Hint: ", 30)
        os.kill(_child_pid(proc.pid, "rtstream_fanout"), signal.SIGKILL)
        _wait_line(err, seen, "the fan-out worker was killed by SIGKILL; restarting in", 10)
        _wait_line(err, seen, "the fan-out worker is running again", 20)

        # SSE killed, and its port taken before the restart: every restart fails
        sse_pid = _child_pid(proc.pid, "rtstream_cli.dev_sse")
        os.kill(sse_pid, signal.SIGKILL)
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the killed server's TIME_WAITs
        # the port frees when the killed server's last thread has exited (ms); the
        # supervisor's restart needs its backoff plus a Python start (about a second)
        deadline = time.monotonic() + 1.0
        while True:
            try:
                blocker.bind(("127.0.0.1", sse_port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        blocker.listen()
        _wait_line(err, seen, "the SSE server was killed by SIGKILL; restarting in", 10)
        _wait_line(err, seen, "giving up", 45)
        assert proc.wait(timeout=20) == 1
        rest = []
        while (line := err.get(timeout=5)) is not None:
            rest.append(line)
        text = "\n".join(rest)
        assert re.search(r"rtstream dev: stopped everything: the SSE server exited with \d+: 5 crashes within 60s", text), text
        assert "address already in use" in text, text  # the child's own last lines
        assert not (tmp_path / "dev.json").exists()
    finally:
        if blocker is not None:
            blocker.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_rtstream_dev_with_a_child_that_cannot_start_exits_1_with_its_last_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RTSTREAM_JWT_SECRET", "REDIS_URL", "AWS_ENDPOINT_URL")}
    env.update({"RTSTREAM_STATE_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1",
                "RTSTREAM_SSE_READ_BLOCK_MS": "soon"})  # a bad environment for the SSE server only
    result = subprocess.run([sys.executable, "-m", "rtstream_cli.main", "dev", "--no-demo", "--ws-port", str(free_port()),
                             "--sse-port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("rtstream dev: could not start: the SSE server exited at start:"), lines
    assert any(line.startswith("  | ") and "RTSTREAM_SSE_READ_BLOCK_MS must be an integer" in line for line in lines), lines
    assert not (tmp_path / "dev.json").exists()
