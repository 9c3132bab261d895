"""Where a running `rtstream dev` writes its endpoints, so other commands
(`rtstream publish`, `rtstream demo`, tests) find the local system without flags.

File: ``$RTSTREAM_STATE_DIR/dev.json`` (default ``~/.cache/rtstream/dev.json``) with
keys ``ws_url``, ``sse_url``, ``dashboard_url``, ``management_url``,
``redis_url``, ``aws_endpoint``, ``event_bus``, ``connections_table``,
``subscriptions_table``, ``pid``; also ``management_endpoint`` (boto3's
``endpoint_url``), ``jwt_secret`` (the dev signing key, so ``rtstream token``
matches the running system) and ``log_dir`` (the children's logs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def state_path() -> Path:
    base = os.environ.get("RTSTREAM_STATE_DIR") or os.path.join(Path.home(), ".cache", "rtstream")
    return Path(base) / "dev.json"


def write_state(values: dict[str, Any]) -> Path:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(values, indent=2))
    tmp.chmod(0o600)  # it holds the dev signing key
    tmp.replace(path)
    return path


def read_state() -> dict[str, Any]:
    """The running dev system's endpoints, or {} when none is running."""
    path = state_path()
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    pid = values.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except OSError:
            return {}
    return values


def clear_state() -> None:
    try:
        state_path().unlink()
    except OSError:
        pass
