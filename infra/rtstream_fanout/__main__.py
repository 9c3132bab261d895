"""``python -m rtstream_fanout``: the worker, configured from the environment.

``Settings.from_env()`` names (REDIS_URL, CONNECTIONS_TABLE, SUBSCRIPTIONS_TABLE,
RTSTREAM_FANOUT_PARTITIONS, ...) plus:

- ``RTSTREAM_MANAGEMENT_ENDPOINT`` (required): ``https://{api}.execute-api.{region}.amazonaws.com/{stage}``
  or the emulator's ``http://127.0.0.1:port/{stage}``;
- ``RTSTREAM_MANAGEMENT_SIGN``: ``auto`` (default: SigV4 for ``*.amazonaws.com``), ``1`` or ``0``;
- ``RTSTREAM_FANOUT_PIPELINING`` (Settings): ``auto`` (default: off when signing, on otherwise), ``on``, ``off``;
- ``RTSTREAM_WORKER_ID`` (default host-pid-random), ``RTSTREAM_FANOUT_LEASE_MS``
  (default 10000), ``RTSTREAM_MANAGEMENT_POOL`` (HTTP connections, default 8);
- ``RTSTREAM_WORKER_STALL_S`` (default 30): ``/healthz`` answers 503 when Redis
  was not reached, or an owned stream held work without progress, for this long;
- ``RTSTREAM_WORKER_METRICS_PORT``: serve Prometheus ``/metrics`` and ``/healthz`` there
  (``RTSTREAM_WORKER_METRICS_HOST``, default 127.0.0.1);
- ``RTSTREAM_EMF_INTERVAL_S``: CloudWatch EMF flush period (default 60; 0 = off);
- ``AWS_ENDPOINT_URL``: a LocalStack-compatible endpoint for DynamoDB.

SIGTERM/SIGINT: stop reading, finish in-flight entries, release leases, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from rtstream.settings import Settings

from .metrics import WorkerMetrics, serve_prometheus
from .poster import ManagementPoster
from .worker import FanoutWorker

log = logging.getLogger("rtstream_fanout")


def _should_sign(endpoint: str, mode: str) -> bool:
    if mode in ("1", "true", "yes"):
        return True
    if mode in ("0", "false", "no"):
        return False
    from urllib.parse import urlsplit

    return (urlsplit(endpoint).hostname or "").endswith(".amazonaws.com")


def build_registry(settings: Settings):
    import boto3
    from botocore.config import Config

    from rtstream.adapters.dynamodb import DynamoDBRegistry

    # AWS_ENDPOINT_URL is honoured by boto3 itself; pooled for concurrent Queries
    client = boto3.client(
        "dynamodb",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        config=Config(max_pool_connections=32, retries={"mode": "standard", "max_attempts": 3}),
    )
    return DynamoDBRegistry(client, connections_table=settings.connections_table, subscriptions_table=settings.subscriptions_table)


async def amain(env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    settings = Settings.from_env(env)
    endpoint = settings.management_endpoint
    if not endpoint:
        log.error("RTSTREAM_MANAGEMENT_ENDPOINT is required")
        return 2
    metrics = WorkerMetrics()
    poster = ManagementPoster(
        endpoint,
        pool_size=int(env.get("RTSTREAM_MANAGEMENT_POOL") or 8),
        sign=_should_sign(endpoint, (env.get("RTSTREAM_MANAGEMENT_SIGN") or "auto").lower()),
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        pipelining=settings.fanout_pipelining_flag,
    )
    worker = FanoutWorker(
        settings,
        registry=build_registry(settings),
        poster=poster,
        worker_id=env.get("RTSTREAM_WORKER_ID") or None,
        metrics=metrics,
        lease_ms=int(env.get("RTSTREAM_FANOUT_LEASE_MS") or 0) or None,
        stall_s=float(env.get("RTSTREAM_WORKER_STALL_S") or 30),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)

    server = None
    port = env.get("RTSTREAM_WORKER_METRICS_PORT")
    if port:
        server = await serve_prometheus(metrics.registry, int(port), env.get("RTSTREAM_WORKER_METRICS_HOST") or "127.0.0.1", health=worker.health)
    emf_task = None
    emf_interval = float(env.get("RTSTREAM_EMF_INTERVAL_S") or 60)
    if emf_interval > 0:
        emf_task = asyncio.create_task(_emf_loop(metrics, emf_interval, worker))

    await worker.start()
    await worker.wait_stopped()
    await worker.stop()
    if emf_task is not None:
        emf_task.cancel()
        await asyncio.gather(emf_task, return_exceptions=True)
    _flush_emf(metrics)
    if server is not None:
        server.close()
        await server.wait_closed()
    return 0


def _flush_emf(metrics: WorkerMetrics) -> None:
    try:
        from aws_lambda_powertools import Metrics

        from rtstream import metrics as names

        emf = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or names.NAMESPACE, service=names.SERVICE_WORKER)
        metrics.flush_emf(emf)
    except Exception as exc:  # noqa: BLE001 - metrics must never stop the worker
        log.warning("EMF flush failed: %s", exc)


async def _emf_loop(metrics: WorkerMetrics, interval: float, worker: FanoutWorker) -> None:
    while True:
        await asyncio.sleep(interval)
        _flush_emf(metrics)


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("RTSTREAM_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(amain())


if __name__ == "__main__":
    sys.exit(main())
