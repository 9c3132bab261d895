"""bench/admission: what a `$connect` costs as an entity fills, exact limits under
concurrency, and what a housekeeping run reads as the registry grows.

    flock /tmp/rtstream-bench.lock .venv/bin/python bench/admission/run.py
    .venv/bin/python bench/admission/run.py --parts admission --no-write

Parts (all against DynamoDB in an in-process moto server with the tables of
template.yaml, and a private redis-server for presence and the event log):

- ``admission``: connect+subscribe through the real Lambda handlers
  (``functions/connect``, ``functions/messages`` as `subscribe`, captured API Gateway events)
  into an empty entity, then into an entity that already holds
  ``--fill`` connections; DynamoDB calls per operation (counted at botocore) and
  wall time, and the ratio full/empty (target <= 1.5).
- ``concurrency``: 50 simultaneous connects (threads) of one user against a user
  limit of 10, and 50 of different users into one entity against an entity limit
  of 10, through ``RealtimeService.connect``; must admit exactly 10.
- ``housekeeping``: registries of 10,000 and 100,000 items (connections and
  their subscriptions, 1% past their TTL, written with BatchWriteItem); one
  ``Housekeeping.run``: items read, calls, wall time; next to a full-table Scan
  (what the previous housekeeping read every minute).

moto's own Query walks every item of a table in Python, so moto's wall time
grows with the table where DynamoDB's does not: "items read" is the figure that
transfers to AWS (it is what DynamoDB bills and what its latency follows).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"
sys.path.insert(0, str(ROOT / "tests"))
from helpers import LambdaContext, SerialMotoServer, handler_file  # noqa: E402  (tests/helpers.py)
SECRET = "bench-secret-0123456789abcdef-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- DynamoDB calls, counted on each client the benchmark and the handlers use ------------------------------

CALLS: Counter = Counter()
ITEMS_READ: Counter = Counter()


def count_dynamodb_calls(client) -> None:
    """Count ``client``'s successful DynamoDB calls and the items they read, through
    botocore's own after-call hook (the call itself is untouched)."""

    def counted(http_response, parsed, model, **_):
        if http_response.status_code >= 300:  # a refused call reads nothing (as before: raised, uncounted)
            return
        operation_name, out = model.name, parsed
        CALLS[operation_name] += 1
        if operation_name in ("Query", "Scan"):
            ITEMS_READ[operation_name] += int(out.get("ScannedCount", out.get("Count", 0)))
        elif operation_name == "GetItem":
            ITEMS_READ[operation_name] += 1 if "Item" in out else 0
        elif operation_name == "BatchGetItem":
            ITEMS_READ[operation_name] += sum(len(v) for v in out.get("Responses", {}).values())

    client.meta.events.register("after-call.dynamodb", counted)


def snapshot() -> tuple[Counter, Counter]:
    return Counter(CALLS), Counter(ITEMS_READ)


def since(before: tuple[Counter, Counter]) -> tuple[Counter, Counter]:
    calls, items = snapshot()
    return calls - before[0], items - before[1]


# ---- environment --------------------------------------------------------------------------------


class Env:
    def __init__(self, args):
        from moto.server import ThreadedMotoServer

        self.workdir = tempfile.mkdtemp(prefix="bench-admission-")
        self.redis_port = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "", "--appendonly", "no", "--dir", self.workdir,
             "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        moto_port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
        self.moto.start()
        self.endpoint = f"http://127.0.0.1:{moto_port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", moto_port), 0.2).close()
                socket.create_connection(("127.0.0.1", self.redis_port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        import boto3

        self.client = boto3.client("dynamodb", endpoint_url=self.endpoint, region_name="us-east-1")
        count_dynamodb_calls(self.client)

    def tables(self) -> dict[str, str]:
        from rtstream_cli.template import create_tables

        suffix = uuid.uuid4().hex[:8]
        names = {"ConnectionsTable": f"conns-{suffix}", "SubscriptionsTable": f"subs-{suffix}"}
        create_tables(self.client, names)
        return names

    def registry(self, tables, clock=None):
        from rtstream.adapters.dynamodb import DynamoDBRegistry

        return DynamoDBRegistry(self.client, connections_table=tables["ConnectionsTable"], subscriptions_table=tables["SubscriptionsTable"], clock=clock)

    def stop(self):
        self.moto.stop()
        self.redis.send_signal(signal.SIGTERM)
        self.redis.wait(10)


# ---- part 1: handler path -------------------------------------------------------------------------


def load_handler(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", handler_file(name))  # the file template.yaml names
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    count_dynamodb_calls(module.runtime.boto3_client("dynamodb"))  # the client the handler's registry uses
    return lambda event: module.handler(event, LambdaContext(name))


def event_for(name: str, connection_id: str, user: str, entity: str) -> dict:
    event = json.loads((EVENTS / f"{name}.json").read_text().replace("__TOKEN__", "unused"))
    ctx = event["requestContext"]
    ctx["connectionId"] = connection_id
    now_ms = int(time.time() * 1000)
    ctx["connectedAt"] = now_ms
    ctx["requestTimeEpoch"] = now_ms
    auth = ctx.setdefault("authorizer", {})
    auth.update(principalId=user, userId=user, entityId=entity, role="user")
    return event


def part_admission(env: Env, args) -> dict:
    import logging

    logging.disable(logging.WARNING)
    tables = env.tables()
    os.environ.update(
        CONNECTIONS_TABLE=tables["ConnectionsTable"], SUBSCRIPTIONS_TABLE=tables["SubscriptionsTable"], AWS_ENDPOINT_URL=env.endpoint,
        REDIS_URL=f"redis://127.0.0.1:{env.redis_port}/0", RTSTREAM_JWT_SECRET=SECRET, POWERTOOLS_TRACE_DISABLED="true",
        POWERTOOLS_METRICS_NAMESPACE="RealtimeStreaming", POWERTOOLS_SERVICE_NAME="realtime-streaming",
        RTSTREAM_MAX_CONNECTIONS_PER_ENTITY=str(args.fill + 10 * args.k), RTSTREAM_MAX_CONNECTIONS_PER_USER="10",
    )
    connect, subscribe = load_handler("connect"), load_handler("subscribe")
    devnull = open(os.devnull, "w")

    def measure(entity: str, tag: str) -> dict:
        calls_connect: Counter = Counter()
        calls_subscribe: Counter = Counter()
        t_connect = t_subscribe = 0.0
        with contextlib.redirect_stdout(devnull):  # Powertools prints EMF per invocation
            for i in range(args.k):
                cid = f"{tag}{i:05d}AAAA="
                user = f"{tag}-user-{i}"
                before = snapshot()
                t0 = time.perf_counter()
                out = connect(event_for("connect", cid, user, entity))
                t1 = time.perf_counter()
                calls_connect += since(before)[0]
                assert out["statusCode"] == 200, out
                sub = event_for("subscribe", cid, user, entity)
                sub["body"] = json.dumps({"type": "subscribe", "topic": "transactions.new"})
                before = snapshot()
                t2 = time.perf_counter()
                reply = subscribe(sub)
                t3 = time.perf_counter()
                calls_subscribe += since(before)[0]
                assert reply["statusCode"] == 200, reply
                t_connect += t1 - t0
                t_subscribe += t3 - t2
        return {
            "entity": entity,
            "connects": args.k,
            "connect_ms": round(t_connect / args.k * 1e3, 2),
            "subscribe_ms": round(t_subscribe / args.k * 1e3, 2),
            "connect_subscribe_ms": round((t_connect + t_subscribe) / args.k * 1e3, 2),
            "dynamodb_calls_per_connect": {k: round(v / args.k, 2) for k, v in sorted(calls_connect.items())},
            "dynamodb_calls_per_subscribe": {k: round(v / args.k, 2) for k, v in sorted(calls_subscribe.items())},
        }

    measure("warmup-entity", "w")  # cold start, connection pools
    empty = measure("empty-entity", "e")
    registry = env.registry(tables)
    from rtstream.models import Connection, Principal

    t0 = time.perf_counter()
    now = int(time.time())
    for i in range(args.fill):
        registry.add_connection(Connection(f"fill{i:05d}BBBB=", Principal(f"fill-user-{i // 10}", "full-entity"), connected_at_ms=now * 1000,
                                           expires_at=now + 7500))
    fill_s = time.perf_counter() - t0
    held = registry.count_entity_connections("full-entity", int(time.time()))
    full = measure("full-entity", "f")
    ratio = full["connect_subscribe_ms"] / empty["connect_subscribe_ms"]
    calls_equal = empty["dynamodb_calls_per_connect"] == full["dynamodb_calls_per_connect"]
    return {"empty": empty, "full": full, "full_entity_held_before": held, "fill_s": round(fill_s, 1), "ratio_full_over_empty": round(ratio, 2),
            "same_dynamodb_calls": calls_equal, "target_met": ratio <= 1.5 and calls_equal}


# ---- part 2: exact under concurrency ---------------------------------------------------------------


def part_concurrency(env: Env, args) -> dict:
    import boto3

    from rtstream.adapters.dynamodb import DynamoDBRegistry
    from rtstream.errors import TooManyConnections
    from rtstream.models import Principal
    from rtstream.service import RealtimeService
    from rtstream.settings import Settings

    # DynamoDB writes an item atomically with its condition; moto's threaded server does not
    out = {}
    with SerialMotoServer() as serial:
        serial_client = boto3.client("dynamodb", endpoint_url=serial.endpoint, region_name="us-east-1")
        for case in ("user", "entity"):
            tables = env.tables()
            settings = Settings(jwt_secret=SECRET, max_connections_per_user=10, max_connections_per_entity=10 if case == "entity" else 1000)
            registry = DynamoDBRegistry(serial_client, connections_table=tables["ConnectionsTable"], subscriptions_table=tables["SubscriptionsTable"])
            service = RealtimeService(registry=registry, settings=settings)
            barrier = threading.Barrier(50)
            admitted, refused, errors = [], [], []

            def one(i):
                principal = Principal("alice" if case == "user" else f"user-{i}", "acme")
                barrier.wait()
                try:
                    service.connect(principal, f"c{i:02d}AAAA=")
                    admitted.append(i)
                except TooManyConnections:
                    refused.append(i)
                except Exception as exc:  # noqa: BLE001
                    errors.append(repr(exc))

            threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            wall = time.perf_counter() - t0
            records = env.client.scan(TableName=tables["ConnectionsTable"], Select="COUNT", FilterExpression="attribute_exists(entityId)")["Count"]
            out[case] = {"simultaneous": 50, "limit": 10, "admitted": len(admitted), "refused": len(refused), "errors": errors[:3],
                         "records": records, "wall_s": round(wall, 2), "exact": len(admitted) == 10 == records and not errors}
    return out


# ---- part 3: housekeeping cost ----------------------------------------------------------------------


def write_registry(env: Env, tables: dict[str, str], n_items: int, stale_share: float) -> dict:
    """n_items registry items: connections with one subscription each (2 items per
    connection), ``stale_share`` of them past their TTL, plus the counters (one per
    user and entity) the admissions would have left; BatchWriteItem, 25 at a time."""
    from rtstream.adapters.dynamodb import DynamoDBRegistry
    from rtstream.models import Connection, Principal, Subscription

    reg: DynamoDBRegistry = env.registry(tables)
    now = int(time.time())
    n_conn = n_items // 2
    n_stale = int(n_conn * stale_share)
    conns, subs = [], []
    users: Counter = Counter()
    entities: Counter = Counter()
    for i in range(n_conn):
        stale = i < n_stale
        expires = now - 60 - i % 3000 if stale else now + 600 + i % 6900
        principal = Principal(f"u{i // 5}", f"ent{i // 500}")
        c = Connection(f"c{i:07d}AAAA=", principal, transport="sse" if i % 4 == 0 else "websocket", connected_at_ms=(expires - 7500) * 1000,
                       expires_at=expires)
        item = reg._connection_item(c)
        item["channels"] = {"SS": [f"{principal.entity_id}#*"]}
        conns.append(item)
        subs.append(reg._subscription_item(Subscription(c.connection_id, principal.entity_id, "*", user_id=principal.user_id, expires_at=expires)))
        users[(principal.user_id, c.transport)] += 1
        entities[(principal.entity_id, c.transport)] += 1
    counters = []
    for kind, tally in (("u", users), ("e", entities)):
        merged: dict[str, Counter] = {}
        for (ident, transport), n in tally.items():
            merged.setdefault(ident, Counter())[transport] += n
        for ident, by_t in merged.items():
            key = f"#{kind}#{ident}"
            expires = now + 7500
            from rtstream.adapters.dynamodb import ENTITY_COUNTER, USER_COUNTER, expiry_bucket

            bucket = expiry_bucket(USER_COUNTER if kind == "u" else ENTITY_COUNTER, expires, key)
            counters.append({"connectionId": {"S": key}, "n": {"N": str(sum(by_t.values()))}, "nWebsocket": {"N": str(by_t["websocket"])},
                             "nSse": {"N": str(by_t["sse"])}, "ttl": {"N": str(expires)}, "expiryBucket": {"S": bucket},
                             "changedAt": {"N": str(now - 3600)}})

    t0 = time.perf_counter()
    for table, items in ((tables["ConnectionsTable"], conns + counters), (tables["SubscriptionsTable"], subs)):
        for start in range(0, len(items), 25):
            pending = {table: [{"PutRequest": {"Item": it}} for it in items[start:start + 25]]}
            while pending:
                pending = env.client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
    return {"connections": n_conn, "subscriptions": n_conn, "counters": len(counters), "stale_connections": n_stale,
            "write_s": round(time.perf_counter() - t0, 1)}


def part_housekeeping(env: Env, args) -> dict:
    from rtstream.hygiene import Housekeeping

    out = {}
    for n_items in args.registry_sizes:
        tables = env.tables()
        registry = env.registry(tables)
        # a previous run has set the sweep cursors (a first run looks back a day, once)
        Housekeeping(registry=registry).run()
        written = write_registry(env, tables, n_items, args.stale_share)
        runs = []
        for label in ("sweep", "steady"):  # the first run removes the stale 1%, the next finds nothing
            before = snapshot()
            t0 = time.perf_counter()
            report = Housekeeping(registry=registry, batch=200, max_batches=100, budget_seconds=600).run()
            wall = time.perf_counter() - t0
            calls, items = since(before)
            runs.append({"run": label, "wall_s": round(wall, 2), "items_read": sum(items.values()), "items_read_by_op": dict(items),
                         "calls": sum(calls.values()), "calls_by_op": dict(calls), "swept_connections": report.connections_swept,
                         "swept_subscriptions": report.subscriptions_swept, "active": report.active, "errors": report.errors,
                         "incomplete": report.incomplete})
        before = snapshot()
        t0 = time.perf_counter()
        scanned = 0
        kwargs = {"TableName": tables["ConnectionsTable"], "Select": "COUNT"}
        while True:
            page = env.client.scan(**kwargs)
            scanned += page["ScannedCount"]
            if not page.get("LastEvaluatedKey"):
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        full_scan = {"items_read": scanned, "wall_s": round(time.perf_counter() - t0, 2), "note": "one Scan of the connections table alone"}
        expected_live = written["connections"] - written["stale_connections"]
        out[str(n_items)] = {"written": written, "runs": runs, "previous_design_per_run_at_least": full_scan,
                             "active_is_exact": sum(runs[-1]["active"].values()) == expected_live}
        for table in tables.values():
            env.client.delete_table(TableName=table)
    return out


# ---- report -----------------------------------------------------------------------------------------


def markdown(results: dict, args) -> list[str]:
    lines = []
    a = results.get("admission")
    if a:
        lines += [
            "| entity holds | connect ms | subscribe ms | connect+subscribe ms | DynamoDB calls per connect | per subscribe |",
            "|---|---|---|---|---|---|",
        ]
        for key, held in (("empty", 0), ("full", a["full_entity_held_before"])):
            r = a[key]
            lines.append(f"| {held} | {r['connect_ms']} | {r['subscribe_ms']} | {r['connect_subscribe_ms']} | "
                         f"{json.dumps(r['dynamodb_calls_per_connect'])} | {json.dumps(r['dynamodb_calls_per_subscribe'])} |")
        lines += ["", f"Ratio full/empty (connect+subscribe wall time): **{a['ratio_full_over_empty']}** (target <= 1.5); same DynamoDB calls: "
                      f"{a['same_dynamodb_calls']}; target {'met' if a['target_met'] else 'NOT met'}. {args.k} connects each, handler path "
                      f"(functions/connect + functions/messages as subscribe, Powertools, Redis presence) against moto in process.", ""]
    c = results.get("concurrency")
    if c:
        lines += ["| 50 simultaneous connects (threads, RealtimeService.connect, moto) | limit | admitted | refused | records | exact |", "|---|---|---|---|---|---|"]
        for case, r in c.items():
            lines.append(f"| one {case} | {r['limit']} | {r['admitted']} | {r['refused']} | {r['records']} | {r['exact']} |")
        lines.append("")
    h = results.get("housekeeping")
    if h:
        lines += ["| registry items | run | items read | calls | wall s (moto) | swept conns / subs | active (exact) | a full Scan of the connections table reads |",
                  "|---|---|---|---|---|---|---|---|"]
        for n, r in h.items():
            for run in r["runs"]:
                lines.append(f"| {int(n):,} | {run['run']} | {run['items_read']} | {run['calls']} | {run['wall_s']} | "
                             f"{run['swept_connections']} / {run['swept_subscriptions']} | {sum(run['active'].values())} ({r['active_is_exact']}) | "
                             f"{r['previous_design_per_run_at_least']['items_read']} items, {r['previous_design_per_run_at_least']['wall_s']} s |")
        lines += ["", "Items read = Query/Scan ScannedCount + GetItem/BatchGetItem items (what DynamoDB bills and its latency follows). "
                      "moto's Query walks the whole table in Python, so its wall time still grows with the table; DynamoDB's does not.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="admission,concurrency,housekeeping")
    ap.add_argument("--k", type=int, default=100, help="connects measured per entity")
    ap.add_argument("--fill", type=int, default=1000, help="connections the full entity holds first")
    ap.add_argument("--registry-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 100_000])
    ap.add_argument("--stale-share", type=float, default=0.01)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    env = Env(args)
    results: dict = {"bench": "admission", "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    with open("/proc/loadavg") as f:
        results["loadavg_before"] = " ".join(f.read().split()[:3])
    try:
        parts = {"admission": part_admission, "concurrency": part_concurrency, "housekeeping": part_housekeeping}
        for name in args.parts.split(","):
            t0 = time.perf_counter()
            results[name] = parts[name](env, args)
            print(json.dumps({name: results[name], "part_s": round(time.perf_counter() - t0, 1)}, separators=(",", ":")), flush=True)
    finally:
        env.stop()
    lines = markdown(results, args)
    print("\n".join(lines))
    if not args.no_write:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        head = ["", f"## bench/admission — {now}", "",
                f"`bench/admission/run.py --parts {args.parts}` on a 2-vCPU box shared with other jobs (loadavg before: {results['loadavg_before']}); "
                "DynamoDB = moto in process, Redis = private redis-server. No peer: this measures our own cost as an entity or a table grows "
                "(the previous design: 136 s for 1,000 connects into one entity, 7.4/s, and a full-table Scan per housekeeping run).", ""]
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n".join(head + lines) + "\n")
        print(f"appended to {ROOT / 'bench' / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
