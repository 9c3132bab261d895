"""`pip install .` with no extras: the core, the publisher SDK and the Python
client in at most 20 distributions, none of the local system's or the tests'
heavy ones; and `rtstream dev` from that non-editable install answers one line
saying what to do. Builds the wheel and installs it into a fresh virtualenv
(dependencies from the configured index / local pip cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_DISTRIBUTIONS = 20
NOT_IN_A_LIGHT_INSTALL = {"moto", "flask", "cfn-lint", "aws-sam-translator", "starlette", "uvicorn", "docker", "sympy",
                          "boto3", "botocore", "selenium", "pytest", "fakeredis"}

pytestmark = pytest.mark.packaging


def run(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("light-install")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"), str(ROOT))
    if built.returncode != 0:  # older setuptools in this venv: let pip build in isolation
        built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(ROOT))
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (work / "dist").glob("realtime_streaming-*.whl")
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    installed = run(str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel))
    assert installed.returncode == 0, installed.stderr[-2000:]
    return env_dir


def test_light_install_has_at_most_20_distributions_and_none_of_the_heavy_ones(light_venv):
    py = light_venv / "bin" / "python"
    listed = run(str(py), "-c", "import importlib.metadata as m, json; print(json.dumps(sorted({d.metadata['Name'].lower() for d in m.distributions()})))")
    names = set(json.loads(listed.stdout)) - {"pip", "setuptools", "wheel"}  # the virtualenv's own tools
    print(f"light install: {len(names)} distributions: {', '.join(sorted(names))}")
    assert "realtime-streaming" in names
    assert len(names) <= MAX_DISTRIBUTIONS, sorted(names)
    assert not names & NOT_IN_A_LIGHT_INSTALL, sorted(names & NOT_IN_A_LIGHT_INSTALL)


def test_light_install_publishes_connects_and_mints_tokens(light_venv, redis_url):
    py = light_venv / "bin" / "python"
    code = (
        "import redis, rtstream_client\n"
        "from rtstream.adapters.publishing import publish\n"
        "from rtstream_client import RealtimeClient\n"
        f"print(publish('acme', 'transactions.new', {{'transactionId': 't1', 'amount': 1.5, 'merchant': 'Cafe'}}, client=redis.Redis.from_url({redis_url!r})))\n"
    )
    out = run(str(py), "-c", code, cwd=light_venv)  # not the source tree: the installed packages
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().split("-")[0].isdigit()
    token = run(str(light_venv / "bin" / "rtstream"), "token", "--user", "u1", "--entity", "e1", "--jwt-secret", "s" * 40)
    assert token.returncode == 0 and token.stdout.count(".") == 2, token.stderr
    version = run(str(light_venv / "bin" / "rtstream"), "--version")
    assert version.returncode == 0 and version.stdout.startswith("rtstream 0.") and "protocol" in version.stdout


def test_rtstream_dev_from_a_non_editable_install_says_in_one_line_what_to_do(light_venv):
    result = run(str(light_venv / "bin" / "rtstream"), "dev", "--no-demo", cwd=light_venv)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "[local]" in lines[0] and "./scripts/dev" in lines[0]


def test_rtstream_dev_with_the_local_extra_but_no_source_tree_says_in_one_line_what_to_do(tmp_path):
    # a non-editable install with [local]: the packages are there, template.yaml is
    # not. The packages are copied into a site-packages of their own and run with
    # this venv's dependencies, without site processing (the editable install's
    # finder would map them back to the source tree).
    import shutil
    import sysconfig

    site = tmp_path / "site-packages"
    # every package the wheel carries (pyproject's packages.find roots)
    packages = [p.parent for root in ("layers/core", "infra", "clients") for p in (ROOT / root).glob("*/__init__.py")]
    assert {"rtstream", "rtstream_cli", "rtstream_gateway"} <= {p.name for p in packages}
    for package in packages:
        shutil.copytree(package, site / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    deps = sysconfig.get_paths()["purelib"]
    code = "import sys; from rtstream_cli import main; sys.exit(main.main(['dev', '--no-demo']))"
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{site}{os.pathsep}{deps}", "HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    # not the light install's "[local] extra" message: the packages imported, the template is missing
    assert "runs from a clone of the repository" in result.stderr and "./scripts/dev" in result.stderr
