"""The fan-out worker and SSE server as local processes against a deployed stack.

On AWS they are ECS tasks (the template's nested stacks); against an emulator
they run here, configured only from the stack (tables, management API,
endpoint) through the same ``Settings.from_env`` names the containers use.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .stack import DeployedStack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


@dataclass
class LocalServices:
    sse_url: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def check(self) -> None:
        """Raise if a service died (its log tail in the message)."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, chars: int = 4000) -> str:
        try:
            return self.logs[name].read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def start_services(deployed: DeployedStack, redis_url: str, jwt_secret: str, log_dir: str | Path,
                   sse_port: int | None = None, extra_env: dict[str, str] | None = None,
                   startup_timeout: float = 30.0) -> LocalServices:
    """Start ``python -m rtstream_fanout`` and ``python -m rtstream_sse`` for ``deployed``."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    sse_port = sse_port or _free_port()
    env = {**os.environ, **deployed.service_env(redis_url, jwt_secret),
           "RTSTREAM_SSE_HOST": "127.0.0.1", "RTSTREAM_SSE_PORT": str(sse_port), **(extra_env or {})}
    services = LocalServices(sse_url=f"http://127.0.0.1:{sse_port}/events")
    try:
        for name, module in (("fanout", "rtstream_fanout"), ("sse", "rtstream_sse")):
            path = log_dir / f"{name}.log"
            with open(path, "wb") as out:
                services.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            services.logs[name] = path
        _wait_for_port(sse_port, services.processes["sse"], startup_timeout)
        time.sleep(0.2)
        services.check()
    except BaseException:
        services.stop()
        raise
    return services
