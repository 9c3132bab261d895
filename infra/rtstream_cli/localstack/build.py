"""Build the template's layers and functions the way `sam build` does.

- ``AWS::Serverless::LayerVersion`` with a Python ``BuildMethod`` (or a
  ``requirements.txt``): ``ContentUri`` is copied into ``<build>/<Id>/python/``
  and ``pip install -r requirements.txt`` goes into the same ``python/`` (the
  directory Lambda puts on ``sys.path``). Nothing is written into the source
  tree.
- ``AWS::Serverless::Function`` (``PackageType: Zip``): ``CodeUri`` copied, its
  own ``requirements.txt`` (if any) installed beside it.

Dependencies are installed for the Lambda's Python version and this
machine's architecture (``--platform manylinux2014_<arch> --only-binary``),
like ``sam build --use-container``: an emulator runs the code on this
machine. The installed dependencies are cached by (requirements, version,
platform), so repeated deploys only copy and zip.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".DS_Store")

# What the AWS Lambda Python runtime already ships (boto3 and its dependencies).
# ``slim=True`` leaves these out of the built layer/functions: the runtime's
# copy is used, as on AWS. ``sam build`` would package them when a dependency
# pulls them in (aws-xray-sdk pulls botocore: 30 of the layer's ~57 MB).
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"})


class BuildError(RuntimeError):
    """A layer or function could not be built (missing sources, pip failure)."""


@dataclass(frozen=True)
class Artifact:
    logical_id: str
    kind: str  # "layer" | "function"
    zip_path: Path
    sha256: str


def default_cache_dir() -> Path:
    from rtstream.settings import Settings

    base = Settings.from_env().runtime.cache_dir or os.path.join(Path.home(), ".cache", "rtstream")
    return Path(base) / "deploy-local"


def pip_platform() -> str:
    machine = platform.machine().lower()
    arch = "aarch64" if machine in ("arm64", "aarch64") else "x86_64"
    return f"manylinux2014_{arch}"


def runtime_python_version(runtime: str | None) -> str:
    """``python3.12`` -> ``3.12``; anything else (or nothing) -> this interpreter's."""
    if runtime and runtime.startswith("python"):
        return runtime[len("python") :]
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _tree_digest(root: Path) -> str:
    """Content hash of a source tree (what ``_copy_tree`` copies)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc" and path.name != ".DS_Store":
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _deps_digest(requirements: Path, python_version: str) -> str:
    return hashlib.sha256(requirements.read_bytes() + f"|{python_version}|{pip_platform()}".encode()).hexdigest()[:16]


def _install_requirements(requirements: Path, python_version: str, cache_dir: Path) -> Path:
    """Install ``requirements`` once per (content, version, platform); return the directory."""
    plat = pip_platform()
    digest = _deps_digest(requirements, python_version)
    target = cache_dir / "deps" / digest
    if (target / ".complete").exists():
        return target
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
        "--target", str(partial), "--platform", plat, "--implementation", "cp",
        "--python-version", python_version, "--only-binary=:all:", "-r", str(requirements),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise BuildError(f"pip install -r {requirements} failed:\n{proc.stderr.strip()[-2000:]}")
    (partial / ".complete").write_text(" ".join(cmd))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=_IGNORED, dirs_exist_ok=True)


def _runtime_provided_entries(deps_dir: Path) -> set[str]:
    """Top-level names in ``deps_dir`` that belong to ``RUNTIME_PROVIDED`` distributions."""
    from importlib.metadata import distributions

    names: set[str] = set()
    for dist in distributions(path=[str(deps_dir)]):
        if (dist.metadata.get("Name") or "").lower().replace("_", "-") in RUNTIME_PROVIDED:
            names.update(Path(str(f)).parts[0] for f in (dist.files or []) if not str(f).startswith(".."))
    return names


def _copy_deps(deps_dir: Path, dst: Path, slim: bool) -> None:
    skipped = _runtime_provided_entries(deps_dir) if slim else set()
    dst.mkdir(parents=True, exist_ok=True)
    for entry in deps_dir.iterdir():
        if entry.name in skipped or entry.name == ".complete":
            continue
        if entry.is_dir():
            _copy_tree(entry, dst / entry.name)
        else:
            shutil.copy2(entry, dst / entry.name)


def _zip_dir(src: Path, zip_path: Path) -> str:
    """Zip ``src`` reproducibly (sorted entries, fixed timestamps); return its sha256."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for root, dirs, files in os.walk(src):
            dirs.sort()
            for name in sorted(files):
                if name == ".complete":
                    continue
                full = Path(root) / name
                info = zipfile.ZipInfo(str(full.relative_to(src)), date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (0o755 if os.access(full, os.X_OK) else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, full.read_bytes())
    return hashlib.sha256(zip_path.read_bytes()).hexdigest()


def _local_uri(value: Any, base: Path, what: str) -> Path | None:
    """A local ``CodeUri``/``ContentUri`` as a directory, None if it is already S3."""
    if value is None:
        raise BuildError(f"{what}: no CodeUri/ContentUri")
    if isinstance(value, dict) or (isinstance(value, str) and value.startswith("s3://")):
        return None
    path = (base / value).resolve()
    if not path.is_dir():
        raise BuildError(f"{what}: {path} is not a directory")
    return path


def build_artifacts(template: dict[str, Any], template_dir: Path, build_dir: Path,
                    python_version: str | None = None, cache_dir: Path | None = None,
                    slim: bool = False) -> dict[str, Artifact]:
    """Build every Serverless layer and zip function; ``{logical_id: Artifact}``.

    ``python_version`` overrides the version taken from each resource's
    runtime (an emulator that runs every Lambda with its own interpreter
    needs dependencies for that interpreter). ``slim`` leaves out what the
    Lambda runtime provides (``RUNTIME_PROVIDED``).
    """
    cache_dir = cache_dir or default_cache_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    globals_fn = (template.get("Globals") or {}).get("Function") or {}
    artifacts: dict[str, Artifact] = {}
    for logical_id, resource in (template.get("Resources") or {}).items():
        rtype = resource.get("Type")
        props = resource.get("Properties") or {}
        if rtype == "AWS::Serverless::LayerVersion":
            src = _local_uri(props.get("ContentUri"), template_dir, logical_id)
            if src is None:
                continue
            build_method = str((resource.get("Metadata") or {}).get("BuildMethod") or "")
            runtimes = props.get("CompatibleRuntimes") or []
            out = build_dir / logical_id
            shutil.rmtree(out, ignore_errors=True)
            requirements = src / "requirements.txt"
            python_layer = build_method.startswith("python") or requirements.exists()
            version = python_version or runtime_python_version(build_method or (runtimes[0] if runtimes else None))
            # the layer zip is a pure function of its sources and installed dependencies:
            # reuse it (zipping ~50 MB of dependencies dominates a rebuild)
            key = hashlib.sha256("|".join([
                _tree_digest(src), _deps_digest(requirements, version) if requirements.exists() else "-",
                "python" if python_layer else "plain", "slim" if slim else "full"]).encode()).hexdigest()[:24]
            cached_zip = cache_dir / "layers" / f"{key}.zip"
            zip_path = build_dir / f"{logical_id}.zip"
            if not cached_zip.exists():
                if python_layer:
                    dest = out / "python"
                    if requirements.exists():
                        _copy_deps(_install_requirements(requirements, version, cache_dir), dest, slim)
                    _copy_tree(src, dest)
                else:
                    _copy_tree(src, out)
                cached_zip.parent.mkdir(parents=True, exist_ok=True)
                partial = cached_zip.with_name(f"{key}.partial-{os.getpid()}.zip")
                _zip_dir(out, partial)
                partial.replace(cached_zip)
            shutil.copyfile(cached_zip, zip_path)
            artifacts[logical_id] = Artifact(logical_id, "layer", zip_path, hashlib.sha256(zip_path.read_bytes()).hexdigest())
        elif rtype == "AWS::Serverless::Function":
            if (props.get("PackageType") or globals_fn.get("PackageType") or "Zip") != "Zip":
                continue
            src = _local_uri(props.get("CodeUri", globals_fn.get("CodeUri")), template_dir, logical_id)
            if src is None:
                continue
            out = build_dir / logical_id
            shutil.rmtree(out, ignore_errors=True)
            requirements = src / "requirements.txt"
            if requirements.exists():
                version = python_version or runtime_python_version(props.get("Runtime") or globals_fn.get("Runtime"))
                _copy_deps(_install_requirements(requirements, version, cache_dir), out, slim)
            _copy_tree(src, out)
            zip_path = build_dir / f"{logical_id}.zip"
            artifacts[logical_id] = Artifact(logical_id, "function", zip_path, _zip_dir(out, zip_path))
    return artifacts
