"""Monitoring tests drive the real Lambda handlers: reuse the handler fixtures
(tests/handlers/conftest.py) rather than a second copy of them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_path = Path(__file__).resolve().parents[1] / "handlers" / "conftest.py"
_spec = importlib.util.spec_from_file_location("rtstream_tests_handlers_conftest", _path)
_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _module
_spec.loader.exec_module(_module)

LambdaContext = _module.LambdaContext
load_event = _module.load_event
lambda_env = _module.lambda_env
load_handler = _module.load_handler
token = _module.token
