"""`deploy-local` builds for the Python the emulator really runs Lambdas with,
and refuses to call a stack deployed when one of its functions cannot run.

MiniStack runs every Lambda with its own interpreter, whatever `Runtime`
says. Tested on the MiniStack the README's instructions give
(`bash .ci/setup.d/ministack.sh`: the template's python3.12 when found) and on
one built with python3.11 (what `pip install ministack` gives with this
machine's default `python3`), each deployed with the README's command (no
`--lambda-python`). The authorizer refuses with a Deny policy, so no token and
a bad token are 403 on both (as on AWS).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.ministack

EMULATORS = {"readme": None, "python3.11": ("python3.11", ".venv-ministack-py311")}


def _version(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()


@pytest.fixture(scope="module", params=list(EMULATORS))
def emulator(request, ministack_tools):
    """(endpoint, the X.Y its Lambdas run on) for each MiniStack interpreter."""
    spec = EMULATORS[request.param]
    if spec is None:
        if not ministack_tools.MINISTACK_PYTHON.exists():
            pytest.fail(f"{ministack_tools.MINISTACK_PYTHON} is missing: run `bash .ci/setup.d/ministack.sh` (the README's step)")
        python = ministack_tools.MINISTACK_PYTHON
    else:
        python = ministack_tools.ministack_venv(*spec)
    version = _version(python)
    if spec is not None:
        assert version == spec[0].removeprefix("python")
    with ministack_tools.running_ministack(python) as endpoint:
        yield endpoint, version


@pytest.fixture
def t(ministack_tools):
    return ministack_tools


async def _handshake_status(url: str) -> int | None:
    """The refused handshake's HTTP status, None if the connection opened (and answered a ping)."""
    try:
        async with websockets.connect(url, open_timeout=60) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] == "pong"
            return None
    except InvalidStatus as refused:
        return refused.response.status_code


async def test_deploy_local_builds_for_the_emulators_python_and_every_function_runs(emulator, e2e_redis_url, capsys, t):
    from rtstream.auth import issue_dev_token
    from rtstream_cli.localstack.stack import describe_deployed

    endpoint, version = emulator
    name = f"rtstream-py-{uuid.uuid4().hex[:6]}"
    code, out = t.run_cli("deploy-local", "--endpoint", endpoint, "--stack", name, "--stage", t.STAGE,
                        "--redis-url", e2e_redis_url, "--jwt-secret", t.JWT_SECRET, "--slim")
    log = capsys.readouterr().err
    try:
        assert code == 0, out + log
        assert f"building layers and functions (python {version})" in log
        assert f"every function ran once with a harmless event (10 functions, Python {version})" in log
        stack = describe_deployed(endpoint, name)
        token = issue_dev_token(t.JWT_SECRET, user_id="u-py", entity_id="e-py")
        wrong = issue_dev_token("another-secret-0123456789abcdef0123456789", user_id="u-py", entity_id="e-py")
        assert await _handshake_status(stack.websocket_url) == 403  # no token: Deny
        assert await _handshake_status(f"{stack.websocket_url}?token={wrong}") == 403
        assert await _handshake_status(f"{stack.websocket_url}?token=not-a-jwt") == 403
        assert await _handshake_status(f"{stack.websocket_url}?token={token}") is None
    finally:
        assert t.run_cli("destroy-local", "--endpoint", endpoint, "--stack", name)[0] == 0


def test_a_lambda_python_the_emulator_does_not_run_is_refused_with_the_flag_to_pass(emulator, e2e_redis_url, capsys, t):
    endpoint, version = emulator
    other = "3.13" if version != "3.13" else "3.12"
    code, out = t.run_cli("deploy-local", "--endpoint", endpoint, "--stack", f"rtstream-py-{uuid.uuid4().hex[:6]}",
                        "--redis-url", e2e_redis_url, "--jwt-secret", t.JWT_SECRET, "--lambda-python", other)
    err = capsys.readouterr().err
    assert code == 1 and out == ""
    assert f"with Python {version}, not {other}" in err and f"pass --lambda-python {version}" in err


def test_a_function_that_cannot_run_fails_the_deploy_with_its_error(emulator, e2e_redis_url, tmp_path, t):
    """A function whose code does not import: the deploy fails naming it and its error."""
    from rtstream_cli.localstack.stack import DeployError, deploy_stack, destroy_stack
    from rtstream_cli.cloudformation import load_template

    endpoint, version = emulator
    broken_code = tmp_path / "messages"
    shutil.copytree(t.ROOT / "functions" / "messages", broken_code)
    app = broken_code / "app.py"
    app.write_text("import rtstream_module_that_does_not_exist  # noqa\n" + app.read_text())
    template = json.loads(json.dumps(load_template(t.ROOT / "template.yaml")))
    for logical_id, resource in template["Resources"].items():
        props = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):
                props[key] = str((t.ROOT / props[key]).resolve())
    template["Resources"]["PingFunction"]["Properties"]["CodeUri"] = str(broken_code)
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template))
    name = f"rtstream-broken-code-{uuid.uuid4().hex[:6]}"
    try:
        with pytest.raises(DeployError) as failed:
            deploy_stack(endpoint=endpoint, stack_name=name, template_path=path, slim=True, timeout=180,
                         parameters={"JwtSecret": t.JWT_SECRET, "RedisUrl": e2e_redis_url, "StageName": t.STAGE})
        problems = str(failed.value).split("\n")[1:]
        assert problems[0].strip().startswith("PingFunction: "), failed.value
        assert "rtstream_module_that_does_not_exist" in problems[0], failed.value
        assert not [p for p in problems if p.strip() and not p.startswith(" " * 6) and "PingFunction" not in p], failed.value
    finally:
        destroy_stack(endpoint, name)
