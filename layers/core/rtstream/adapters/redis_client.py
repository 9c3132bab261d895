"""The one place Redis clients are made: ``REDIS_URL`` -> a standalone client or
a cluster client, sync or asyncio, with nothing else to configure.

Cluster mode is detected by asking the URL's node (``INFO cluster`` ->
``cluster_enabled:1``); any node of a cluster will do, the cluster client
discovers the others. The answer is cached per URL once a node answered; a
node that cannot be asked is never guessed about: :func:`is_cluster` raises
``redis.ConnectionError`` and the next call asks again. :func:`sync_client`
then returns a :class:`PendingClient` that becomes the right client on first
use (a Lambda cold-started during a Redis outage keeps working afterwards);
:func:`async_client` never asks (it runs on event loops): it uses the mode
:func:`detect` found, off the loop, and a standalone client while none is known.

Pub/sub is not a keyed command: classic ``PUBLISH`` in a cluster reaches every
node's subscribers, so :func:`node_client_async` (a plain connection to the
URL's node) is what subscribers use in both modes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.commands.core import Script
from redis.connection import Encoder
from redis.exceptions import RedisClusterException

log = logging.getLogger(__name__)

_modes: dict[str, bool] = {}
_lock = threading.Lock()

# options a cluster client does not take (one database, no per-client retry list)
_NOT_FOR_CLUSTER = ("db", "retry_on_error", "health_check_interval")


def is_cluster(url: str, *, timeout_s: float = 3.0) -> bool:
    """True when the node at ``url`` runs with ``cluster-enabled yes``."""
    with _lock:
        known = _modes.get(url)
    if known is not None:
        return known
    probe = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        enabled = str(probe.info("cluster").get("cluster_enabled", 0)) == "1"
    except redis.ResponseError:
        enabled = False  # a server without the section (old or a twin): not a cluster
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise redis.ConnectionError(f"cannot tell whether {_shown(url)} is a cluster node: {exc}") from exc
    finally:
        probe.close()
    with _lock:
        _modes[url] = enabled
    return enabled


async def detect(url: str, *, attempts: int = 1, delay_s: float = 0.5) -> bool | None:
    """:func:`is_cluster` in a thread (the event loop never waits on the probe),
    retried ``attempts`` times with a growing pause; None if the node never answered."""
    for attempt in range(max(1, attempts)):
        try:
            return await asyncio.to_thread(is_cluster, url)
        except redis.ConnectionError as exc:
            log.warning("%s", exc)
            if attempt + 1 < attempts:
                await asyncio.sleep(min(5.0, delay_s * 2**attempt))
    return None


def _shown(url: str) -> str:
    """The URL without credentials (never log a password)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"


def _cluster_url(url: str) -> str:
    """A cluster has database 0 only: drop ``/0`` from the path."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", parts.query, parts.fragment))


def _cluster_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in _NOT_FOR_CLUSTER}


class PendingClient:
    """A sync client whose kind is not known yet (the node did not answer): each
    use asks again, and the first answer makes the real client, used from then
    on. Until then every command raises ``redis.ConnectionError``, which the
    adapters translate as they do any Redis outage."""

    def __init__(self, url: str, options: dict[str, Any]):
        self._url = url
        self._options = options
        self._client: Any = None
        self._lock = threading.Lock()

    def resolve(self) -> "redis.Redis | redis.cluster.RedisCluster":
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = _make_sync(self._url, self._options)
        return self._client

    def register_script(self, script: str) -> Script:
        # Script only hashes here; its calls go through __getattr__ (evalsha)
        return Script(self, script)

    def get_encoder(self) -> Encoder:
        return Encoder(self._options.get("encoding", "utf-8"), self._options.get("encoding_errors", "strict"),
                       self._options.get("decode_responses", False))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resolve(), name)


def _make_sync(url: str, options: dict[str, Any]) -> "redis.Redis | redis.cluster.RedisCluster":
    if is_cluster(url):
        try:  # connects now (reads the slot map)
            return redis.cluster.RedisCluster.from_url(_cluster_url(url), **_cluster_options(options))
        except RedisClusterException as exc:
            raise redis.ConnectionError(f"cluster at {_shown(url)} unavailable: {exc}") from exc
    return redis.Redis.from_url(url, **options)


def sync_client(url: str, **options: Any) -> "redis.Redis | redis.cluster.RedisCluster | PendingClient":
    """``redis.Redis`` or ``redis.cluster.RedisCluster`` for ``url``; a
    :class:`PendingClient` while the node cannot be asked."""
    try:
        return _make_sync(url, options)
    except redis.ConnectionError as exc:
        log.warning("%s; deciding on first use", exc)
        return PendingClient(url, options)


def async_client(url: str, **options: Any) -> "redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster":
    """``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster`` for ``url``,
    as :func:`detect` found it (await that first); a standalone client while the
    mode is unknown. Never probes: it is called on event loops, and a probe of a
    node that is down would block the loop for its timeout."""
    with _lock:
        cluster = _modes.get(url, False)
    if cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(_cluster_url(url), **_cluster_options(options))
    return redis.asyncio.Redis.from_url(url, **options)


def node_client_async(url: str, **options: Any) -> "redis.asyncio.Redis":
    """A plain connection to the URL's node, for (P)SUBSCRIBE: reaches every
    ``PUBLISH`` of a cluster too."""
    return redis.asyncio.Redis.from_url(url, **options)


def clustered(client: Any) -> bool:
    """Whether ``client`` is a cluster client (multi-key commands must stay in one slot)."""
    return isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster))


def run_scripts(client: Any, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
    """``(script, keys, args)`` calls in order, in one pipelined round trip (each
    still its own atomic script; a cluster pipeline splits them per node). A
    redis-py that refuses EVALSHA in cluster pipelines (before 7.x) gets them
    one by one: same replies, one round trip each."""
    pipe = client.pipeline(transaction=False)
    try:
        for script, keys, args in calls:
            script(keys=keys, args=args, client=pipe)
    except RedisClusterException:
        return [script(keys=keys, args=args) for script, keys, args in calls]
    return pipe.execute()

