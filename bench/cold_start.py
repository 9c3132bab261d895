"""Cold import of each Lambda handler module: what a Lambda cold start pays before
the first event is handled.

Each sample is a fresh Python process laid out like the Lambda runtime (the
layer's ``rtstream`` on the path as /opt/python is, the function directory as
the task root, Lambda-like environment with tracing enabled), which imports
``functions/<name>/app.py`` and reports the import's wall time. The deferred
part (boto3, redis and the X-Ray SDK, paid at the first invocation instead) is
measured the same way and reported separately, so nothing is hidden.

    flock /tmp/rtstream-bench.lock .venv/bin/python bench/cold_start.py [--samples 7]

Prints the figures and appends a dated section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ROOT / "functions"
LAYER = ROOT / "layers" / "core"
RESULTS = ROOT / "bench" / "RESULTS.md"
TARGET_MS = 300.0

_IMPORT_HANDLER = r"""
import importlib.util, json, sys, time
path = sys.argv[1]
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("app", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert callable(module.handler)
elapsed = (time.perf_counter() - t0) * 1000
heavy = [m for m in ("boto3", "botocore.client", "redis", "aws_xray_sdk", "cryptography") if m in sys.modules]
print(json.dumps({"ms": elapsed, "loaded": heavy}))
"""

# What the handlers defer to their first invocation (lambda_runtime builds these lazily).
_DEFERRED = r"""
import json, time
t0 = time.perf_counter()
import boto3, redis
boto3.session.Session().client("dynamodb", region_name="us-east-1")
from aws_lambda_powertools import Tracer
Tracer(service="bench")
print(json.dumps({"ms": (time.perf_counter() - t0) * 1000, "loaded": []}))
"""


def lambda_env() -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        # /opt/python (the layer) is on Lambda's path; here the layer's source dir
        "PYTHONPATH": str(LAYER),
        "AWS_LAMBDA_FUNCTION_NAME": "rtstream-bench",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "CONNECTIONS_TABLE": "bench-connections",
        "SUBSCRIPTIONS_TABLE": "bench-subscriptions",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "RTSTREAM_JWT_SECRET": "bench-secret-0123456789abcdef0123456789abcdef",
        "POWERTOOLS_SERVICE_NAME": "realtime-streaming",
        "POWERTOOLS_METRICS_NAMESPACE": "RealtimeStreaming",
    }
    return env


def sample(code: str, *args: str, cwd: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=lambda_env(), capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sample failed in {cwd}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=7)
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = parser.parse_args(argv)

    handlers = sorted(p.parent.name for p in FUNCTIONS.glob("*/app.py"))
    # one untimed run per handler: byte-code caches exist, as in a built layer
    for name in handlers:
        sample(_IMPORT_HANDLER, str(FUNCTIONS / name / "app.py"), cwd=FUNCTIONS / name)

    rows = []
    for name in handlers:
        runs = [sample(_IMPORT_HANDLER, str(FUNCTIONS / name / "app.py"), cwd=FUNCTIONS / name) for _ in range(args.samples)]
        times = sorted(r["ms"] for r in runs)
        rows.append((name, statistics.median(times), times[-1], runs[-1]["loaded"]))
    deferred = sorted(sample(_DEFERRED, cwd=ROOT)["ms"] for _ in range(max(3, args.samples // 2)))
    deferred_median = statistics.median(deferred)

    worst_median = max(r[1] for r in rows)
    lines = [
        f"| handler | median ms | max ms | heavy modules loaded at import |",
        f"| --- | ---: | ---: | --- |",
    ]
    for name, median, worst, loaded in rows:
        lines.append(f"| {name} | {median:.1f} | {worst:.1f} | {', '.join(loaded) or 'none'} |")
    verdict = "PASS" if worst_median < TARGET_MS else "FAIL"
    summary = (
        f"Worst handler median: {worst_median:.1f} ms (target < {TARGET_MS:.0f} ms): {verdict}. "
        f"Deferred to the first invocation (boto3 + redis import, a DynamoDB client, Powertools Tracer/X-Ray SDK): "
        f"median {deferred_median:.1f} ms."
    )
    print("\n".join(lines))
    print(summary)

    if not args.no_append:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        section = [
            "",
            f"## Lambda handler cold import ({stamp})",
            "",
            f"`bench/cold_start.py`: {args.samples} fresh processes per handler, Python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs shared with other jobs; import of `functions/<name>/app.py` with the layer on the path "
            "and a Lambda-like environment (tracing on).",
            "",
            *lines,
            "",
            summary,
            "",
        ]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        new = not RESULTS.exists()
        with RESULTS.open("a", encoding="utf-8") as fh:
            if new:
                fh.write("# Benchmark results\n")
            fh.write("\n".join(section))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"(bench took {time.monotonic() - started:.1f} s)")
    sys.exit(code)
