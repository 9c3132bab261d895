"""bench/churn: resume under reconnect churn (issue 11), against the local system.

    flock /tmp/rtstream-bench.lock .venv/bin/python bench/churn/run.py [--peer-python PY]

What runs, all on this machine: ``LocalSystem`` (gateway emulator with the real
Lambda handlers, moto, a private redis-server), the fan-out worker child and the
SSE server child; one client process (bench/churn/clients.py) per scenario
holding the clients of ONE entity and publishing through the event log.

Scenarios (each bounded: publish --duration s, then a tail of at most 20 s):
1. ``churn-16``: 8 WebSocket + 8 SSE clients, each reconnecting at random every
   0.7-2 s with ``since`` / ``Last-Event-ID``; 80 events/s for 10 s.
   Targets: 0 lost and 0 duplicated for every client; the steady observer's
   p99 <= 1 s; every resume answered (``subscribed`` / first SSE frame) within 1 s.
2. ``churn-40``: 20 + 20 clients at 200 events/s (reported).
3. ``steady-16``: scenario 1 without reconnects (the ratio's denominator).
Then the peer ``floor_ws`` (../shared/peers) with 16 clients at 80/s for its
steady p99 (a plain broadcast, no resume: a floor, not a like-for-like).
Figures are printed and appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RESULTS = ROOT / "bench" / "RESULTS.md"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peers import PEERS_DIR as PEERS, peer_python  # noqa: E402  (bench/peers.py)
SECRET = "bench-churn-secret-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_scenario(system, name: str, ws: int, sse: int, rate: float, duration: float, churn: bool, log_dir: Path) -> dict:
    from rtstream.auth import issue_dev_token

    entity = f"churn-{name}-{int(time.time())}"
    tokens = log_dir / f"tokens-{name}.txt"
    tokens.write_text("\n".join(issue_dev_token(SECRET, user_id=f"u{i}", entity_id=entity, ttl_seconds=3600) for i in range(ws + sse + 1)))
    cmd = [sys.executable, str(HERE / "clients.py"), "--ws-url", system.ws_url, "--sse-url", system.sse_url, "--redis-url", system.redis_url,
           "--tokens", str(tokens), "--entity", entity, "--ws", str(ws), "--sse", str(sse), "--rate", str(rate), "--duration", str(duration),
           "--churn", "1" if churn else "0"]
    proc = await asyncio.create_subprocess_exec(*cmd, env=system.child_env, stdout=asyncio.subprocess.PIPE, stderr=open(log_dir / f"clients-{name}.log", "ab"))
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), duration + 120)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return {"name": name, "error": "timed out"}
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if not lines:
        return {"name": name, "error": f"no result (see {log_dir})"}
    result = json.loads(lines[-1])
    result.update(name=name, ws=ws, sse=sse, rate=rate, duration=duration, churn=churn)
    return result


async def run_ours(args) -> list[dict]:
    from rtstream_cli.dev import LocalSystem

    log_dir = Path(tempfile.mkdtemp(prefix="bench-churn-"))
    overrides = {"RTSTREAM_MAX_CONNECTIONS_PER_USER": "100000", "RTSTREAM_MAX_CONNECTIONS_PER_ENTITY": "100000"}
    system = LocalSystem(ws_port=0, sse_port=free_port(), jwt_secret=SECRET, with_worker=True, with_sse=True, with_eventbridge=False,
                         write_state_file=False, settings_overrides=overrides, log_dir=log_dir, keep_logs=True)
    await system.start()
    results = []
    try:
        plan = [("churn-16", 8, 8, 80, True), ("churn-40", 20, 20, 200, True), ("steady-16", 8, 8, 80, False)]
        for name, ws, sse, rate, churn in plan:
            if args.only and name not in args.only:
                continue
            print(f"[ours] {name}: {ws} WS + {sse} SSE, {rate}/s for {args.duration} s, churn={churn}", flush=True)
            r = await run_scenario(system, name, ws, sse, rate, args.duration, churn, log_dir)
            print(json.dumps({k: v for k, v in r.items() if k != "clients"}), flush=True)
            results.append(r)
            await asyncio.sleep(1.0)
    finally:
        await system.stop()
    return results


def run_peer(args) -> dict | None:
    """floor_ws from ../shared/peers (copied: the shared tree is read-only), own Redis, 16 clients at 80/s."""
    python = args.peer_python or peer_python()
    if not python or not Path(python).exists() or not (PEERS / "floor_ws.py").exists():
        print(f"[peer] skipped: no peer venv at {python!r} (see {PEERS}/README.md)", flush=True)
        return None
    work = Path(tempfile.mkdtemp(prefix="peers-churn-"))
    for name in ("floor_ws.py", "harness.py", "leanclient.py"):
        shutil.copy(PEERS / name, work / name)
    port = free_port()
    redis_proc = subprocess.Popen([shutil.which("redis-server"), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                                   "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        proc = subprocess.run([python, str(work / "floor_ws.py"), "--n", "16", "--redis-port", str(port), "--port", str(free_port()),
                               "--idle-wait", "5", "--rate", "80", "--duration", str(args.duration)],
                              capture_output=True, text=True, timeout=300, cwd=work)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            print(f"[peer] floor_ws produced no result: {proc.stderr[-500:]}", flush=True)
            return None
        return json.loads(lines[-1])
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def find_p99(d) -> float | None:
    """The steady phase's p99 (ms) in a peer result, wherever the harness put it."""
    steady = d.get("steady") if isinstance(d, dict) else None
    stack = [steady]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            if "p99" in x and isinstance(x["p99"], (int, float)):
                return float(x["p99"])
            stack += list(x.values())
    return None


def verdict(r: dict) -> str:
    """Issue 11's targets: 0 lost / 0 duplicated for every client, observer p99 <= 1 s,
    every WebSocket resume answered `subscribed` within 1 s (SSE: the 200 within 1 s)."""
    delivery = (r.get("lost_total") == 0 and r.get("duplicated_total") == 0 and r["observer"]["lost"] == 0 and r["observer"]["duplicated"] == 0
                and all(c["in_order"] for c in r["clients"]) and (r["observer"]["p99_ms"] or 1e9) <= 1000)
    ws_ok = r["ws_subscribed_ms"]["over_1s"] == 0
    sse_ok = r["sse_accepted_ms"]["over_1s"] == 0
    if delivery and ws_ok and sse_ok:
        return "MET"
    missed = [name for name, ok in (("delivery", delivery), ("WS resume", ws_ok), ("SSE resume", sse_ok)) if not ok]
    return "NOT MET: " + ", ".join(missed)


def append_results(results: list[dict], peer: dict | None) -> str:
    day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\n## churn ({day})\n", "bench/churn: one entity, clients reconnecting every 0.7-2 s with since/Last-Event-ID (WS/SSE), "
             "steady WS observer; LocalSystem (emulator + worker + SSE) on this shared 2-core VM.\n",
             "| scenario | clients | events/s | published | reconnects | lost (all clients) | dup | replay_gap | observer p50/p99/max ms (lost/dup) | WS `subscribed` p50/max ms (> 1 s) | SSE 200 p50/max ms (> 1 s) | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | - | - | - | - | - | - | - | - | - | error: {r['error']} |")
            continue
        by[r["name"]] = r
        o = r["observer"]
        ws, sse = r["ws_subscribed_ms"], r["sse_accepted_ms"]
        gaps = sum(c["errors"].count("replay_gap") for c in r["clients"])
        lines.append(f"| {r['name']} | {r['ws']} WS + {r['sse']} SSE | {r['rate']:g} | {r['published']} | {r['reconnects']} | {r['lost_total']} | {r['duplicated_total']} | {gaps} | "
                     f"{o['p50_ms']}/{o['p99_ms']}/{o['max_ms']} ({o['lost']}/{o['duplicated']}) | {ws['p50']}/{ws['max']} ({ws['over_1s']}) | {sse['p50']}/{sse['max']} ({sse['over_1s']}) | "
                     f"{verdict(r) if r['churn'] else '-'} |")
    if "churn-16" in by and "steady-16" in by and by["steady-16"]["observer"]["p99_ms"]:
        ratio = by["churn-16"]["observer"]["p99_ms"] / by["steady-16"]["observer"]["p99_ms"]
        lines.append(f"\nObserver p99 with churn / without churn (16 clients, 80/s): **{ratio:.2f}x**.")
    peer_p99 = find_p99(peer) if peer else None
    if peer_p99 and "churn-16" in by:
        lines.append(f"Peer floor_ws (16 clients, 80/s, plain broadcast, no churn, no resume) steady p99 {peer_p99:.2f} ms; "
                     f"ours under churn / peer: **{by['churn-16']['observer']['p99_ms'] / peer_p99:.1f}x**"
                     + (f", ours without churn / peer: **{by['steady-16']['observer']['p99_ms'] / peer_p99:.1f}x**." if "steady-16" in by else "."))
    elif peer is None:
        lines.append("Peer floor_ws: not run (no peer venv).")
    text = "\n".join(lines) + "\n"
    with open(RESULTS, "a") as fh:
        fh.write(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--peer-python", default=None, help="default: PEERS_PYTHON, else a venv of ../shared/peers/requirements.txt")
    ap.add_argument("--only", nargs="*", help="scenario names to run (default all)")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = ap.parse_args()
    results = asyncio.run(asyncio.wait_for(run_ours(args), 600))
    peer = run_peer(args)
    for r in results:
        bad = [c for c in r.get("clients", []) if c["lost"] or c["duplicated"] or not c["in_order"] or c["resumes_over_1s"]]
        for c in bad[:10]:
            print(f"[{r['name']}] {c}", flush=True)
    if args.no_record:
        print(json.dumps({"peer_p99_ms": find_p99(peer) if peer else None}))
        return 0
    print(append_results(results, peer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
