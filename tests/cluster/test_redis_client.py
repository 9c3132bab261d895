"""The client factory: cluster mode from the URL alone, never guessed."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from helpers import RestartableRedis, free_port  # noqa: E402

from rtstream.adapters import redis_client


def test_a_single_server_gets_plain_clients(redis_url):
    assert redis_client.is_cluster(redis_url) is False
    client = redis_client.sync_client(redis_url, socket_connect_timeout=2)
    assert type(client) is redis.Redis and client.ping()
    client.close()
    assert type(redis_client.async_client(redis_url)) is redis.asyncio.Redis
    assert not redis_client.clustered(client)


def test_any_node_of_a_cluster_gets_cluster_clients(cluster_url):
    sync = redis_client.sync_client(cluster_url, socket_connect_timeout=2, health_check_interval=30)
    assert isinstance(sync, redis.cluster.RedisCluster) and redis_client.clustered(sync)
    for node in sync.get_primaries():
        url = f"redis://{node.host}:{node.port}/0"
        assert redis_client.is_cluster(url)
        assert isinstance(redis_client.async_client(url), redis.asyncio.cluster.RedisCluster)
    # keys on every node through one client made from one node's URL
    names = [f"rt:probe:{{p{p}}}" for p in range(8)]
    for name in names:
        sync.set(name, name, ex=30)
    assert [sync.get(n).decode() for n in names] == names
    assert len({sync.get_node_from_key(n).name for n in names}) == 3
    sync.close()


def test_a_node_that_does_not_answer_is_never_guessed_about():
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(redis.ConnectionError) as raised:
        redis_client.is_cluster(url, timeout_s=0.5)
    assert "s3cret" not in str(raised.value)  # no password in what gets logged
    # the async factory serves reconnect loops: standalone for now, nothing remembered
    assert type(redis_client.async_client(url)) is redis.asyncio.Redis
    assert url not in redis_client._modes
    assert asyncio.run(redis_client.detect(url, attempts=2, delay_s=0.01)) is None


def test_a_sync_client_made_during_an_outage_becomes_the_right_client_when_redis_answers():
    """A Lambda cold-started while Redis is down: its event log fails with the
    coded error, then works once Redis is back, without a new client."""
    from rtstream.adapters.redis_eventlog import RedisEventLog
    from rtstream.errors import BackendUnavailable
    from rtstream.settings import Settings

    server = RestartableRedis(appendonly=False)
    try:
        client = redis_client.sync_client(server.url, socket_connect_timeout=0.5)
        assert isinstance(client, redis_client.PendingClient)
        log = RedisEventLog(client, Settings())
        with pytest.raises(BackendUnavailable):
            log.append("acme", "balance.updated", {"accountId": "a", "newBalance": 1, "change": 1}, "t")
        server.start()
        event = log.append("acme", "balance.updated", {"accountId": "a", "newBalance": 1, "change": 1}, "t")
        assert [e.id for e in log.replay("acme", "0-0")] == [event.id]
        assert type(client.resolve()) is redis.Redis
        client.close()
    finally:
        server.stop()


def test_cluster_url_drops_the_database_and_keeps_credentials():
    assert redis_client._cluster_url("rediss://u:p@h:6379/0") == "rediss://u:p@h:6379"
    assert redis_client._cluster_url("redis://h:7000") == "redis://h:7000"
