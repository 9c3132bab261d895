"""A local three-master Redis Cluster for the whole session (started and stopped
by the tests, by PID)."""

from __future__ import annotations

import shutil

import pytest
from helpers import LocalRedisCluster  # noqa: E402


@pytest.fixture(scope="session")
def cluster_url():
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.fail("redis-server and redis-cli are needed for the cluster tests; .ci/run installs them")
    cluster = LocalRedisCluster()
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()
