"""The core never reaches a vendor: no module under ``layers/core/rtstream/``
outside ``adapters/`` imports boto3, botocore, redis, starlette, httpx or
websockets, nor the adapters themselves, at any depth (lazy imports inside
functions included), by ``import`` or by ``importlib.import_module`` / ``__import__``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "layers" / "core" / "rtstream"
VENDORS = frozenset({"boto3", "botocore", "redis", "starlette", "httpx", "websockets"})
ADAPTERS = "rtstream.adapters"


def core_modules() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "adapters" not in p.relative_to(CORE).parts)


def _package_of(path: Path) -> list[str]:
    """``rtstream.inmemory`` for layers/core/rtstream/inmemory/x.py (what relative imports start from)."""
    return ["rtstream", *path.parent.relative_to(CORE).parts]


def _absolute(module: str | None, level: int, path: Path) -> str:
    if level == 0:
        return module or ""
    package = _package_of(path)
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _forbidden(name: str) -> bool:
    return name.split(".")[0] in VENDORS or name == ADAPTERS or name.startswith(ADAPTERS + ".")


def _own_submodule(arg: ast.expr) -> bool:
    """``f"{__name__}.{x}"``: a submodule of the importing package (rtstream.inmemory's lazy loader)."""
    return (
        isinstance(arg, ast.JoinedStr)
        and len(arg.values) >= 2
        and isinstance(arg.values[0], ast.FormattedValue)
        and isinstance(arg.values[0].value, ast.Name)
        and arg.values[0].value.id == "__name__"
        and isinstance(arg.values[1], ast.Constant)
        and str(arg.values[1].value).startswith(".")
    )


def violations(source: str, path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, path)
            # `from . import adapters` / `from .adapters import x` / `from redis import Redis`
            names = [base, *(f"{base}.{alias.name}" for alias in node.names if base in ("rtstream",))]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    level = len(arg.value) - len(arg.value.lstrip("."))
                    names = [_absolute(arg.value.lstrip(".") or None, level, path) if level else arg.value]
                elif not _own_submodule(arg):
                    found.append(f"{path.name}:{node.lineno} imports a computed module name")
        found += [f"{path.name}:{node.lineno} imports {name}" for name in names if _forbidden(name)]
    return found


def test_the_core_is_found():
    names = {p.name for p in core_modules()}
    assert {"service.py", "publishing.py", "ports.py", "fanout_engine.py"} <= names
    assert not any("adapters" in p.parts for p in core_modules())


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_imports_no_vendor_and_no_adapter(path):
    assert violations(path.read_text(), path) == []


@pytest.mark.parametrize(
    "source",
    [
        "import redis",
        "import botocore.exceptions as e",
        "def f():\n    from boto3 import client",
        "class C:\n    def m(self):\n        if True:\n            import httpx",
        "from starlette.responses import Response",
        "import websockets.asyncio.client",
        "from .adapters.redis_eventlog import RedisEventLog",
        "from . import adapters",
        "from rtstream.adapters import lambda_runtime",
        "import importlib\nimportlib.import_module('redis')",
        "from importlib import import_module\nimport_module('rtstream.adapters.eventbridge')",
        "import importlib\nimportlib.import_module('.adapters', 'rtstream')",
        "__import__('boto3')",
        "import importlib\nname = 'redis'\nimportlib.import_module(name)",
    ],
)
def test_the_check_catches_every_form(source):
    assert violations(source, CORE / "service.py"), source


def test_relative_imports_resolve_from_the_modules_package():
    assert violations("from ..adapters import eventbridge", CORE / "inmemory" / "eventlog.py")
    assert violations("from ..publishing import validate", CORE / "inmemory" / "eventlog.py") == []
    assert violations("from .keys import history\nimport json, re", CORE / "service.py") == []
