"""One Settings reads every variable, and the README documents exactly those.

The variables ``Settings.from_env`` reads are recorded from the mapping it is
given (not read from its source), and compared with the README's Configuration
table in both directions; the runtimes' own modules must not read the
environment past it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtstream.settings import PROCESS_KINDS, Settings

ROOT = Path(__file__).resolve().parents[2]


class RecordingEnv(dict):
    """An environment that records every name looked up in it."""

    def __init__(self, values: dict[str, str] | None = None):
        super().__init__(values or {})
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def names_read_by_settings() -> set[str]:
    env = RecordingEnv()
    Settings.from_env(env, own=PROCESS_KINDS)
    return env.read


def readme_table_names() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configuration\n") : text.index("\n## ", text.index("## Configuration\n") + 1)]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names = []
    for row in rows:
        first_cell = row.split("|")[1]
        found = re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell)
        assert len(found) == 1, f"one variable per row: {row}"
        names += found
    return names


def test_readme_table_lists_exactly_what_settings_reads():
    documented = readme_table_names()
    assert len(documented) == len(set(documented)), "a variable is listed twice"
    read = names_read_by_settings()
    assert sorted(read - set(documented)) == [], "read by Settings.from_env, missing from the README table"
    assert sorted(set(documented) - read) == [], "in the README table, not read by Settings.from_env"


def test_every_documented_variable_reaches_a_setting():
    """Each variable changes what from_env returns (it is not read and dropped)."""
    baseline = Settings.from_env({}, own=PROCESS_KINDS)
    samples = {"RTSTREAM_FANOUT_PIPELINING": "off", "RTSTREAM_MANAGEMENT_SIGN": "1", "RTSTREAM_DASHBOARD_DEV_TOKEN": "1",
               "RTSTREAM_METRICS_FEDERATE": "w=http://127.0.0.1:9/metrics", "RTSTREAM_LOG_LEVEL": "DEBUG"}
    for name in readme_table_names():
        value = samples.get(name, "7")
        assert Settings.from_env({name: value}, own=PROCESS_KINDS) != baseline, name


@pytest.mark.parametrize("name,value", [("RTSTREAM_WORKER_STALL_S", "soon"), ("RTSTREAM_MANAGEMENT_POOL", "0"),
                                        ("RTSTREAM_MANAGEMENT_SIGN", "maybe"), ("RTSTREAM_SSE_PORT", "-1")])
def test_a_bad_value_is_refused_naming_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value}, own=PROCESS_KINDS)


def test_sub_settings_come_from_the_same_mapping():
    settings = Settings.from_env({"RTSTREAM_EMF_INTERVAL_S": "5", "RTSTREAM_WORKER_METRICS_PORT": "9102", "AWS_DEFAULT_REGION": "eu-west-1",
                                  "REDIS_URL": "redis://r:1/0", "RTSTREAM_SSE_HEALTH_GRACE_SECONDS": "2.5"}, own=PROCESS_KINDS)
    assert settings.worker.emf_interval_seconds == 5 and settings.sse.emf_interval_seconds == 5
    assert settings.worker.metrics_port == 9102 and settings.runtime.aws_region == "eu-west-1"
    assert settings.runtime.uses_redis and not settings.runtime.uses_registry and settings.redis_url == "redis://r:1/0"
    assert settings.sse.health_grace_seconds == 2.5
    defaults = Settings.from_env({}, own=PROCESS_KINDS)
    assert defaults.worker.emf_interval_seconds == 60 and defaults.sse.emf_interval_seconds == 0  # per component defaults
    assert not defaults.runtime.uses_redis


RUNTIME_DIRS = ("infra/rtstream_fanout", "infra/rtstream_sse", "layers/core/rtstream", "functions", "clients/rtstream_client")


def _environment_reads(path: Path) -> Iterator[int]:
    """Line numbers of os.environ / os.getenv uses."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" and node.attr in ("environ", "getenv"):
            yield node.lineno


def test_runtimes_read_the_environment_only_to_hand_it_to_settings():
    """The worker, the SSE server, the core and the Lambdas take os.environ only
    as the mapping they pass to Settings.from_env (one line each)."""
    offenders = []
    for folder in RUNTIME_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = path.read_text().splitlines()
            for lineno in _environment_reads(path):
                line = lines[lineno - 1]
                if not any(handed in line for handed in ("os.environ if env is None else env", "dict(os.environ)", "from_env(os.environ)")):
                    offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert offenders == []


def test_a_process_validates_only_its_own_kind():
    """A bad SSE variable stops the SSE server, not the worker or the CLI that starts it."""
    bad_sse = {"RTSTREAM_SSE_READ_BLOCK_MS": "soon", "RTSTREAM_WORKER_STALL_S": "4"}
    assert Settings.from_env(bad_sse, own=("worker",)).worker.stall_seconds == 4
    assert Settings.from_env(bad_sse).sse.read_block_ms == 5000  # shared + runtime only: defaults elsewhere
    with pytest.raises(ValueError, match="RTSTREAM_SSE_READ_BLOCK_MS"):
        Settings.from_env(bad_sse, own=("sse",))
    with pytest.raises(ValueError, match="process kinds"):
        Settings.from_env({}, own=("lambda",))
