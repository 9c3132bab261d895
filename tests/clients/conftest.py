import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from system_thread import SystemThread  # noqa: E402


@pytest.fixture(scope="module")
def local_system(tmp_path_factory):
    """One real local system (gateway, handlers, moto, Redis, fan-out, SSE) per module,
    with its own private Redis so no other system's worker owns its partitions."""
    system = SystemThread(log_dir=tmp_path_factory.mktemp("system-logs")).start()
    try:
        yield system
    finally:
        system.stop()
