"""Two `rtstream dev` instances side by side: each keeps its own state, a third
never takes over a live one's, and `token`/`publish` reach the one they name (and
say which they used)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import jwt
import redis
import websockets
from helpers import free_port  # noqa: E402

from rtstream import keys
from rtstream.settings import Settings

from test_dev_command import _stop, cli_env, read_lines_until, rtstream, state_file

SECRET_A = "instance-a-secret-0123456789abcdef-0123"
SECRET_B = "instance-b-secret-0123456789abcdef-0123"
TX = json.dumps({"transactionId": "t1", "amount": 4.2, "merchant": "Cafe"})


def start_dev(state_base, ws_port, sse_port, secret, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "rtstream_cli.main", "dev", "--no-demo", "--ws-port", str(ws_port),
                             "--sse-port", str(sse_port), "--jwt-secret", secret, *extra],
                            env=cli_env(state_base), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hint = read_lines_until(proc, "Hint: ", timeout=60)[-1]
    assert f"--dev-port {ws_port}" in hint, hint  # the hint names this instance
    return proc


async def ping(ws_url: str, token: str) -> str:
    try:
        async with websockets.connect(f"{ws_url}?token={token}", open_timeout=10, ping_interval=None) as ws:
            await ws.send('{"type":"ping"}')
            return json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]
    except websockets.InvalidStatus as exc:
        return f"http {exc.response.status_code}"


def history_ids(redis_url: str, entity: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [i.decode() for i, _ in client.xrange(keys.history(entity, Settings()).name)]
    finally:
        client.close()


def test_two_dev_instances_side_by_side(tmp_path):
    base = tmp_path / "base"
    b_dir = tmp_path / "b-state"
    a_ports = (free_port(), free_port())
    b_ports = (free_port(), free_port())
    a = start_dev(base, *a_ports, SECRET_A)
    b = None
    try:
        b = start_dev(base, *b_ports, SECRET_B, "--state-dir", str(b_dir))
        env = cli_env(base)
        a_state = json.loads(state_file(base, *a_ports).read_text())
        b_state = json.loads((b_dir / "dev.json").read_text())
        assert a_state["pid"] == a.pid and b_state["pid"] == b.pid  # each its own, neither taken over
        assert a_state["redis_url"] != b_state["redis_url"]

        # token: the named instance's key, and the line saying which instance on stderr
        tok_a = rtstream("token", "--user", "u1", "--entity", "e1", "--dev-port", str(a_ports[1]), env=env)
        assert tok_a.returncode == 0, tok_a.stderr
        jwt.decode(tok_a.stdout.strip(), SECRET_A, algorithms=["HS256"])
        assert f"ws://127.0.0.1:{a_ports[0]}/dev" in tok_a.stderr and str(a.pid) in tok_a.stderr
        tok_b = rtstream("token", "--user", "u1", "--entity", "e1", "--state-dir", str(b_dir), env=env)
        assert tok_b.returncode == 0, tok_b.stderr
        jwt.decode(tok_b.stdout.strip(), SECRET_B, algorithms=["HS256"])
        assert f"ws://127.0.0.1:{b_ports[0]}/dev" in tok_b.stderr
        assert asyncio.run(ping(a_state["ws_url"], tok_a.stdout.strip())) == "pong"
        assert asyncio.run(ping(b_state["ws_url"], tok_b.stdout.strip())) == "pong"
        assert asyncio.run(ping(a_state["ws_url"], tok_b.stdout.strip())) == "http 403"  # the authorizer's Deny

        # publish: into the named instance's Redis only
        pub_b = rtstream("publish", "transactions.new", "--entity", "acme", "--data", TX, "--state-dir", str(b_dir), env=env)
        assert pub_b.returncode == 0, pub_b.stderr
        assert history_ids(b_state["redis_url"], "acme") == [pub_b.stdout.strip()]
        assert history_ids(a_state["redis_url"], "acme") == []
        pub_a = rtstream("publish", "transactions.new", "--entity", "acme", "--data", TX, "--dev-port", str(a_ports[0]), env=env)
        assert pub_a.returncode == 0, pub_a.stderr
        assert history_ids(a_state["redis_url"], "acme") == [pub_a.stdout.strip()]
        assert f"ws://127.0.0.1:{a_ports[0]}/dev" in pub_a.stderr

        # nothing named, two live under the base: a deterministic pick, said so
        # (b keeps its state elsewhere, so only a is under the base)
        only = rtstream("token", "--user", "u1", "--entity", "e1", env=env)
        jwt.decode(only.stdout.strip(), SECRET_A, algorithms=["HS256"])
        assert f"ws://127.0.0.1:{a_ports[0]}/dev" in only.stderr

        # a port nobody listens on: a clear refusal, not some other system
        missing = rtstream("publish", "transactions.new", "--entity", "acme", "--data", TX, "--dev-port", "1", env=env)
        assert missing.returncode == 1 and "no running rtstream dev listens on port 1" in missing.stderr

        # a third instance naming b's state directory is refused and b keeps it
        third = rtstream("dev", "--no-demo", "--ws-port", str(free_port()), "--sse-port", str(free_port()), "--state-dir", str(b_dir),
                         env=env, timeout=60)
        assert third.returncode == 2 and "belongs to the running rtstream dev" in third.stderr, third.stderr
        assert json.loads((b_dir / "dev.json").read_text())["pid"] == b.pid
    finally:
        _stop(a)
        if b is not None:
            _stop(b)
    assert not state_file(base, *a_ports).exists() and not (b_dir / "dev.json").exists()


def test_several_live_instances_pick_the_first_started_and_say_so(tmp_path):
    base = tmp_path / "base"
    first_ports = (free_port(), free_port())
    first = start_dev(base, *first_ports, SECRET_A)
    second = None
    try:
        second = start_dev(base, free_port(), free_port(), SECRET_B)
        env = cli_env(base)
        for _ in range(2):  # deterministic
            tok = rtstream("token", "--user", "u1", "--entity", "e1", env=env)
            assert tok.returncode == 0, tok.stderr
            jwt.decode(tok.stdout.strip(), SECRET_A, algorithms=["HS256"])
            assert "2 dev systems are running" in tok.stderr and f"ws://127.0.0.1:{first_ports[0]}/dev" in tok.stderr
            assert "--dev-port" in tok.stderr
    finally:
        _stop(first)
        if second is not None:
            _stop(second)
