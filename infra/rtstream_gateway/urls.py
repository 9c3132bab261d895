"""The emulator's public URLs, from where it listens (shared by the emulator and
`LocalSystem`, which must know them while the emulator is stopped)."""

from __future__ import annotations


def connectable_host(host: str) -> str:
    """A wildcard bind address is not something a client can connect to."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def ws_url(host: str, port: int, stage: str) -> str:
    return f"ws://{connectable_host(host)}:{port}/{stage}"


def management_endpoint(host: str, port: int, stage: str) -> str:
    """What boto3's apigatewaymanagementapi client takes as ``endpoint_url``."""
    return f"http://{connectable_host(host)}:{port}/{stage}"
