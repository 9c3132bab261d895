"""bench/sse: publish -> receive latency, deliveries/s and server memory per
connection of the SSE server, with the peer ``floor_sse`` in the same run.

    flock /tmp/rtstream-bench.lock .venv/bin/python bench/sse/run.py            # 1000@20/s and 5000@5/s
    .venv/bin/python bench/sse/run.py --scenarios 1000x20 --no-peer --duration 5

Method = the peers' harness (../shared/peers/harness.py), reused as is:
server subprocess; one lean client process holding N streams (all of one
entity, topics=*); warmup 5 events at 10/s; steady phase at the given rate for
--duration s; a burst; CPU % per phase from /proc. Events are published the
product's way (``RedisEventLog.append``: history + partition stream, one Lua
script) and carry ``time.monotonic_ns()`` taken just before the append.
Figures are printed and appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import array
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peers import PEERS_DIR as PEERS, peer_python  # noqa: E402  (bench/peers.py)
sys.path.insert(0, str(PEERS))
import harness  # noqa: E402  (Child, Sampler, percentiles, rss_kib, wait_delivered, child_request)

from rtstream.adapters.redis_eventlog import RedisEventLog  # noqa: E402
from rtstream.auth import issue_dev_token  # noqa: E402
from rtstream.settings import Settings  # noqa: E402

SECRET = "bench-secret-0123456789abcdef-0123456789abcdef"
ENTITY = "bench-entity"
PEER_VENV_PY = peer_python()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, workdir: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir, "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    r = redis.Redis(port=port)
    for _ in range(100):
        try:
            if r.ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis did not start")


def wait_healthy(url: str, timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/healthz", timeout=1)
            if r.status_code == 200 and r.json()["redis"] == "connected":
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError("SSE server not healthy")


def wait_idle(limit_s: float, below_pct: float) -> dict:
    """As the peers' harness: wait (bounded) for the shared host to be mostly idle
    and record how busy it was."""
    started = time.monotonic()
    while True:
        h0 = harness.host_cpu()
        time.sleep(1.0)
        h1 = harness.host_cpu()
        busy = round(100.0 * (1 - (h1[1] - h0[1]) / max(1, h1[0] - h0[0])), 1)
        if busy < below_pct or time.monotonic() - started > limit_s:
            break
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"busy_pct_1s_before": busy, "loadavg_before": load, "idle_wait_s": round(time.monotonic() - started - 1.0, 1)}


def stamp_payload(phase: str, seq: int, size: int) -> tuple[dict, int]:
    t = time.monotonic_ns()
    tx = f"{phase}{seq:09d} {t:020d}"
    return {"transactionId": tx, "amount": 1.0, "merchant": "x" * max(1, size - len(tx))}, t


def run_ours(args, n: int, rate: float, redis_port: int, log_dir: str) -> dict:
    settings = Settings(redis_url=f"redis://127.0.0.1:{redis_port}/0")
    rclient = redis.Redis(port=redis_port)
    rclient.flushall()
    elog = RedisEventLog(rclient, settings)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTSTREAM_") and k not in ("CONNECTIONS_TABLE", "AWS_ENDPOINT_URL")}
    env.update(
        REDIS_URL=settings.redis_url,
        RTSTREAM_JWT_SECRET=SECRET,
        RTSTREAM_SSE_HOST="127.0.0.1",
        RTSTREAM_SSE_PORT=str(port),
        RTSTREAM_MAX_CONNECTIONS_PER_USER="100000",
        RTSTREAM_MAX_CONNECTIONS_PER_ENTITY="100000",
        RTSTREAM_LOG_LEVEL="WARNING",
    )
    burst = args.burst or max(20, min(500, 200000 // max(1, n)))
    result = {
        "bench": "rtstream_sse",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "params": {"n": n, "rate": rate, "duration_s": args.duration, "burst": burst, "size": args.size},
    }
    children = []
    dump_dir = tempfile.mkdtemp(prefix="bench-sse-dump-")
    result["host"] = wait_idle(args.idle_wait, args.idle_below)
    try:
        server = harness.Child("server", [sys.executable, "-m", "rtstream_sse"], log_dir, cwd=str(ROOT), env=env)
        children.append(server)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        time.sleep(0.3)
        rss0 = harness.rss_kib(server.pid)
        # Users hold at most RTSTREAM_MAX_CONNECTIONS_PER_USER (10) connections in
        # production: one token per user, 10 connections each, all in one entity.
        paths_file = Path(dump_dir) / "paths.txt"
        paths_file.write_text("".join(
            f"/events?access_token={issue_dev_token(SECRET, user_id=f'bench-user-{u}', entity_id=ENTITY, ttl_seconds=3600)}\n"
            for u in range(max(1, n // 10))))
        client_cmd = [sys.executable, str(Path(__file__).with_name("client.py")), "--port", str(port), "--path", "/events",
                      "--paths-file", str(paths_file), "--n", str(n), "--max-seconds", "600"]
        redis_pid = int(rclient.info("server")["process_id"])
        t0 = time.monotonic()
        client = harness.Child("client0", client_cmd, log_dir, cwd=str(ROOT))
        children.append(client)
        sampler = harness.Sampler({"server": server.pid, "client0": client.pid, "redis": redis_pid})
        s0 = sampler.snap()
        ready = json.loads(client.expect("READY", 300))
        s1 = sampler.snap()
        opened = ready["open"]
        time.sleep(1.0)
        rss1 = harness.rss_kib(server.pid)
        result["connect"] = {"opened": opened, "failed": ready["failed"], "errors": ready.get("errors"), "wall_s": round(time.monotonic() - t0, 2),
                             "conn_per_s": round(opened / max(1e-9, ready["connect_s"]), 1), "cpu": harness.Sampler.diff(s0, s1)}
        result["server_rss_kib"] = {"before": rss0, "after_connect": rss1, "per_conn_kib": round((rss1 - rss0) / opened, 2) if opened else None}

        for i in range(5):
            data, _ = stamp_payload("W", i, args.size)
            elog.append(ENTITY, "transactions.new", data, "bench")
            time.sleep(0.1)
        result["warmup"] = {"expected": 5 * opened, "received": harness.wait_delivered([client], "W", 5 * opened, args.settle, args.phase_timeout)}

        count = int(round(rate * args.duration))
        s0 = sampler.snap()
        start = time.monotonic()
        lag_max = 0.0
        for i in range(count):
            d = start + i / rate - time.monotonic()
            if d > 0:
                time.sleep(d)
            else:
                lag_max = max(lag_max, -d)
            data, _ = stamp_payload("S", i, args.size)
            elog.append(ENTITY, "transactions.new", data, "bench")
        got = harness.wait_delivered([client], "S", count * opened, args.settle, args.phase_timeout)
        s1 = sampler.snap()
        result["steady"] = {"published": count, "publisher_max_lag_ms": round(lag_max * 1e3, 2), "expected": count * opened, "received": got, "cpu": harness.Sampler.diff(s0, s1)}

        time.sleep(0.5)
        s0 = sampler.snap()
        first_pub = None
        for i in range(burst):
            data, t = stamp_payload("B", i, args.size)
            first_pub = first_pub or t
            elog.append(ENTITY, "transactions.new", data, "bench")
        pub_done = time.monotonic_ns()
        got = harness.wait_delivered([client], "B", burst * opened, args.settle, args.phase_timeout)
        s1 = sampler.snap()
        result["burst"] = {"published": burst, "publish_ms": round((pub_done - first_pub) / 1e6, 2), "expected": burst * opened, "received": got, "cpu": harness.Sampler.diff(s0, s1)}

        summary = harness.child_request(client, f"DUMP {dump_dir} c0", timeout=60)
        result["client_closed_during_run"] = summary.get("closed", 0)
        for phase, key in (("S", "steady"), ("B", "burst")):
            vals = array.array("d")
            path = os.path.join(dump_dir, f"c0.{phase}.f64")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    vals.frombytes(f.read())
            sv = sorted(vals)
            lat = harness.percentiles(sv)
            lat["mean"] = round(sum(sv) / len(sv) / 1e6, 3) if sv else None
            lat["max"] = round(sv[-1] / 1e6, 3) if sv else None
            result[key]["latency_ms"] = lat
            exp = result[key]["expected"]
            result[key]["loss_pct"] = round(100.0 * (exp - len(sv)) / exp, 3) if exp else None
            ph = summary["phases"].get(phase)
            if ph and sv:
                wall = (ph["last_recv"] - (first_pub if phase == "B" else ph["first_recv"])) / 1e9
                result[key]["delivered_msgs_per_s"] = round(len(sv) / max(wall, 1e-9), 1)
        result["server_rss_kib"]["end"] = harness.rss_kib(server.pid)
        result["ok"] = True
    except Exception as exc:
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for c in reversed(children):
            if c.name != "server":
                try:
                    c.send("EXIT")
                except OSError:
                    pass
        time.sleep(0.5)
        for c in reversed(children):
            c.stop()
        shutil.rmtree(dump_dir, ignore_errors=True)
        rclient.close()
        result["log_dir"] = log_dir
    return result


def run_peer(args, n: int, rate: float, redis_port: int) -> dict:
    """floor_sse from the peers, run from a private copy (its results dir is
    written next to it) with the peers' own venv."""
    copy = Path(tempfile.gettempdir()) / "rtstream-sse-peers"
    if not copy.exists():
        shutil.copytree(PEERS, copy, ignore=shutil.ignore_patterns("results", "node_modules", ".venv"))
    cmd = [PEER_VENV_PY, str(copy / "floor_sse.py"), "--n", str(n), "--rate", str(rate), "--duration", str(args.duration),
           "--redis-port", str(redis_port), "--port", str(free_port()), "--idle-wait", str(args.idle_wait)]
    if args.burst:
        cmd += ["--burst", str(args.burst)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=copy)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"bench": "floor_sse", "ok": False, "error": (out.stderr or out.stdout)[-500:]}
    return json.loads(lines[-1])


def row(r: dict) -> str:
    s, b = r.get("steady", {}), r.get("burst", {})
    sl, bl = s.get("latency_ms") or {}, b.get("latency_ms") or {}
    cpu = s.get("cpu", {})
    return (
        f"| {r['bench']} | {r['params']['n']} | {r['params']['rate']:g}/s | {sl.get('p50')} | {sl.get('p99')} | {sl.get('max')} | {s.get('loss_pct')} | "
        f"{b.get('delivered_msgs_per_s')} | {bl.get('p99')} | {r.get('server_rss_kib', {}).get('per_conn_kib')} | "
        f"{cpu.get('server_core_pct')} | {cpu.get('client0_core_pct')} | {r.get('connect', {}).get('conn_per_s')} | "
        f"{r.get('host', {}).get('busy_pct_1s_before')} | {'' if r.get('ok') else r.get('error', '')[:80]} |"
    )


HEADER = (
    "| server | N | rate | steady p50 ms | steady p99 ms | max ms | loss % | burst delivered msg/s | burst p99 ms | RSS/conn KiB | server % core (steady) | client % core | connects/s | host busy % before | error |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="1000x20,5000x5", help="NxRATE,... (clients x events/s)")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--burst", type=int, default=0, help="0 = auto (200000/N, clipped 20..500), as the peers")
    ap.add_argument("--size", type=int, default=128, help="bytes of the stamped payload fields")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--phase-timeout", type=float, default=60.0)
    ap.add_argument("--no-peer", action="store_true", help="skip floor_sse")
    ap.add_argument("--idle-wait", type=float, default=60.0, help="max wait for the host to go idle first, s")
    ap.add_argument("--idle-below", type=float, default=20.0, help="host busy %% considered idle")
    ap.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench-sse-")
    redis_port = free_port()
    redis_proc = start_redis(redis_port, workdir)
    results = []
    try:
        for spec in args.scenarios.split(","):
            n, rate = spec.lower().split("x")
            n, rate = int(n), float(rate)
            ours = run_ours(args, n, rate, redis_port, workdir)
            print(json.dumps(ours, separators=(",", ":")), flush=True)
            results.append(ours)
            if not args.no_peer:
                peer = run_peer(args, n, rate, redis_port)
                print(json.dumps(peer, separators=(",", ":")), flush=True)
                results.append(peer)
    finally:
        redis_proc.send_signal(signal.SIGTERM)
        redis_proc.wait(10)
    print(HEADER)
    for r in results:
        print(row(r))
    if not args.no_write:
        write_results(args, results)


def write_results(args, results: list[dict]) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    lines = [
        "",
        f"## bench/sse — {now}",
        "",
        f"SSE server (`python -m rtstream_sse`, uvicorn+httptools+uvloop, one process) vs the peer `floor_sse`, same run, same box "
        f"(2 vCPU shared by server, client, Redis and other agents; loadavg before: {load}). One lean client process, all N streams of one "
        f"entity, `topics=*`; steady {args.duration:g} s; events published with `RedisEventLog.append` (ours) / `PUBLISH` (peer). "
        "Latency = client receive − monotonic stamp taken just before publishing.",
        "",
        HEADER,
        *[row(r) for r in results],
        "",
    ]
    ours = {(r["params"]["n"], r["params"]["rate"]): r for r in results if r.get("bench") == "rtstream_sse" and r.get("ok")}
    peers = {(r["params"]["n"], r["params"]["rate"]): r for r in results if r.get("bench") == "floor_sse" and r.get("ok")}
    for key, r in ours.items():
        p = peers.get(key)
        if p:
            a, b = r["steady"]["latency_ms"]["p99"], p["steady"]["latency_ms"]["p99"]
            lines.append(f"- N={key[0]} at {key[1]:g}/s: steady p99 {a} ms vs floor_sse {b} ms (ratio {a / b:.2f}).")
    lines.append("")
    with open(path, "a") as f:
        f.write("\n".join(lines))
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
