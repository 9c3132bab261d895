"""``python -m rtstream_sse``: the SSE container task.

Configuration from the environment (``Settings.from_env`` and
:class:`~rtstream_sse.config.SSEConfig`). With ``CONNECTIONS_TABLE`` set, the
per-user limit is counted in the shared DynamoDB registry (so WebSocket and SSE
share it); ``AWS_ENDPOINT_URL`` points boto3 at a local emulator. The token key:
``RTSTREAM_JWT_SECRET``, ``RTSTREAM_JWKS_URL``, or the SSM SecureString named by
``RTSTREAM_JWT_SECRET_PARAM`` (read at start, Powertools Parameters).

SIGTERM / SIGINT: stop accepting, tell every client to reconnect (``retry:``
hint) and end the streams, then exit. Clients resume with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import uvicorn

from rtstream.settings import Settings

from .app import SSEApplication, create_app
from .config import SSEConfig

log = logging.getLogger("rtstream_sse")


class GracefulServer(uvicorn.Server):
    """uvicorn, with the SSE drain between "stop accepting" and "wait for connections"."""

    def __init__(self, config: uvicorn.Config, app: Any, grace_seconds: float):
        super().__init__(config)
        self.rt_app = app
        self.grace_seconds = grace_seconds

    async def shutdown(self, sockets: Any = None) -> None:
        for server in self.servers:
            server.close()  # no new connections while clients are told to go
        ended = self.rt_app.rt.drain()
        log.info("shutdown: told %d SSE client(s) to reconnect", ended)
        # Idle keep-alive connections (a page, its scripts, /metrics scrapes) close
        # now rather than at their keep-alive timeout; connections mid-response
        # (the ended streams' last chunk) close when it is written.
        for connection in list(self.server_state.connections):
            connection.shutdown()
        deadline = asyncio.get_running_loop().time() + self.grace_seconds
        while self.server_state.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await super().shutdown(sockets)


def build_app(env: dict[str, str] | None = None) -> SSEApplication:
    env = dict(os.environ if env is None else env)
    from rtstream.adapters.ssm_secret import settings_with_jwt_secret

    # RTSTREAM_JWT_SECRET_PARAM (an SSM SecureString) when no literal secret / JWKS URL is set
    settings = settings_with_jwt_secret(Settings.from_env(env, own=("sse",)))
    config = settings.sse

    from rtstream.adapters.redis_client import sync_client
    from rtstream.adapters.redis_eventlog import RedisEventLog
    from rtstream.adapters.redis_limits import RedisPresence

    sync_redis = sync_client(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
    presence = RedisPresence(sync_redis, settings)
    registry = None
    if settings.runtime.uses_registry:
        import boto3

        from rtstream.adapters.dynamodb import DynamoDBRegistry

        dynamodb = boto3.client("dynamodb", endpoint_url=settings.runtime.aws_endpoint_url or None)
        from rtstream.service import TTL_SLACK_SECONDS

        registry = DynamoDBRegistry(dynamodb, connections_table=settings.connections_table, subscriptions_table=settings.subscriptions_table,
                                    connection_ttl_seconds=settings.max_connection_seconds + TTL_SLACK_SECONDS)
    return create_app(settings, config=config, registry=registry, presence=presence, event_log=RedisEventLog(sync_redis, settings))


def main() -> None:
    configure_logging()
    serve(build_app())


def configure_logging() -> None:
    from rtstream.settings import RuntimeSettings

    logging.basicConfig(level=RuntimeSettings.from_env(os.environ).log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def serve(app: Any) -> None:
    """Run ``app`` (the SSE app, or an ASGI app wrapping it with an ``rt`` of its
    own: `rtstream dev`'s) with uvicorn until SIGTERM / SIGINT, then drain."""
    config = SSEConfig.from_env()
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop=loop,
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=config.uvicorn_log_level,
        backlog=4096,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=max(1, int(config.shutdown_grace_seconds)),
        proxy_headers=True,
        forwarded_allow_ips=config.forwarded_allow_ips,
    )
    server = GracefulServer(uv_config, app, config.shutdown_grace_seconds)
    print(f"SSE: http://{config.host}:{config.port}/events", flush=True)
    server.run()


if __name__ == "__main__":
    main()
