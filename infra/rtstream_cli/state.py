"""Where each running `rtstream dev` writes its endpoints, and how other commands
(`rtstream token`, `publish`, `demo`, tests) find one.

One state file per running instance, so two instances never share or take over
each other's state:

- ``--state-dir D``: ``D/dev.json`` (a second instance naming a directory whose
  instance is alive is refused);
- otherwise ``<base>/instances/dev-<ws_port>-<sse_port>.json`` (keyed by the
  instance's ports, which no two live instances share), where ``<base>`` is
  ``$RTSTREAM_STATE_DIR`` or ``~/.cache/rtstream`` (also the home of the
  machine's dev signing key).

Keys: ``ws_url``, ``sse_url``, ``dashboard_url``, ``management_url``,
``management_endpoint`` (boto3's ``endpoint_url``), ``redis_url``,
``aws_endpoint``, ``event_bus``, ``connections_table``, ``subscriptions_table``,
``jwt_secret`` (the dev signing key, so ``rtstream token`` matches the running
system), ``log_dir``, ``demo_entity``, ``metrics_url``, ``ws_port``,
``sse_port``, ``started_at`` and ``pid``. A file whose ``pid`` is not alive is
stale: ignored, and removed when found.

Every client command finds its instance the same way (:func:`find_instance`):
``--state-dir``, else ``--dev-port`` (either port of the instance), else the only
live instance, else, with several live, the one started first, saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "dev.json"


class StateInUse(RuntimeError):
    """Another live `rtstream dev` owns this state file."""


class NoSuchInstance(LookupError):
    """An explicitly named instance (``--state-dir``/``--dev-port``) is not running."""


@dataclass(frozen=True)
class Instance:
    path: Path
    values: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def describe(self) -> str:
        return f"{self.values.get('ws_url')} (pid {self.values.get('pid')}, state {self.path})"


def state_base() -> Path:
    from rtstream.settings import Settings

    return Path(Settings.from_env().runtime.state_dir or os.path.join(Path.home(), ".cache", "rtstream"))


def dev_secret_path() -> Path:
    return state_base() / "dev-secret"


def dev_jwt_secret() -> str:
    """The machine's dev signing key: generated once into the state directory, so
    `rtstream token` and `rtstream dev` agree without configuration."""
    path = dev_secret_path()
    try:
        secret = path.read_text().strip()
        if secret:
            return secret
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    return secret


def instances_dir() -> Path:
    return state_base() / "instances"


def instance_state_path(ws_port: int, sse_port: int, state_dir: str | Path | None = None) -> Path:
    if state_dir:
        return Path(state_dir) / STATE_FILE
    return instances_dir() / f"dev-{ws_port}-{sse_port}.json"


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def read_state_file(path: Path) -> dict[str, Any]:
    """The values of a live instance's state file, else {}."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(values, dict) or not _alive(values.get("pid")):
        return {}
    return values


def write_state(values: dict[str, Any], path: Path) -> Path:
    """Write an instance's state; refuses a file a live other process owns."""
    current = read_state_file(path)
    if current and current.get("pid") != values.get("pid"):
        raise StateInUse(f"{path} belongs to the running rtstream dev with pid {current.get('pid')} ({current.get('ws_url')})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**values, "started_at": values.get("started_at") or time.time()}, indent=2))
    tmp.chmod(0o600)  # it holds the dev signing key
    tmp.replace(path)
    return path


def clear_state(path: Path, pid: int | None = None) -> None:
    """Remove ``path`` if it is ours (``pid``, default this process)."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if values.get("pid") == (pid or os.getpid()):
        try:
            path.unlink()
        except OSError:
            pass


def live_instances() -> list[Instance]:
    """Every live instance under the state base, oldest first (stale files removed)."""
    found: list[Instance] = []
    for path in sorted(instances_dir().glob("dev-*.json")):
        values = read_state_file(path)
        if values:
            found.append(Instance(path, values))
        else:
            try:
                if path.exists() and not _alive(json.loads(path.read_text()).get("pid")):
                    path.unlink()
            except (OSError, ValueError, AttributeError):
                pass
    found.sort(key=lambda i: (float(i.get("started_at") or 0), str(i.path)))
    return found


def _ports(instance: Instance) -> set[int]:
    return {int(p) for p in (instance.get("ws_port"), instance.get("sse_port")) if p}


def find_instance(state_dir: str | Path | None = None, dev_port: int | None = None, *, announce: Any = None) -> Instance | None:
    """The dev instance a client command talks to (see the module doc), or None
    when none is running. ``announce`` (a callable taking one line) is told
    which one was used and why."""
    say = announce or (lambda line: None)
    if state_dir:
        path = Path(state_dir) / STATE_FILE
        values = read_state_file(path)
        if not values:
            raise NoSuchInstance(f"no running rtstream dev has its state in {state_dir}")
        instance = Instance(path, values)
        say(f"using the dev system at {instance.describe()}")
        return instance
    live = live_instances()
    if dev_port:
        matching = [i for i in live if dev_port in _ports(i)]
        if not matching:
            raise NoSuchInstance(f"no running rtstream dev listens on port {dev_port}")
        say(f"using the dev system at {matching[0].describe()}")
        return matching[0]
    if not live:
        return None
    if len(live) > 1:
        others = ", ".join(str(i.get("ws_url")) for i in live[1:])
        say(f"{len(live)} dev systems are running; using the one started first, {live[0].describe()} "
            f"(others: {others}; choose with --dev-port or --state-dir)")
    else:
        say(f"using the dev system at {live[0].describe()}")
    return live[0]


def read_state() -> dict[str, Any]:
    """The values of the instance :func:`find_instance` picks, {} when none runs."""
    instance = find_instance()
    return dict(instance.values) if instance is not None else {}


# ---- the client commands' shared options ---------------------------------------


def add_instance_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("which running `rtstream dev`")
    group.add_argument("--state-dir", default=None, help="the instance started with this --state-dir")
    group.add_argument("--dev-port", type=int, default=None, help="the instance listening on this port (WebSocket or SSE)")


def instance_from_args(args: argparse.Namespace, command: str) -> Instance | None:
    """The instance for a client command; the line saying which goes to stderr
    (stdout stays the command's result). Raises NoSuchInstance."""
    return find_instance(getattr(args, "state_dir", None), getattr(args, "dev_port", None),
                         announce=lambda line: print(f"rtstream {command}: {line}", file=sys.stderr, flush=True))


class Target:
    """Resolves each setting of a client command the same way in every command:
    the command's own flag; else the environment variable (unless an instance was
    named with --state-dir/--dev-port); else the dev instance's value (looked up
    once, only when needed, and announced on stderr); else ``default``."""

    def __init__(self, args: argparse.Namespace, command: str):
        self.args = args
        self.command = command
        self.named = bool(getattr(args, "state_dir", None) or getattr(args, "dev_port", None))
        self._instance: Instance | None = None
        self._looked_up = False

    @property
    def instance(self) -> Instance | None:
        if not self._looked_up:
            self._looked_up = True
            self._instance = instance_from_args(self.args, self.command)
        return self._instance

    def value(self, key: str, *, flag: Any = None, env: str | None = None, default: Any = None) -> Any:
        if flag:
            return flag
        if env and not self.named and os.environ.get(env):
            return os.environ[env]
        if self.instance is not None and self.instance.get(key):
            return self.instance.get(key)
        return default
