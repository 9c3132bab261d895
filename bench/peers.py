"""The baseline peers every benchmark runs in the same run: where they are and
which Python runs them.

They live in ``../shared/peers`` relative to the project root (read-only in CI
copies, so benchmarks copy the scripts they run into a temporary directory).
Their Python is ``PEERS_PYTHON`` when set, else a virtualenv made once in the
temporary directory from ``../shared/peers/requirements.txt``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# relative to the project root, never an absolute path of this machine
PEERS_DIR = Path(os.environ.get("PEERS_DIR") or os.path.relpath(ROOT / ".." / "shared" / "peers"))


def peer_python() -> str | None:
    """A Python with the peers' requirements, or None when the peers are absent."""
    if os.environ.get("PEERS_PYTHON"):
        return os.environ["PEERS_PYTHON"]
    requirements = PEERS_DIR / "requirements.txt"
    if not requirements.exists():
        return None
    venv = Path(tempfile.gettempdir()) / "rtstream-peers-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    return str(python)
