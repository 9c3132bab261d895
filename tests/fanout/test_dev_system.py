"""`rtstream dev`'s own worker (LocalSystem(with_worker=True)) and `rtstream publish`
finding the running system through its state file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import websockets

from rtstream.auth import issue_dev_token

SECRET = "fanout-dev-secret-0123456789abcdef0123456789"


async def test_rtstream_publish_reaches_a_client_through_the_dev_systems_worker(tmp_path, monkeypatch):
    from rtstream_cli.dev import LocalSystem

    monkeypatch.setenv("RTSTREAM_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "logs").mkdir()
    monkeypatch.delenv("REDIS_URL", raising=False)
    system = LocalSystem(ws_port=0, jwt_secret=SECRET, with_worker=True, with_sse=False, with_eventbridge=True,
                         write_state_file=True, log_dir=tmp_path / "logs")
    await system.start()
    try:
        token = issue_dev_token(SECRET, user_id="u1", entity_id="ent-dev")
        async with websockets.connect(f"{system.ws_url}?token={token}") as ws:
            await ws.send(json.dumps({"type": "subscribe", "topic": "*"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "subscribed", "topic": "*", "cursor": "0-0"}
            env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "AWS_ENDPOINT_URL")}
            env["RTSTREAM_STATE_DIR"] = str(tmp_path / "state")
            data = json.dumps({"transactionId": "t1", "amount": 3, "merchant": "Cafe"})
            results = []
            for via in ("redis", "eventbridge"):
                proc = await asyncio.to_thread(
                    subprocess.run, [sys.executable, "-m", "rtstream_cli.main", "publish", "transactions.new", "--entity", "ent-dev",
                                     "--data", data, "--source", f"cli-{via}", "--via", via],
                    capture_output=True, text=True, env=env, timeout=60)
                assert proc.returncode == 0, proc.stderr
                results.append(proc.stdout.strip())
            frames = []
            deadline = time.monotonic() + 15
            while len(frames) < 2 and time.monotonic() < deadline:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic())))
            assert sorted(f["source"] for f in frames) == ["cli-eventbridge", "cli-redis"]
            assert results[0] in [f["id"] for f in frames]  # via redis the printed id is the event id
    finally:
        await system.stop()
