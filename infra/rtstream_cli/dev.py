"""`rtstream dev`: the whole system on a laptop, no AWS account, no Docker.

:class:`LocalSystem` composes AWS (in-process moto, or a LocalStack-compatible
endpoint), Redis, the gateway emulator running the template's handlers, and the
container entry points as child processes (`python -m rtstream_fanout`, and
`python -m rtstream_cli.dev_sse`: the production SSE app wrapped with the
dashboard, its dev token and federated /metrics) configured only through their
environment. Tests use it as-is.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtstream.settings import Settings
from rtstream_gateway import urls

from .state import (  # noqa: F401  (dev_secret_path: re-exported)
    StateInUse, clear_state, dev_jwt_secret, dev_secret_path, instance_state_path, read_state, read_state_file, write_state,
)
from .cloudformation import TEMPLATE_PATH

if TYPE_CHECKING:
    from .eventbridge_local import EventBridgeDrain

DEFAULT_WS_PORT = 3001
DEFAULT_SSE_PORT = 3002
DEV_ENTITY = "demo-entity"
SSE_READY_TIMEOUT = 20.0
WORKER_READY_TIMEOUT = 10.0
CHILD_STOP_TIMEOUT = 5.0
HOUSEKEEPING_STOP_TIMEOUT = 10.0
# Supervision: a crashed child is restarted after a capped, jittered backoff;
# MAX_CRASHES within CRASH_WINDOW_SECONDS means it cannot run here: give up.
MAX_CRASHES = 5
CRASH_WINDOW_SECONDS = 60.0
RESTART_BACKOFF_BASE = 0.25
RESTART_BACKOFF_CAP = 5.0
RESTART_BACKOFF_FLOOR = 0.1
LOG_TAIL_LINES = 20
DEV_FANOUT_LEASE_MS = "3000"
CHILD_LABELS = {"worker": "fan-out worker", "sse": "SSE server"}


class PortInUse(RuntimeError):
    def __init__(self, host: str, port: int, what: str):
        super().__init__(f"{what} port {port} on {host} is already in use; stop what uses it or pick another with --{what.lower()}-port")
        self.port = port


def resolve_jwt_secret(explicit: str | None = None) -> str:
    """--jwt-secret, else RTSTREAM_JWT_SECRET, else the running dev system's, else the machine's dev secret."""
    return explicit or Settings.from_env().jwt_secret or read_state().get("jwt_secret") or dev_jwt_secret()


def check_port_free(host: str, port: int, what: str) -> None:
    if not port:
        return
    with socket.socket() as s:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUse(host, port, what) from None
            raise


class _Child:
    """A child process of the local system, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0  # 1 + restarts
        self.label = CHILD_LABELS.get(name, name)  # what messages call it
        self.supervisor: asyncio.Task | None = None

    async def start(self) -> None:
        from .localredis import parent_death_signal

        self.starts += 1
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=parent_death_signal)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def mark_log(self, line: str) -> None:
        """A line of ours in the child's log (restarts), so its tail reads in order."""
        try:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(f"--- rtstream dev: {line} ---\n")
        except OSError:
            pass

    async def stop(self) -> None:
        # the supervisor first: an exit we cause is not a crash to restart
        supervisor, self.supervisor = self.supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), CHILD_STOP_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), CHILD_STOP_TIMEOUT)


class LocalSystem:
    """The complete local system. ``await start()`` / ``await stop()``."""

    def __init__(self, *, ws_port: int = 0, sse_port: int = 0, host: str = "127.0.0.1",
                 aws_endpoint: str | None = None, redis_url: str | None = None, jwt_secret: str | None = None,
                 settings_overrides: dict[str, str] | None = None, with_worker: bool = True, with_sse: bool = True,
                 with_eventbridge: bool = True, gateway_options: dict[str, Any] | None = None,
                 template_path: str | Path = TEMPLATE_PATH, region: str | None = None, log_dir: str | Path | None = None,
                 write_state_file: bool = True, keep_logs: bool = False, housekeeping_interval: float | None = None,
                 supervise: bool = True, max_crashes: int = MAX_CRASHES, crash_window_seconds: float = CRASH_WINDOW_SECONDS,
                 notify: Callable[[str], None] | None = None, state_dir: str | Path | None = None):
        self.host = host
        self.ws_port = ws_port
        self.sse_port = sse_port
        self.template_path = Path(template_path)
        process = Settings.from_env()  # this process's environment (the children's is built in start())
        self.region = region or process.runtime.aws_region or "us-east-1"
        self.jwt_secret = jwt_secret or process.jwt_secret or dev_jwt_secret()
        self.settings_overrides = dict(settings_overrides or {})
        self.with_worker = with_worker
        self.with_sse = with_sse
        self.with_eventbridge = with_eventbridge
        self.gateway_options = dict(gateway_options or {})
        # children's logs; a directory made here is removed on stop unless keep_logs
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="rtstream-dev-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._remove_log_dir = not log_dir and not keep_logs
        self.write_state_file = write_state_file
        # this instance's own state file (rtstream_cli.state): --state-dir, else keyed by its ports
        self.state_dir = Path(state_dir) if state_dir else None
        self.state_path: Path | None = None
        # the dashboard's dev-token entity (the `rtstream dev` demo feed publishes there)
        self.dev_entity = process.runtime.dev_entity  # RTSTREAM_DEV_ENTITY, default DEV_ENTITY
        # seconds between housekeeping runs; None = min(60, presence TTL), 0 = never
        self.housekeeping_interval = housekeeping_interval
        self.housekeeping_report: Any = None  # the latest rtstream.hygiene.HousekeepingReport
        self._housekeeping_task: asyncio.Task | None = None
        self._housekeeping_run: _TrackedRun | None = None
        self._housekeeping_runtime: Any = None
        self._report_server: Any = None  # rtstream.adapters.prometheus.MetricsEndpoint
        self.worker_metrics_port = 0

        from .localaws import LocalAws
        from .localredis import LocalRedis

        self.aws = LocalAws(aws_endpoint, region=self.region)
        self.redis = LocalRedis(redis_url, log_dir=self.log_dir)
        self.gateway = None
        self.stage = ""
        self.worker: _Child | None = None
        self.sse: _Child | None = None
        self.eventbridge: "EventBridgeDrain | None" = None
        self.settings = None
        self.child_env: dict[str, str] = {}
        self.handler_env: dict[str, str] = {}
        self.started = False
        # supervision of the children (worker, SSE server): restart on crash, give up
        # after max_crashes within crash_window_seconds (then `failed` is set)
        if max_crashes < 1 or crash_window_seconds <= 0:
            raise ValueError("max_crashes must be >= 1 and crash_window_seconds > 0")
        self.supervise = supervise
        self.max_crashes = max_crashes
        self.crash_window_seconds = crash_window_seconds
        self.notify = notify or _print_notice
        self.failure: ChildFailed | None = None
        self.failed = asyncio.Event()

    # ---- endpoints
    @property
    def redis_url(self) -> str | None:
        return self.redis.url

    @property
    def aws_endpoint(self) -> str | None:
        return self.aws.endpoint

    @property
    def ws_url(self) -> str:
        return urls.ws_url(self.host, self.ws_port, self.stage)

    @property
    def management_endpoint(self) -> str:
        return urls.management_endpoint(self.host, self.ws_port, self.stage)

    @property
    def management_url(self) -> str:
        return f"{self.management_endpoint}/@connections"

    @property
    def _url_host(self) -> str:
        return urls.connectable_host(self.host)

    @property
    def sse_url(self) -> str:
        return f"http://{self._url_host}:{self.sse_port}/events"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self._url_host}:{self.sse_port}/"

    @property
    def connections_table(self) -> str:
        return self.settings.connections_table

    @property
    def subscriptions_table(self) -> str:
        return self.settings.subscriptions_table

    # ---- lifecycle
    async def start(self) -> "LocalSystem":
        """Everything boots in parallel once Redis is up (it is quick): the AWS
        emulator and the tables, the gateway, and the children. Ports are chosen
        first, so every endpoint is known before anything listens; nothing talks
        to DynamoDB before the first connection, and start() returns only when
        every part is ready."""
        from rtstream.settings import Settings
        from rtstream_gateway.api import load_api

        from .localredis import free_port

        if self.write_state_file and self.state_dir is not None:
            owner = read_state_file(instance_state_path(0, 0, self.state_dir))
            if owner and owner.get("pid") != os.getpid():
                raise StateInUse(f"--state-dir {self.state_dir} belongs to the running rtstream dev with pid "
                                 f"{owner.get('pid')} ({owner.get('ws_url')}); pick another directory")
        check_port_free(self.host, self.ws_port, "WS")
        if self.with_sse:
            check_port_free(self.host, self.sse_port, "SSE")
        try:
            self.ws_port = self.ws_port or free_port(self.host)
            if self.with_sse:
                self.sse_port = self.sse_port or free_port(self.host)
            self.stage = self.gateway_options.get("stage") or load_api(self.template_path, region=self.region).stage
            aws_endpoint = self.aws.plan()
            await self.redis.start()
            base = {
                "RTSTREAM_JWT_SECRET": self.jwt_secret,
                "REDIS_URL": self.redis.url,
                # one worker here: a short lease lets a restarted worker take its
                # partitions back within seconds of a crash (the default, 10 s, is for ECS)
                "RTSTREAM_FANOUT_LEASE_MS": str(Settings.from_env(own=("worker",)).worker.lease_ms or DEV_FANOUT_LEASE_MS),
                **self._gateway_settings(),
                **self.settings_overrides,
            }
            self.settings = Settings.from_env({**base})
            base.setdefault("CONNECTIONS_TABLE", self.settings.connections_table)
            base.setdefault("SUBSCRIPTIONS_TABLE", self.settings.subscriptions_table)
            self.handler_env = {**self.aws.environment(), **base,
                                "RTSTREAM_MANAGEMENT_ENDPOINT": self.management_endpoint}
            metrics_env = await self._start_metrics_endpoints()
            self.child_env = {
                **os.environ,
                **self.handler_env,
                "AWS_ENDPOINT_URL": aws_endpoint,
                "RTSTREAM_SSE_HOST": self.host,
                "RTSTREAM_SSE_PORT": str(self.sse_port),
                "RTSTREAM_PUBLIC_WS_URL": self.ws_url,
                "RTSTREAM_DASHBOARD_DEV_TOKEN": "1",
                "RTSTREAM_DEV_ENTITY": self.dev_entity,
                "PYTHONUNBUFFERED": "1",
                **metrics_env,
            }
            self.settings = Settings.from_env(self.child_env)
            outcomes = await asyncio.gather(self._start_aws(), self._start_gateway_instance(self.ws_port),
                                            self._start_children(), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            if self.with_eventbridge:
                from . import eventbridge_local

                self.eventbridge = await eventbridge_local.start(self)
            if self.worker is not None and not self.worker.running:
                raise RuntimeError(f"the fan-out worker exited at start:\n{self.worker.log_tail()}")
            if self.worker is not None:
                self._supervise(self.worker, self._wait_worker_ready)
            if self.sse is not None:
                self._supervise(self.sse, self._wait_sse_ready)
            self._start_housekeeping()
        except BaseException:
            await self.stop()
            raise
        self.started = True
        if self.write_state_file:
            self.state_path = write_state(self.state(), instance_state_path(self.ws_port, self.sse_port, self.state_dir))
        return self

    async def _start_aws(self) -> None:
        await self.aws.start()
        await asyncio.to_thread(self._create_tables)

    async def _start_children(self) -> None:
        if self.with_worker:
            self.worker = _Child("worker", [sys.executable, "-m", "rtstream_fanout"], self.child_env,
                                 self.log_dir / "worker.log")
            await self.worker.start()
        # the children boot in parallel (each imports its stack)
        await asyncio.gather(self._wait_worker_ready() if self.worker is not None else asyncio.sleep(0),
                             self.start_sse() if self.with_sse else asyncio.sleep(0))

    def state(self) -> dict[str, Any]:
        return {
            "ws_url": self.ws_url,
            "sse_url": self.sse_url if self.sse is not None else None,
            "dashboard_url": self.dashboard_url if self.sse is not None else None,
            "management_url": self.management_url,
            "management_endpoint": self.management_endpoint,
            "redis_url": self.redis_url,
            "aws_endpoint": self.aws_endpoint,
            "event_bus": getattr(self.eventbridge, "event_bus", None),
            "connections_table": self.connections_table,
            "subscriptions_table": self.subscriptions_table,
            "jwt_secret": self.jwt_secret,
            "log_dir": str(self.log_dir),
            "demo_entity": self.dev_entity,
            "metrics_url": f"http://{self._url_host}:{self.sse_port}/metrics" if self.sse is not None else None,
            "ws_port": self.ws_port,
            "sse_port": self.sse_port if self.sse is not None else None,
            "pid": os.getpid(),
        }

    async def stop(self) -> None:
        await self._stop_housekeeping()
        if self.eventbridge is not None:
            drain, self.eventbridge = self.eventbridge, None
            await drain.stop()
        await self.stop_sse()
        if self.worker is not None:
            await self.worker.stop()
            self.worker = None
        await self.stop_gateway()
        if self._report_server is not None:
            server, self._report_server = self._report_server, None
            server.close()
            await server.wait_closed()
        await self.redis.stop()
        await self.aws.stop()
        if self.state_path is not None:
            clear_state(self.state_path)
            self.state_path = None
        self.started = False
        if self._remove_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    async def __aenter__(self) -> "LocalSystem":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # ---- parts that tests take away and bring back, on the same ports
    async def stop_gateway(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()

    async def start_gateway(self) -> None:
        await self._start_gateway_instance(self.ws_port)

    async def stop_sse(self) -> None:
        if self.sse is not None:
            await self.sse.stop()
            self.sse = None

    async def start_sse(self) -> None:
        # the production SSE app wrapped with the dashboard, dev token and federated /metrics
        self.sse = _Child("sse", [sys.executable, "-m", "rtstream_cli.dev_sse"], self.child_env, self.log_dir / "sse.log")
        await self.sse.start()
        await self._wait_sse_ready()
        if self.started:  # brought back by a test: supervised like the first one
            self._supervise(self.sse, self._wait_sse_ready)

    # ---- supervision
    def _supervise(self, child: _Child, ready: Callable[[], Awaitable[None]]) -> None:
        if self.supervise and child.supervisor is None:
            child.supervisor = asyncio.ensure_future(self._keep_running(child, ready))

    async def _keep_running(self, child: _Child, ready: Callable[[], Awaitable[None]]) -> None:
        """Restart ``child`` whenever it exits (it is never meant to while the system
        runs: stop() cancels this first) after a capped, jittered backoff; after
        ``max_crashes`` exits within ``crash_window_seconds``, record the failure
        and set ``failed`` (`rtstream dev` then stops everything and exits non-zero)."""
        from rtstream.backoff import backoff_delay

        crashes = CrashWindow(self.crash_window_seconds)
        while True:
            proc = child.proc
            if proc is None:
                return
            code = await proc.wait()
            recent = crashes.record(time.monotonic())
            how = _describe_exit(code)
            if recent >= self.max_crashes:
                self.failure = ChildFailed(child.label, code, recent, self.crash_window_seconds, child.log_tail(LOG_TAIL_LINES),
                                           child.log_path)
                self.notify(f"rtstream dev: the {child.label} {how}: {recent} crashes within "
                            f"{self.crash_window_seconds:.0f}s; giving up (log: {child.log_path})")
                self.failed.set()
                return
            delay = backoff_delay(recent - 1, base=RESTART_BACKOFF_BASE, cap=RESTART_BACKOFF_CAP, floor=RESTART_BACKOFF_FLOOR)
            self.notify(f"rtstream dev: the {child.label} {how}; restarting in {delay:.1f}s "
                        f"(crash {recent} of {self.max_crashes} allowed within {self.crash_window_seconds:.0f}s; log: {child.log_path})")
            child.mark_log(f"the {child.label} {how}; restarting")
            await asyncio.sleep(delay)
            try:
                await child.start()
                await ready()
            except Exception as exc:  # noqa: BLE001 - exited at start, not ready, Redis down: supervision goes on
                if child.running:  # up but not ready in time: keep watching it
                    self.notify(f"rtstream dev: the restarted {child.label} is not ready yet ({str(exc).splitlines()[0]})")
                continue  # it exited again: the wait above returns at once and counts it
            self.notify(f"rtstream dev: the {child.label} is running again (pid {child.proc.pid})")

    # ---- metrics and housekeeping
    async def _start_metrics_endpoints(self) -> dict[str, str]:
        """The children's part of one ``/metrics``: the worker serves its own on a
        free port, the housekeeping report is served here; the SSE server (the
        dashboard port) fetches both into its ``/metrics``."""
        from rtstream.adapters.prometheus import component_registry, serve_prometheus

        from .localredis import free_port

        env: dict[str, str] = {}
        targets: list[str] = []
        if self.with_worker:
            self.worker_metrics_port = int(self.settings_overrides.get("RTSTREAM_WORKER_METRICS_PORT") or free_port("127.0.0.1"))
            env.update({"RTSTREAM_WORKER_METRICS_PORT": str(self.worker_metrics_port), "RTSTREAM_WORKER_METRICS_HOST": "127.0.0.1"})
            targets.append(f"worker=http://127.0.0.1:{self.worker_metrics_port}/metrics")
        if self._housekeeping_seconds() > 0:
            self._report_server = await serve_prometheus(component_registry(self._housekeeping_families), 0, "127.0.0.1")
            port = self._report_server.sockets[0].getsockname()[1]
            targets.append(f"housekeeping=http://127.0.0.1:{port}/metrics")
        if targets:
            env["RTSTREAM_METRICS_FEDERATE"] = ",".join(targets)
        return env

    def _housekeeping_families(self):
        """The latest housekeeping report's metrics (none before the first run)."""
        from rtstream.adapters.prometheus import housekeeping_families

        report = self.housekeeping_report
        return housekeeping_families(report) if report is not None else ()

    def _housekeeping_seconds(self) -> float:
        if self.housekeeping_interval is not None:
            return max(0.0, float(self.housekeeping_interval))
        from rtstream.hygiene import INTERVAL_SECONDS

        return float(min(INTERVAL_SECONDS, self.settings.presence_ttl_seconds))

    def _start_housekeeping(self) -> None:
        """The real connection count and the stale-state sweep (on AWS a scheduled
        Lambda), every min(60 s, presence TTL) so stale presence is announced offline."""
        interval = self._housekeeping_seconds()
        if interval <= 0:
            return
        from rtstream.adapters.lambda_runtime import LambdaRuntime
        from rtstream.hygiene import run_periodically

        # built exactly as the housekeeping Lambda builds it, from the functions' environment
        runtime = LambdaRuntime(env=self.handler_env)
        housekeeping = runtime.housekeeping()
        self._housekeeping_runtime = runtime
        self._housekeeping_run = _TrackedRun(housekeeping)

        def keep(report: Any) -> None:
            self.housekeeping_report = report

        self._housekeeping_task = asyncio.ensure_future(run_periodically(self._housekeeping_run, interval=interval, on_report=keep))

    async def _stop_housekeeping(self) -> None:
        task, self._housekeeping_task = self._housekeeping_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._housekeeping_run is not None:
            # a run in its thread finishes against live Redis and AWS, not half-stopped ones
            await asyncio.to_thread(self._housekeeping_run.idle.wait, HOUSEKEEPING_STOP_TIMEOUT)
            self._housekeeping_run = None
        runtime, self._housekeeping_runtime = self._housekeeping_runtime, None
        if runtime is not None:
            client = runtime.redis()
            if client is not None:
                client.close()

    # ---- internals
    def _gateway_settings(self) -> dict[str, str]:
        """Limits the handlers and children must agree on with the emulator."""
        names = {"idle_timeout": "RTSTREAM_IDLE_TIMEOUT_SECONDS",
                 "max_connection_seconds": "RTSTREAM_MAX_CONNECTION_SECONDS",
                 "max_frame_bytes": "RTSTREAM_MAX_FRAME_BYTES"}
        # whole seconds/bytes, rounded up: a sub-second test timeout must not become 0 ("no limit")
        return {env: str(max(1, math.ceil(float(self.gateway_options[opt]))))
                for opt, env in names.items() if opt in self.gateway_options}

    def _create_tables(self) -> None:
        from .cloudformation import load_template
        from .template import create_tables

        create_tables(self.aws.client("dynamodb"),
                      {"ConnectionsTable": self.settings.connections_table,
                       "SubscriptionsTable": self.settings.subscriptions_table},
                      load_template(self.template_path))

    async def _start_gateway_instance(self, port: int) -> None:
        from rtstream_gateway import GatewayEmulator

        env = dict(self.handler_env)
        env.pop("RTSTREAM_MANAGEMENT_ENDPOINT", None)  # the emulator points it at itself
        self.gateway = GatewayEmulator(self.template_path, host=self.host, port=port, env=env,
                                       region=self.region, **self.gateway_options)
        try:
            await self.gateway.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(self.host, port, "WS") from None
            raise

    async def _wait_worker_ready(self) -> None:
        """Until the worker's raw-publish subscription exists (``PSUBSCRIBE *:entity:*``),
        a seed-style ``PUBLISH`` would reach nobody; bounded, then a warning."""
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.redis.url)
        try:
            deadline = time.monotonic() + WORKER_READY_TIMEOUT
            while time.monotonic() < deadline:
                if not self.worker.running:
                    raise RuntimeError(f"the fan-out worker exited at start:\n{self.worker.log_tail()}")
                if await client.pubsub_numpat() >= 1:
                    return
                await asyncio.sleep(0.05)
            print(f"warning: the fan-out worker did not subscribe within {WORKER_READY_TIMEOUT:.0f}s "
                  f"(log: {self.worker.log_path})", file=sys.stderr, flush=True)
        finally:
            await client.aclose()

    async def _wait_sse_ready(self) -> None:
        deadline = time.monotonic() + SSE_READY_TIMEOUT
        while time.monotonic() < deadline:
            if not self.sse.running:
                raise RuntimeError(f"the SSE server exited at start:\n{self.sse.log_tail()}")
            if await _http_ok(self._url_host, self.sse_port, "/healthz"):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the SSE server did not answer /healthz within {SSE_READY_TIMEOUT:.0f}s:\n{self.sse.log_tail()}")


class CrashWindow:
    """Exit times of one child within a sliding window."""

    def __init__(self, window_seconds: float):
        self.window_seconds = window_seconds
        self.times: deque[float] = deque()

    def record(self, now: float) -> int:
        """Count a crash at ``now``; returns the crashes within the window ending now."""
        self.times.append(now)
        while self.times and self.times[0] <= now - self.window_seconds:
            self.times.popleft()
        return len(self.times)


class ChildFailed(RuntimeError):
    """A child that kept crashing: supervision gave up on it."""

    def __init__(self, name: str, returncode: int, crashes: int, window_seconds: float, log_tail: str, log_path: Path):
        super().__init__(f"the {name} {_describe_exit(returncode)}: {crashes} crashes within {window_seconds:.0f}s")
        self.name = name
        self.returncode = returncode
        self.crashes = crashes
        self.log_tail = log_tail
        self.log_path = log_path


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


def _print_notice(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _TrackedRun:
    """Housekeeping whose in-flight run (in a worker thread) stop() can wait for."""

    def __init__(self, housekeeping: Any):
        self.housekeeping = housekeeping
        self.idle = threading.Event()
        self.idle.set()

    def run(self) -> Any:
        self.idle.clear()
        try:
            return self.housekeeping.run()
        finally:
            self.idle.set()


async def _http_ok(host: str, port: int, path: str) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 2)
        return line.split(b" ")[1:2] == [b"200"]
    except (OSError, asyncio.TimeoutError, IndexError):
        return False
    finally:
        writer.close()


# ---- `rtstream dev`
def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dev", help="run the whole system locally (no AWS account, no Docker)",
                                   description="Start the local system: gateway emulator, moto (or --aws-endpoint), "
                                               "Redis, fan-out worker, SSE server and dashboard.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--ws-port", type=int, default=DEFAULT_WS_PORT,
                        help=f"WebSocket + management API port (default {DEFAULT_WS_PORT}; 0 = any free port)")
    parser.add_argument("--sse-port", type=int, default=DEFAULT_SSE_PORT,
                        help=f"SSE + dashboard port (default {DEFAULT_SSE_PORT}; 0 = any free port)")
    process = Settings.from_env()
    parser.add_argument("--aws-endpoint", default=process.runtime.aws_endpoint_url or None,
                        help="LocalStack-compatible endpoint (default AWS_ENDPOINT_URL; else an in-process moto server)")
    parser.add_argument("--redis-url", default=process.redis_url if process.runtime.uses_redis else None,
                        help="Redis to use (default REDIS_URL; else a private redis-server, else fakeredis)")
    parser.add_argument("--jwt-secret", default=None,
                        help="HS256 signing key (default RTSTREAM_JWT_SECRET, else this machine's dev key)")
    parser.add_argument("--state-dir", default=None,
                        help="write this instance's state here (default: one file per instance, keyed by its ports, "
                             "under RTSTREAM_STATE_DIR or ~/.cache/rtstream/instances); token/publish/demo take the same option")
    parser.add_argument("--no-demo", action="store_true",
                        help="do not publish the demo feed (1 event/s for the dashboard's demo entity)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not TEMPLATE_PATH.is_file():
        # a wheel carries the packages, not the template and the handlers it names
        print(f"rtstream dev: runs from a clone of the repository (no {TEMPLATE_PATH.name} next to this installation): "
              f"there run ./scripts/dev, or pip install -e '.[local]' and rtstream dev", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    system = LocalSystem(ws_port=args.ws_port, sse_port=args.sse_port, host=args.host, aws_endpoint=args.aws_endpoint,
                         redis_url=args.redis_url, jwt_secret=args.jwt_secret, keep_logs=True,
                         state_dir=getattr(args, "state_dir", None))
    # The in-process handlers log JSON lines and metrics to stdout, as on Lambda:
    # they go to a log file, and the console keeps the endpoint lines.
    console = sys.stdout
    sys.stdout = open(system.log_dir / "handlers.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - process-long
    try:
        return await _run_system(system, stopping, console, demo=not getattr(args, "no_demo", False))
    finally:
        handlers_log, sys.stdout = sys.stdout, console
        handlers_log.close()


async def _run_system(system: "LocalSystem", stopping: asyncio.Event, console, *, demo: bool = True) -> int:
    starting = asyncio.ensure_future(system.start())
    waiting = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # Ctrl-C during start: start() cleans up after itself
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await system.stop()
        return 130
    waiting.cancel()
    try:
        starting.result()
    except (PortInUse, StateInUse) as exc:
        print(f"rtstream dev: {exc}", file=sys.stderr, flush=True)
        shutil.rmtree(system.log_dir, ignore_errors=True)  # nothing ran
        return 2
    except Exception as exc:  # one clear line, then the failing child's last lines (if any)
        message = str(exc).splitlines() or [type(exc).__name__]
        print(f"rtstream dev: could not start: {message[0]} (logs: {system.log_dir})", file=sys.stderr, flush=True)
        for line in message[1:]:
            print(f"  | {line}", file=sys.stderr, flush=True)
        return 1
    lines = [f"WebSocket: {system.ws_url}"]
    if system.sse is not None:
        lines += [f"SSE: {system.sse_url}", f"Dashboard: {system.dashboard_url}"]
    lines += [f"Management API: {system.management_url}"]
    if system.sse is not None:
        lines += [f"Metrics: http://{system._url_host}:{system.sse_port}/metrics"]
    feed = None
    if demo:
        from .demo import BackgroundDemo

        # a new user's dashboard (dev token for this entity) moves at once
        feed = BackgroundDemo(system.redis_url, system.settings, system.dev_entity, rate=1.0).start()
        lines += [f"Demo: publishing 1 event/s to entity {system.dev_entity} (--no-demo to turn off)"]
    # with other instances running, the hint names this one (rtstream_cli.state)
    which = f" --dev-port {system.ws_port}" if system.ws_port != DEFAULT_WS_PORT else ""
    lines += [f"Hint: token for the demo entity: rtstream token --user demo-user --entity {system.dev_entity}{which}  (logs: {system.log_dir})"]
    print("\n".join(lines), file=console, flush=True)
    stop_requested = asyncio.ensure_future(stopping.wait())
    child_failed = asyncio.ensure_future(system.failed.wait())
    try:
        await asyncio.wait({stop_requested, child_failed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (stop_requested, child_failed):
            waiter.cancel()
        if feed is not None:
            await asyncio.to_thread(feed.stop)
        await system.stop()
    failure = system.failure
    if failure is None:
        return 0
    print(f"rtstream dev: stopped everything: {failure}. Last lines of {failure.log_path}:", file=sys.stderr, flush=True)
    for line in failure.log_tail.splitlines():
        print(f"  | {line}", file=sys.stderr, flush=True)
    return 1

