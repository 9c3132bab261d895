"""AWS services for the local system: an in-process moto server on a free
loopback port, or any LocalStack-compatible endpoint (LocalStack, MiniStack, a
moto server): every client is bound to that endpoint explicitly, and the
process environment is neither read for it nor changed.

Credentials are always fake ones: a local endpoint never needs real keys, and
real keys are never sent to one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlparse

from .localredis import free_port, wait_for_port

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


class LocalAws:
    """``await start()`` -> endpoint URL; ``client(service)``; ``await stop()``."""

    def __init__(self, endpoint: str | None = None, *, region: str = "us-east-1"):
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.region = region
        self.kind = "external" if endpoint else "moto"
        self._moto = None
        self._port = 0

    def plan(self) -> str:
        """The endpoint, known before the server runs (a free port is chosen for moto)."""
        if self.endpoint is None:
            self._port = free_port()
            self.endpoint = f"http://127.0.0.1:{self._port}"
        return self.endpoint

    async def start(self) -> str:
        if self.kind == "external":
            parsed = urlparse(self.endpoint)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(f"--aws-endpoint must be an http(s) URL, got {self.endpoint!r}")
            return self.endpoint
        self.plan()
        # importing moto takes a while: off the event loop, so the rest of the system boots meanwhile
        self._moto = await asyncio.to_thread(_start_moto, self._port)
        await wait_for_port("127.0.0.1", self._port, 10)
        return self.endpoint

    def client(self, service: str) -> Any:
        import boto3

        # an explicit endpoint: AWS_ENDPOINT_URL in this process's environment does not apply
        return boto3.client(service, endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            aws_session_token=FAKE_CREDENTIALS["AWS_SESSION_TOKEN"])

    def environment(self) -> dict[str, str]:
        """What a process needs to reach these services with boto3, unchanged."""
        assert self.endpoint, "plan() or start() first"
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region,
                **FAKE_CREDENTIALS}

    async def stop(self) -> None:
        if self._moto is not None:
            moto, self._moto = self._moto, None
            await asyncio.to_thread(moto.stop)


def _start_moto(port: int) -> Any:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per AWS call otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server
