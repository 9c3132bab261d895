"""Fan-out benchmark: publish -> fan-out worker -> gateway emulator -> 1,000 WebSocket clients.

Run (under the shared benchmark lock):

    flock /tmp/rtstream-bench.lock .venv/bin/python bench/fanout/run.py [--n 1000] [--peer-python PY]

What runs, all on this machine:
- ``LocalSystem`` (gateway emulator with the real Lambda handlers in this
  process, moto, a private redis-server), no SSE, no EventBridge;
- one ``python -m rtstream_fanout`` worker child;
- one lean client process holding N connections, each subscribed to ``*`` of
  one entity through the real subscribe route.

Phases (the publisher stamps ``time.time_ns()`` into the event just before
the SDK ``publish`` call; clients record receive - stamp):
1. single: one event to N connections, ``--singles`` times, 0.5 s apart.
   deliveries/s = N / (last receive - publish), per event (median reported);
2. steady: each of ``--rates`` events/s for ``--duration`` s;
3. burst: ``--burst`` events published back to back; deliveries/s over the drain.
Then the peer ``floor_ws`` (../shared/peers, copied to a temp dir because
the shared tree is read-only) runs with the same N for a ratio.
Figures are printed and appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
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
SECRET = "bench-fanout-secret-0123456789abcdef0123456789"
ENTITY = "bench-entity"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, s."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuMeter:
    """CPU used by each named process between ``start()`` and ``stop()``, in µs per delivery."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.before = {k: cpu_seconds(p) for k, p in self.pids.items()}

    def per_delivery(self, deliveries: int) -> dict[str, float]:
        return {k: round((cpu_seconds(p) - self.before[k]) * 1e6 / max(1, deliveries), 1) for k, p in self.pids.items()}


def busy_percent(seconds: float = 1.0) -> float:
    def snap():
        with open("/proc/stat") as fh:
            parts = [int(x) for x in fh.readline().split()[1:]]
        idle = parts[3] + parts[4]
        return sum(parts), idle

    t1, i1 = snap()
    time.sleep(seconds)
    t2, i2 = snap()
    return round(100 * (1 - (i2 - i1) / max(1, t2 - t1)), 1)


class Clients:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    async def command(self, line: str, timeout: float = 30) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write((line + "\n").encode())
        await self.proc.stdin.drain()
        return (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode().strip()

    async def events(self) -> int:
        return json.loads(await self.command("STAT"))["events"]


async def wait_events(clients: Clients, target: int, settle: float = 10.0, timeout: float = 120.0) -> int:
    """Until ``target`` events arrived, or no progress for ``settle`` s, or ``timeout``."""
    start = time.monotonic()
    last, last_change = -1, time.monotonic()
    while time.monotonic() - start < timeout:
        n = await clients.events()
        if n >= target:
            return n
        if n != last:
            last, last_change = n, time.monotonic()
        elif time.monotonic() - last_change > settle:
            return n
        await asyncio.sleep(0.05)
    return last


async def run_ours(args) -> dict:
    from rtstream.adapters.redis_eventlog import AsyncRedisEventLog
    from rtstream.auth import issue_dev_token
    from rtstream_cli.dev import LocalSystem
    import redis.asyncio as aioredis

    log_dir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    overrides = {"RTSTREAM_MAX_CONNECTIONS_PER_USER": "100000", "RTSTREAM_MAX_CONNECTIONS_PER_ENTITY": "100000"}
    system = LocalSystem(ws_port=0, jwt_secret=SECRET, with_worker=False, with_sse=False, with_eventbridge=False,
                         write_state_file=False, settings_overrides=overrides, log_dir=log_dir)
    result: dict = {"n": args.n, "log_dir": str(log_dir)}
    worker = clients_proc = None
    await system.start()
    try:
        metrics_port = free_port()
        env = {**system.child_env, "RTSTREAM_WORKER_METRICS_PORT": str(metrics_port), "RTSTREAM_EMF_INTERVAL_S": "0",
               "RTSTREAM_LOG_LEVEL": "WARNING"}
        with open(log_dir / "worker.log", "ab") as fh:
            worker = subprocess.Popen([sys.executable, "-m", "rtstream_fanout"], env=env, stdout=fh, stderr=subprocess.STDOUT)
        tokens = log_dir / "tokens.txt"
        tokens.write_text("\n".join(issue_dev_token(SECRET, user_id=f"u{i % 100}", entity_id=ENTITY, ttl_seconds=3600) for i in range(args.n)))
        t0 = time.monotonic()
        clients_proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "wsclients.py"), "--url", system.ws_url, "--tokens", str(tokens), "--max-seconds", "900",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=open(log_dir / "clients.log", "ab"))
        clients = Clients(clients_proc)
        ready = (await asyncio.wait_for(clients_proc.stdout.readline(), 300)).decode().split(" ", 3)
        result["connected"], result["failed_connects"] = int(ready[1]), int(ready[2])
        result["connect_subscribe_s"] = round(time.monotonic() - t0, 2)
        if result["failed_connects"]:
            result["connect_errors"] = ready[3].strip()
        # every open connection counts: a subscribe answered by a handler error may still have been recorded
        result["open"] = n = json.loads(await clients.command("STAT"))["open"]
        print(f"[ours] {result['connected']} connections subscribed ({n} open) in {result['connect_subscribe_s']} s", flush=True)

        redis_client = aioredis.Redis.from_url(system.redis_url)
        log = AsyncRedisEventLog(redis_client, system.settings)
        seq = 0

        async def pub() -> None:
            nonlocal seq
            seq += 1
            data = {"transactionId": f"b{seq}", "amount": 1, "merchant": "bench", "seq": seq, "t": time.time_ns()}
            await log.append(ENTITY, "transactions.new", data, "bench")

        # warm-up (first subscriber query, HTTP connection pool)
        for _ in range(5):
            await pub()
            await asyncio.sleep(0.1)
        await wait_events(clients, 5 * n, settle=2)
        warm_last = seq
        result["busy_before_pct"] = await asyncio.to_thread(busy_percent, 1.0)
        redis_pid = int((await redis_client.info("server"))["process_id"])
        meter = CpuMeter({"worker": worker.pid, "gateway_emulator": os.getpid(), "clients": clients_proc.pid, "redis": redis_pid})
        cpu: dict[str, dict] = {}
        meter.start()

        singles = []
        for _ in range(args.singles):
            await pub()
            singles.append(seq)
            await asyncio.sleep(0.5)
        single_expected = (warm_last + len(singles)) * n
        await wait_events(clients, single_expected)
        cpu["single"] = meter.per_delivery(len(singles) * n)
        meter.start()
        steady_runs = []
        done = warm_last + len(singles)
        for rate in args.rates:
            steady_first = seq + 1
            interval = 1.0 / rate
            start = time.monotonic()
            for i in range(int(rate * args.duration)):
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await pub()
            steady_seqs = list(range(steady_first, seq + 1))
            done += len(steady_seqs)
            await wait_events(clients, done * n)
            steady_runs.append((rate, steady_seqs, meter.per_delivery(len(steady_seqs) * n)))
            meter.start()
            await asyncio.sleep(1.0)
        burst_first = seq + 1
        burst_t0 = time.time_ns()
        for _ in range(args.burst):
            await pub()  # back to back, each its own script call
        burst = list(range(burst_first, seq + 1))
        total = (done + len(burst)) * n
        await wait_events(clients, total, timeout=180)
        cpu["burst"] = meter.per_delivery(len(burst) * n)
        result["cpu_us_per_delivery"] = cpu

        dump = log_dir / "latencies.json"
        await clients.command(f"DUMP {dump}", timeout=60)
        lat = {int(k): v for k, v in json.loads(dump.read_text()).items()}

        def phase(seqs):
            values = [x for s in seqs for x in lat.get(s, [[]])[0]]
            return values, sum(len(lat.get(s, [[]])[0]) for s in seqs)

        single_values, single_count = phase(singles)
        per_event_rate = []
        per_event_p99 = []
        for s in singles:
            if s in lat and lat[s][0]:
                values, first_ns, last_ns = lat[s]
                span_ms = max(values)  # publish -> last receive
                per_event_rate.append(len(values) / (span_ms / 1000))
                per_event_p99.append(pct(values, 99))
        burst_values, burst_count = phase(burst)
        burst_last = max((lat[s][2] for s in burst if s in lat), default=burst_t0)
        result["single"] = {
            "events": len(singles), "deliveries": single_count, "expected": len(singles) * n,
            "p50_ms": round(pct(single_values, 50), 2), "p99_ms": round(pct(single_values, 99), 2),
            "max_ms": round(max(single_values), 2) if single_values else None,
            "deliveries_per_s_median": round(statistics.median(per_event_rate), 0) if per_event_rate else None,
            "per_event_p99_ms_median": round(statistics.median(per_event_p99), 2) if per_event_p99 else None,
        }
        result["steady"] = []
        for rate, seqs, cpu_steady in steady_runs:
            values, count = phase(seqs)
            result["steady"].append({
                "rate": rate, "duration_s": args.duration, "deliveries": count, "expected": len(seqs) * n,
                "p50_ms": round(pct(values, 50), 2), "p99_ms": round(pct(values, 99), 2),
                "deliveries_per_s": round(count / args.duration, 0), "cpu_us_per_delivery": cpu_steady,
            })
        result["burst"] = {
            "events": len(burst), "deliveries": burst_count, "expected": len(burst) * n,
            "p50_ms": round(pct(burst_values, 50), 2), "p99_ms": round(pct(burst_values, 99), 2),
            "deliveries_per_s": round(burst_count / max(1e-9, (burst_last - burst_t0) / 1e9), 0),
        }
        result["lost"] = total - sum(len(v[0]) for v in lat.values())
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            text = (await asyncio.wait_for(reader.read(), 5)).decode()
            writer.close()
            result["worker_metrics"] = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                                        if line.startswith("realtime_streaming") and "_total" in line.split()[0]}
        except (OSError, asyncio.TimeoutError, ValueError, IndexError):
            pass
        await redis_client.aclose()
        return result
    finally:
        if clients_proc is not None and clients_proc.returncode is None:
            try:
                clients_proc.stdin.write(b"EXIT\n")
                await asyncio.wait_for(clients_proc.wait(), 10)
            except (OSError, asyncio.TimeoutError):
                clients_proc.kill()
                await clients_proc.wait()
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
        await system.stop()


def run_peer(args) -> dict | None:
    """floor_ws from ../shared/peers, in a writable copy, with its own Redis."""
    python = args.peer_python or peer_python()
    if not python or not Path(python).exists() or not (PEERS / "floor_ws.py").exists():
        print(f"[peer] skipped: no peer venv at {python!r} (see {PEERS}/README.md)", flush=True)
        return None
    work = Path(tempfile.mkdtemp(prefix="peers-"))
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
        proc = subprocess.run([python, str(work / "floor_ws.py"), "--n", str(args.n), "--redis-port", str(port), "--port", str(free_port()),
                               "--idle-wait", "5", "--rate", str(args.rates[0]), "--duration", str(args.duration)],
                              capture_output=True, text=True, timeout=600, cwd=work)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            print(f"[peer] floor_ws produced no result: {proc.stderr[-500:]}", flush=True)
            return None
        return json.loads(lines[-1])
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def _get(d: dict | None, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def append_results(ours: dict, peer: dict | None, args) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    s, b = ours["single"], ours["burst"]
    st = ours["steady"][0]
    lines = [
        f"\n## fanout — {now}\n",
        f"`flock /tmp/rtstream-bench.lock .venv/bin/python bench/fanout/run.py --n {args.n}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}); host busy before: {ours.get('busy_before_pct')}%. "
        "Path: SDK publish (Lua: history + partition stream) -> `rtstream_fanout` worker (consumer group, DynamoDB "
        "subscribers cached, pooled pipelined HTTP/1.1 POSTs) -> gateway emulator `@connections` -> WebSocket -> "
        f"{ours['open']} lean clients in one process (each subscribed to `*` through the real route). "
        "Everything shares the same cores.\n",
        "| phase | deliveries (expected) | p50 ms | p99 ms | deliveries/s |",
        "|---|---|---|---|---|",
        f"| single event x{s['events']} (0.5 s apart) | {s['deliveries']} ({s['expected']}) | {s['p50_ms']} | {s['p99_ms']} | "
        f"{s['deliveries_per_s_median']:.0f} (median per event; per-event p99 median {s['per_event_p99_ms_median']} ms) |",
        *[f"| steady {x['rate']:g}/s x {x['duration_s']:g} s | {x['deliveries']} ({x['expected']}) | {x['p50_ms']} | {x['p99_ms']} | {x['deliveries_per_s']:.0f} |"
          for x in ours["steady"]],
        f"| burst {b['events']} back to back | {b['deliveries']} ({b['expected']}) | {b['p50_ms']} | {b['p99_ms']} | {b['deliveries_per_s']:.0f} |",
        "",
        f"Target (issue 4): >= 5,000 deliveries/s and p99 < 250 ms for one event to 1,000 connections -> this run "
        f"({ours['open']} connections): {'met' if (s['deliveries_per_s_median'] or 0) >= 5000 and s['p99_ms'] < 250 else 'NOT met'}. "
        f"Lost: {ours['lost']}. "
        f"Connect + subscribe of {ours['open']} connections through the real handlers (moto in process): {ours['connect_subscribe_s']} s"
        + (f"; {ours['failed_connects']} subscribe replies were handler errors (connections stayed open and subscribed)." if ours['failed_connects'] else "."),
        "",
        "CPU µs per delivery (worker / gateway emulator process / lean clients / redis): "
        + "; ".join(f"{name} {c['worker']} / {c['gateway_emulator']} / {c['clients']} / {c['redis']}"
                    for name, c in [("single", ours["cpu_us_per_delivery"]["single"]),
                                    *[(f"steady {x['rate']:g}/s", x["cpu_us_per_delivery"]) for x in ours["steady"]],
                                    ("burst", ours["cpu_us_per_delivery"]["burst"])]) + ".",
    ]
    if peer:
        ps50, ps99 = _get(peer, "steady", "latency_ms", "p50"), _get(peer, "steady", "latency_ms", "p99")
        pburst = _get(peer, "burst", "delivered_msgs_per_s")
        lines += [
            "",
            f"Peer in the same run: `floor_ws.py --n {args.n} --rate {args.rates[0]:g} --duration {args.duration:g}` (asyncio websockets.broadcast fed "
            f"by one Redis subscription; no gateway, no registry, no HTTP hop): steady p50 {ps50} ms, p99 {ps99} ms; "
            f"burst of {_get(peer, 'burst', 'published')} {pburst} deliveries/s (host busy {_get(peer, 'steady', 'cpu', 'host_busy_pct')}% in its steady phase).",
        ]
        if ps50 and ps99 and pburst:
            lines.append(
                f"Ratio ours/peer at {st['rate']:g}/s: steady p50 x{st['p50_ms'] / ps50:.1f}, steady p99 x{st['p99_ms'] / ps99:.1f}, "
                f"burst throughput x{b['deliveries_per_s'] / pburst:.2f}."
            )
    text = "\n".join(lines) + "\n"
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach benchmark appends a dated section.\n")
    with open(RESULTS, "a") as fh:
        fh.write(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--singles", type=int, default=20)
    ap.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")], default=[5.0, 20.0],
                    help="steady phases, events/s each (comma-separated); the peer runs at the first")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--peer-python", default=None, help="default: PEERS_PYTHON, else a venv of ../shared/peers/requirements.txt")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = ap.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        ours = runner.run(run_ours(args))
    print(json.dumps(ours, indent=1), flush=True)
    peer = None if args.no_peer else run_peer(args)
    if peer:
        print("[peer] " + json.dumps({k: peer.get(k) for k in ("steady", "burst")}), flush=True)
    if not args.no_write:
        print(append_results(ours, peer, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
