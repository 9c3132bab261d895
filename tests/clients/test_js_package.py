"""The browser package (clients/js, npm name rtstream-client) as a front-end
team meets it: `npm ci` from the lockfile, its source clean under
`tsc --strict --checkJs`, `npm pack` with only what a user needs, the tarball
installed into a strict TypeScript project that compiles (and one that misuses
the API that does not), its node --test suite (with the shared vectors), and the
wheel shipping the same file the package has, for the dashboard."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "js"
CONSUMER = Path(__file__).resolve().parent / "ts_consumer"
NPM = shutil.which("npm")
NODE = shutil.which("node")
PACKED = {"package.json", "README.md", "src/rtstream.js", "src/rtstream.d.ts", "src/rtstream-logic.js", "src/rtstream-logic.d.ts"}


def run(args, cwd, timeout=300):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed():
    """clients/js with its devDependencies installed exactly from package-lock.json."""
    if not NPM or not NODE:
        pytest.fail("node and npm are required (Node 20): apt-get install nodejs npm")
    result = run([NPM, "ci", "--no-audit", "--no-fund"], PACKAGE)
    assert result.returncode == 0, result.stderr[-2000:]
    return PACKAGE


@pytest.fixture(scope="module")
def tarball(installed, tmp_path_factory):
    out = tmp_path_factory.mktemp("pack")
    result = run([NPM, "pack", "--json", "--pack-destination", str(out)], installed)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "npm warn" not in result.stderr.lower(), result.stderr  # clean: no manifest warnings
    info = json.loads(result.stdout)[0]
    return out / info["filename"], {f["path"] for f in info["files"]}


def tsc(cwd, *args):
    return run([NODE, str(PACKAGE / "node_modules" / "typescript" / "bin" / "tsc"), *args], cwd)


def test_source_is_clean_under_strict_check_js(installed):
    result = tsc(installed, "-p", "tsconfig.json")
    assert result.returncode == 0, result.stdout[-3000:]


def test_pack_holds_only_what_a_user_needs(tarball):
    path, files = tarball
    assert path.name == "rtstream-client-0.1.0.tgz"
    assert files == PACKED
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert manifest["type"] == "module" and not manifest.get("dependencies")


def test_strict_typescript_project_compiles_against_the_tarball(tarball, tmp_path):
    path, _ = tarball
    for name in ("app.ts", "bad.ts", "tsconfig.json", "tsconfig.bad.json"):
        shutil.copy(CONSUMER / name, tmp_path / name)
    (tmp_path / "package.json").write_text(json.dumps({"name": "consumer", "private": True, "type": "module", "dependencies": {"rtstream-client": f"file:{path}"}}))
    result = run([NPM, "install", "--offline", "--no-audit", "--no-fund"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "node_modules" / "rtstream-client" / "src" / "rtstream.d.ts").is_file()

    ok = tsc(tmp_path, "-p", "tsconfig.json", "--strict", "--noEmit")
    assert ok.returncode == 0, ok.stdout[-3000:]
    # the declarations are real: misuse is refused (wrong transport, payload field typed as number)
    bad = tsc(tmp_path, "-p", "tsconfig.bad.json")
    assert bad.returncode != 0
    assert "carrier-pigeon" in bad.stdout and "TS2322" in bad.stdout, bad.stdout


def test_node_unit_tests_and_shared_vectors_pass(installed):
    result = run([NODE, "--test", "test/"], installed)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout


def test_the_wheel_ships_the_packages_file_to_the_dashboard(tmp_path):
    result = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)], ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for name in ("rtstream.js", "rtstream-logic.js"):
            shipped = zf.read(f"rtstream_client/static/{name}")
            assert shipped == (PACKAGE / "src" / name).read_bytes(), name
