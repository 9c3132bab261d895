"""Local API Gateway WebSocket emulator: runs the handlers `template.yaml` names
behind a real WebSocket endpoint and the `@connections` management API."""

from typing import Any

__all__ = ["GatewayEmulator"]


def __getattr__(name: str) -> Any:
    # Lazy, so light submodules (urls) do not load the server and its HTTP stack.
    if name == "GatewayEmulator":
        from .server import GatewayEmulator

        return GatewayEmulator
    raise AttributeError(name)
