"""`rtstream publish --idempotency-key` against a real Redis: a repeat prints the
first event's id and records nothing; a bad key is a coded error (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from rtstream import keys
from rtstream.settings import Settings

TX = json.dumps({"transactionId": "t1", "amount": 4.2, "merchant": "Cafe"})


def rtstream(*args: str, redis_url: str, tmp_path, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTSTREAM_") and k != "AWS_ENDPOINT_URL"}
    env.update({"REDIS_URL": redis_url, "RTSTREAM_STATE_DIR": str(tmp_path), **env_extra})
    return subprocess.run([sys.executable, "-m", "rtstream_cli.main", *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_idempotency_key_publishes_once_and_returns_the_first_id(redis_url, redis_client, tmp_path):
    entity = f"cli-{uuid.uuid4().hex[:8]}"
    publish = ("publish", "transactions.new", "--entity", entity, "--data", TX)
    first = rtstream(*publish, "--idempotency-key", "invoice-42", redis_url=redis_url, tmp_path=tmp_path)
    again = rtstream(*publish, "--idempotency-key", "invoice-42", redis_url=redis_url, tmp_path=tmp_path)
    assert first.returncode == 0 and again.returncode == 0, (first.stderr, again.stderr)
    assert first.stdout.strip() == again.stdout.strip()
    plain_a = rtstream(*publish, redis_url=redis_url, tmp_path=tmp_path)
    plain_b = rtstream(*publish, redis_url=redis_url, tmp_path=tmp_path)
    # identical publishes without a key are two events
    assert len({first.stdout, plain_a.stdout, plain_b.stdout}) == 3
    assert redis_client.xlen(keys.history(entity, Settings()).name) == 3
    # the window is a setting: RTSTREAM_IDEMPOTENCY_WINDOW_SECONDS
    short = rtstream(*publish, "--idempotency-key", "invoice-43", redis_url=redis_url, tmp_path=tmp_path,
                     RTSTREAM_IDEMPOTENCY_WINDOW_SECONDS="7")
    assert short.returncode == 0
    assert 0 < redis_client.ttl(keys.idempotency(entity, "invoice-43", Settings()).name) <= 7


def test_cli_bad_idempotency_key_is_a_coded_error(redis_url, redis_client, tmp_path):
    entity = f"cli-{uuid.uuid4().hex[:8]}"
    bad = rtstream("publish", "transactions.new", "--entity", entity, "--data", TX, "--idempotency-key", "has space",
                   redis_url=redis_url, tmp_path=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: invalid_message: idempotency key")
    assert not redis_client.exists(keys.history(entity, Settings()).name)
