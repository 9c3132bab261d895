"""Helpers shared by the test suites (importable as ``helpers``: pytest puts
``tests/`` on the path through its root conftest)."""

from __future__ import annotations

import json
import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


def emf_documents(text: str) -> list[dict]:
    """EMF documents in captured stdout. Handlers print from several threads in the
    emulator, so two documents may share a line: decode them where they start."""
    decoder = json.JSONDecoder()
    docs, start = [], text.find('{"_aws"')
    while start != -1:
        try:
            doc, end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find('{"_aws"', start + 1)
            continue
        docs.append(doc)
        start = text.find('{"_aws"', end)
    return docs


def handler_env(tables: dict[str, str], *, moto_endpoint: str, redis_url: str, jwt_secret: str) -> dict[str, str]:
    """Environment for the real handlers behind a test's gateway emulator."""
    return {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "REDIS_URL": redis_url,
        "RTSTREAM_JWT_SECRET": jwt_secret,
        "CONNECTIONS_TABLE": tables["ConnectionsTable"],
        "SUBSCRIPTIONS_TABLE": tables["SubscriptionsTable"],
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


class LambdaContext:
    """The attributes of AWS's Python Lambda context that Powertools reads
    (no emulated part exists for this plain object)."""

    def __init__(self, name: str):
        import uuid

        self.function_name = f"rtstream-{name}"
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:rtstream-{name}"
        self.memory_limit_in_mb = 256
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/rtstream-{name}"
        self.log_stream_name = "2026/11/25/[$LATEST]0123456789abcdef"
        self._deadline = time.monotonic() + 10

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def handler_file(name: str):
    """The code of the function ``<Name>Function`` (``connect`` -> ConnectFunction,
    ``ping`` -> PingFunction) as the template says: CodeUri + Handler's module."""
    from pathlib import Path

    from rtstream_cli.template import load_template

    template = load_template()
    logical_id = "".join(part.capitalize() for part in name.split("_")) + "Function"
    props = template["Resources"][logical_id]["Properties"]
    module = (props.get("Handler") or template["Globals"]["Function"]["Handler"]).rpartition(".")[0]
    return Path(__file__).resolve().parents[1] / props["CodeUri"] / (module.replace(".", "/") + ".py")


def loop_and_gateway_errors(records) -> list[str]:
    """Errors logged by asyncio (e.g. "Task exception was never retrieved") or by
    the gateway emulator, from pytest's ``caplog.records``."""
    import logging

    return [r.getMessage() for r in records
            if r.levelno >= logging.ERROR and r.name.split(".")[0] in ("asyncio", "rtstream_gateway")]


class RestartableRedis:
    """A redis-server of one test's own, on a fixed port, so it can be killed and
    brought back where every client expects it. ``appendonly``: the append-only
    file with fsync on every write (an acknowledged write survives kill -9);
    otherwise no persistence (a restart starts empty)."""

    def __init__(self, *, appendonly: bool = True):
        import shutil
        import tempfile

        self.binary = shutil.which("redis-server")
        self.appendonly = appendonly
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rtstream-test-redis-")
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import subprocess

        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.proc = subprocess.Popen([self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir,
                                      "--save", "", *persistence], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        import shutil

        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class SerialMotoServer:
    """moto's own WSGI app served one request at a time, for tests and benchmarks
    of concurrent conditional writes: DynamoDB applies each write to an item
    atomically with its condition, while moto's threaded server evaluates a
    ConditionExpression and then writes without a lock, so two simultaneous
    ``ADD n :1 IF n < 10`` both pass at 9 (seen: 11 of 50 admitted against a
    limit of 10). moto's backends are per process, so this serves the same
    tables as the session's threaded server. ``with SerialMotoServer() as s:``
    then ``s.endpoint``."""

    def __enter__(self) -> "SerialMotoServer":
        import threading

        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        # threaded=False: one request at a time (and HTTP/1.0, so no connection holds the server)
        self.server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=False,
                                  request_handler=MotoRequestHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="serial-moto", daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(10)
        self.server.server_close()


def _cluster_port() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free too."""
    import socket

    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalRedisCluster:
    """Three ``redis-server --cluster-enabled yes`` masters on loopback ports, joined
    by ``redis-cli --cluster create`` (no replicas, no persistence); stopped by PID."""

    def __init__(self, masters: int = 3):
        import shutil
        import tempfile

        self.binary = shutil.which("redis-server")
        self.cli = shutil.which("redis-cli")
        self.ports = [_cluster_port() for _ in range(masters)]
        self.dir = tempfile.mkdtemp(prefix="rtstream-test-cluster-")
        self.procs: list = []

    @property
    def url(self) -> str:
        """Any node's URL: the system detects the cluster and finds the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        import os
        import subprocess
        import time

        for port in self.ports:
            node_dir = os.path.join(self.dir, str(port))
            os.makedirs(node_dir)
            self.procs.append(subprocess.Popen(
                [self.binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", node_dir, "--save", "", "--appendonly", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            wait_for_port("127.0.0.1", port)
        subprocess.run([self.cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [subprocess.run([self.cli, "-p", str(p), "cluster", "info"], capture_output=True, text=True, timeout=5).stdout for p in self.ports]
            if all("cluster_state:ok" in s for s in states):
                return
            time.sleep(0.1)
        raise TimeoutError("the local cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        import shutil

        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except Exception:  # noqa: BLE001 - then by force, still by PID
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
