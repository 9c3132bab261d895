"""The README's quick start is two commands (run the system, run the tests),
CI runs exactly the test command, and `scripts/test` provisions what the suite
needs before pytest."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _commands(shell_text: str) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in shell_text.splitlines()]
    return [line for line in lines if line]


def test_readme_quick_start_is_two_commands_that_set_up_and_run():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert _commands(block) == ["./scripts/dev", "./scripts/test"]
    for script in ("dev", "test"):
        assert (ROOT / "scripts" / script).stat().st_mode & 0o111, f"scripts/{script} is not executable"


def test_ci_runs_exactly_the_readme_test_command():
    commands = _commands((ROOT / ".ci" / "run").read_text())
    substantive = [c for c in commands if not c.startswith(("#!", "set -", "cd "))]
    assert substantive == ['exec ./scripts/test "$@"']


def test_the_test_command_provisions_every_part_before_pytest():
    text = (ROOT / "scripts" / "test").read_text()
    pytest_at = text.index("-m pytest")
    for step in ("redis-server", "ensure_venv dev", ".ci/setup.d/*.sh"):
        assert -1 < text.find(step) < pytest_at, step
    hooks = {p.name for p in (ROOT / ".ci" / "setup.d").glob("*.sh")}
    assert {"ministack.sh", "chromium.sh", "asyncapi-specs.sh"} <= hooks
