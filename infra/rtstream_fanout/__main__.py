"""``python -m rtstream_fanout``: the worker, configured from the environment
through ``Settings.from_env()`` (the shared names: REDIS_URL, CONNECTIONS_TABLE,
SUBSCRIPTIONS_TABLE, RTSTREAM_FANOUT_PARTITIONS, ...; the worker's own in
``settings.worker``, see the README's Configuration table):

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

from rtstream.adapters.prometheus import serve_prometheus
from rtstream.settings import Settings

from .metrics import WorkerMetrics
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
        endpoint_url=settings.runtime.aws_endpoint_url or None,
        config=Config(max_pool_connections=32, retries={"mode": "standard", "max_attempts": 3}),
    )
    return DynamoDBRegistry(client, connections_table=settings.connections_table, subscriptions_table=settings.subscriptions_table)


async def amain(env: dict[str, str] | None = None) -> int:
    settings = Settings.from_env(dict(os.environ if env is None else env), own=("worker",))
    own = settings.worker
    endpoint = settings.management_endpoint
    if not endpoint:
        log.error("RTSTREAM_MANAGEMENT_ENDPOINT is required")
        return 2
    metrics = WorkerMetrics()
    poster = ManagementPoster(
        endpoint,
        pool_size=own.management_pool,
        sign=_should_sign(endpoint, own.management_sign),
        region=settings.runtime.aws_region or None,
        pipelining=settings.fanout_pipelining_flag,
    )
    worker = FanoutWorker(
        settings,
        registry=build_registry(settings),
        poster=poster,
        worker_id=own.worker_id or None,
        metrics=metrics,
        lease_ms=own.lease_ms or None,
        stall_s=own.stall_seconds,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)

    server = None
    if own.metrics_port:
        server = await serve_prometheus(metrics.registry, own.metrics_port, own.metrics_host, health=worker.health)
    emf_task = None
    namespace = settings.runtime.metrics_namespace
    if own.emf_interval_seconds > 0:
        emf_task = asyncio.create_task(_emf_loop(metrics, own.emf_interval_seconds, namespace))

    await worker.start()
    await worker.wait_stopped()
    await worker.stop()
    if emf_task is not None:
        emf_task.cancel()
        await asyncio.gather(emf_task, return_exceptions=True)
    _flush_emf(metrics, namespace)
    if server is not None:
        server.close()
        await server.wait_closed()
    return 0


def _flush_emf(metrics: WorkerMetrics, namespace: str) -> None:
    try:
        from aws_lambda_powertools.metrics import EphemeralMetrics

        from rtstream import metrics as names

        # Ephemeral: `Metrics` shares one metric set per process, so a flush here would
        # also write (with this dimension) what in-process Lambda handlers added (`rtstream dev`)
        emf = EphemeralMetrics(namespace=namespace, service=names.SERVICE_WORKER)
        metrics.flush_emf(emf)
    except Exception as exc:  # noqa: BLE001 - metrics must never stop the worker
        log.warning("EMF flush failed: %s", exc)


async def _emf_loop(metrics: WorkerMetrics, interval: float, namespace: str) -> None:
    while True:
        await asyncio.sleep(interval)
        _flush_emf(metrics, namespace)


def main() -> int:
    logging.basicConfig(
        level=Settings.from_env().runtime.log_level,
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
