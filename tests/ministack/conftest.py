"""MiniStack, started from .venv-ministack on a free loopback port, with the
SAM stack deployed into it by the same code as `rtstream deploy-local`, and
the fan-out worker and SSE server running against the stack's outputs.

`.ci/setup.d/ministack.sh` creates .venv-ministack; without it these tests
fail (never skip) with the command to run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MINISTACK_PYTHON = ROOT / ".venv-ministack" / "bin" / "python"
JWT_SECRET = "ministack-e2e-secret-0123456789abcdef0123456789"
STAGE = "e2e"

pytestmark = pytest.mark.ministack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/_ministack/health", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


def ministack_python_version() -> str:
    out = subprocess.run([str(MINISTACK_PYTHON), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                         capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def ministack_endpoint():
    if not MINISTACK_PYTHON.exists():
        pytest.fail(f"{MINISTACK_PYTHON} is missing: run `bash .ci/setup.d/ministack.sh` (CI runs it before pytest)")
    with running_ministack(MINISTACK_PYTHON) as endpoint:
        yield endpoint


def ministack_venv(python: str, venv: str) -> Path:
    """``<venv>/bin/python`` with MiniStack on interpreter ``python``, made by
    `.ci/setup.d/ministack.sh` (MINISTACK_PYTHON / MINISTACK_VENV) if missing."""
    interpreter = ROOT / venv / "bin" / "python"
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "setup.d" / "ministack.sh")], capture_output=True, text=True,
                          timeout=1200, env={**os.environ, "MINISTACK_PYTHON": python, "MINISTACK_VENV": venv})
    if proc.returncode != 0 or not interpreter.exists():
        pytest.fail(f"MINISTACK_PYTHON={python} MINISTACK_VENV={venv} bash .ci/setup.d/ministack.sh failed:\n"
                    f"{(proc.stdout + proc.stderr)[-2000:]}")
    return interpreter


@contextlib.contextmanager
def running_ministack(python: Path):
    """MiniStack from the virtualenv of ``python`` on a free loopback port; its endpoint."""
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="rtstream-ministack-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTEST", "RTSTREAM_")) and k != "PYTHONPATH"}
    env.update({
        "GATEWAY_PORT": str(port),
        "BIND_HOST": "127.0.0.1",  # MiniStack binds 0.0.0.0 otherwise
        "LOG_LEVEL": "INFO",
        "TMPDIR": str(workdir),  # its pid file and Lambda work dirs
        "S3_DATA_DIR": str(workdir / "s3"),
        "STATE_DIR": str(workdir / "state"),
    })
    log_path = workdir / "ministack.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(python), "-m", "ministack"], env=env, cwd=workdir,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not _healthy(endpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"MiniStack did not start on {endpoint}:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    try:
        yield endpoint
    finally:
        stopping = time.monotonic()
        # its process group: MiniStack and the Lambda workers it spawned, by PID
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:  # a throwaway emulator: no need to wait for its graceful shutdown
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()
        if os.environ.get("RTSTREAM_KEEP_MINISTACK_LOG"):
            print(f"MiniStack log: {log_path}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"MiniStack stopped and removed in {time.monotonic() - stopping:.1f}s")


@pytest.fixture(scope="session")
def lambda_python_version():
    """MiniStack runs every Lambda with its own interpreter, whatever Runtime says."""
    return ministack_python_version()


def deploy(endpoint: str, redis_url: str, python_version: str | None, template_path=None, stack_name=None,
           verify_wiring: bool = True, invoke_check: bool = True):
    from rtstream_cli.localstack.stack import deploy_stack

    return deploy_stack(
        endpoint=endpoint,
        stack_name=stack_name or f"rtstream-e2e-{uuid.uuid4().hex[:6]}",
        template_path=template_path,
        parameters={"JwtSecret": JWT_SECRET, "RedisUrl": redis_url, "StageName": STAGE},
        python_version=python_version,
        slim=True,  # see the deployed fixture
        verify_wiring=verify_wiring,
        invoke_check=invoke_check,
        timeout=180,
        log=lambda msg: print(f"deploy-local: {msg}"),
    )


E2E_REDIS_DB = 7


@pytest.fixture(scope="module")
def e2e_redis_url(redis_url):
    """The shared test Redis, on a database of its own: what the stack's Lambdas and
    services write there is removed after the module, never touching other tests' data."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + f"/{E2E_REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def e2e_jwt_secret():
    """The JwtSecret the stack is deployed with (tokens for the tests are signed with it)."""
    return JWT_SECRET


@pytest.fixture(scope="module")
def deploy_template(ministack_endpoint, e2e_redis_url, lambda_python_version):
    """``deploy_template(template_path=None, stack_name=None, verify_wiring=True, invoke_check=True)``: deploy-local into this MiniStack."""
    return lambda template_path=None, stack_name=None, verify_wiring=True, invoke_check=True: deploy(
        ministack_endpoint, e2e_redis_url, lambda_python_version, template_path, stack_name, verify_wiring, invoke_check)


@pytest.fixture(scope="session")
def e2e_template_path():
    """template.yaml, or RTSTREAM_E2E_TEMPLATE to run this suite against another copy."""
    from rtstream_cli.cloudformation import TEMPLATE_PATH

    return Path(os.environ.get("RTSTREAM_E2E_TEMPLATE") or TEMPLATE_PATH).resolve()


def run_cli(*argv: str) -> tuple[int, str]:
    """`rtstream deploy-local|destroy-local …` in-process; (exit code, stdout)."""
    import argparse
    import contextlib
    import io

    from rtstream_cli import deploy_local

    parser = argparse.ArgumentParser(prog="rtstream")
    deploy_local.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def deployed(ministack_endpoint, e2e_redis_url, lambda_python_version, e2e_template_path):
    """The stack, deployed and (at the end) removed by the `rtstream` commands themselves."""
    from rtstream_cli.localstack.stack import _stack, client_factory, describe_deployed

    name = f"rtstream-e2e-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    code, out = run_cli("deploy-local", "--endpoint", ministack_endpoint, "--stack", name, "--stage", STAGE,
                        "--template", str(e2e_template_path), "--redis-url", e2e_redis_url, "--jwt-secret", JWT_SECRET,
                        # no --lambda-python: deploy-local finds MiniStack's interpreter (the README's command)
                        # boto3/botocore from the runtime (MiniStack's venv), as on AWS: MiniStack unpacks
                        # the layer for every Lambda worker, and botocore is half of it
                        "--slim")
    assert code == 0, out
    stack = describe_deployed(ministack_endpoint, name)
    # the printed contract: `WebSocket: ws://…`, `Management API: http://…/@connections`, the tables
    assert f"WebSocket: {stack.websocket_url}\n" in out and stack.websocket_url.startswith("ws://")
    assert f"Management API: {stack.management_endpoint}/@connections\n" in out
    assert stack.connections_table in out and stack.subscriptions_table in out
    print(f"deploy-local {name}: {time.monotonic() - started:.1f}s")
    yield stack
    started = time.monotonic()
    code, out = run_cli("destroy-local", "--endpoint", ministack_endpoint, "--stack", name)
    assert (code, out) == (0, f"Removed: {name}\n")
    clients = client_factory(ministack_endpoint)
    assert _stack(clients("cloudformation"), name) is None
    left = set(clients("dynamodb").list_tables()["TableNames"]) & {stack.connections_table, stack.subscriptions_table}
    assert not left, f"destroy-local left tables {left}"
    assert not [f for f in clients("lambda").list_functions()["Functions"] if f["FunctionName"].startswith(name)]
    print(f"destroy-local {name}: {time.monotonic() - started:.1f}s")


@pytest.fixture(scope="module")
def services(deployed, e2e_redis_url, tmp_path_factory):
    from rtstream_cli.localstack.services import start_services

    import redis

    running = start_services(deployed, e2e_redis_url, JWT_SECRET, tmp_path_factory.mktemp("services"))
    # raw PUBLISHes are only seen once the worker's PSUBSCRIBE is active
    client = redis.Redis.from_url(e2e_redis_url)
    deadline = time.monotonic() + 30
    while client.pubsub_numpat() < 1:
        running.check()
        if time.monotonic() > deadline:
            running.stop()
            pytest.fail(f"fan-out worker never subscribed to Redis:\n{running.log_tail('fanout')}")
        time.sleep(0.1)
    client.close()
    yield running
    started = time.monotonic()
    running.stop()
    print(f"services stopped in {time.monotonic() - started:.1f}s")


@pytest.fixture(scope="module")
def aws(deployed):
    from rtstream_cli.localstack.stack import client_factory

    return client_factory(deployed.endpoint, deployed.region)


def lambda_error_lines(endpoint: str, stack_name: str, limit: int = 40) -> list[str]:
    """Error lines the stack's Lambdas logged (CloudWatch Logs at the emulator)."""
    from rtstream_cli.localstack.stack import client_factory

    logs = client_factory(endpoint)("logs")
    lines = []
    groups = logs.describe_log_groups(logGroupNamePrefix=f"/aws/lambda/{stack_name}-").get("logGroups", [])
    for group in groups:
        for event in logs.filter_log_events(logGroupName=group["logGroupName"], limit=500).get("events", []):
            message = event.get("message", "")
            if any(word in message for word in ("Error", "Traceback", "Exception", '"level":"ERROR"')):
                lines.append(f"{group['logGroupName'].rsplit('/', 1)[-1]}: {message.strip()[:400]}")
    return lines[-limit:]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed end-to-end test shows what the deployed Lambdas logged as errors."""
    outcome = yield
    report = outcome.get_result()
    stack = item.funcargs.get("deployed") if hasattr(item, "funcargs") else None
    if report.failed and stack is not None:
        try:
            lines = lambda_error_lines(stack.endpoint, stack.stack_name)
        except Exception as exc:  # the report must not hide the failure itself
            lines = [f"(could not read Lambda logs: {exc})"]
        report.sections.append(("deployed Lambda errors", "\n".join(lines) or "(none logged)"))


@pytest.fixture(scope="session")
def ministack_tools():
    """This conftest's helpers for test modules (a conftest is not importable by name)."""
    import types

    return types.SimpleNamespace(run_cli=run_cli, running_ministack=running_ministack, ministack_venv=ministack_venv,
                                 JWT_SECRET=JWT_SECRET, MINISTACK_PYTHON=MINISTACK_PYTHON, ROOT=ROOT, STAGE=STAGE)
