"""The one place Redis clients are made: ``REDIS_URL`` -> a standalone client or
a cluster client, sync or asyncio, with nothing else to configure.

Cluster mode is detected by asking the URL's node (``INFO cluster`` ->
``cluster_enabled:1``); any node of a cluster will do, the cluster client
discovers the others. The answer is cached per URL once a node answered (a
failed probe is not cached: the next client asks again).

Pub/sub is not a keyed command: classic ``PUBLISH`` in a cluster reaches every
node's subscribers, so :func:`node_client_async` (a plain connection to the
URL's node) is what subscribers use in both modes.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

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
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False  # unknown yet: not cached, the caller's client fails and retries
    finally:
        probe.close()
    with _lock:
        _modes[url] = enabled
    return enabled


def _cluster_url(url: str) -> str:
    """A cluster has database 0 only: drop ``/0`` from the path."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", parts.query, parts.fragment))


def _cluster_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in _NOT_FOR_CLUSTER}


def sync_client(url: str, **options: Any) -> "redis.Redis | redis.cluster.RedisCluster":
    """``redis.Redis`` or ``redis.cluster.RedisCluster`` for ``url``."""
    if is_cluster(url):
        return redis.cluster.RedisCluster.from_url(_cluster_url(url), **_cluster_options(options))
    return redis.Redis.from_url(url, **options)


def async_client(url: str, **options: Any) -> "redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster":
    """``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster`` for ``url``."""
    if is_cluster(url):
        return redis.asyncio.cluster.RedisCluster.from_url(_cluster_url(url), **_cluster_options(options))
    return redis.asyncio.Redis.from_url(url, **options)


def node_client_async(url: str, **options: Any) -> "redis.asyncio.Redis":
    """A plain connection to the URL's node, for (P)SUBSCRIBE: reaches every
    ``PUBLISH`` of a cluster too."""
    return redis.asyncio.Redis.from_url(url, **options)


def clustered(client: Any) -> bool:
    """Whether ``client`` is a cluster client (multi-key commands must stay in one slot)."""
    return isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster))
