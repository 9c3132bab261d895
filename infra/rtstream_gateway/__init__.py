"""Local API Gateway WebSocket emulator: runs the handlers `template.yaml` names
behind a real WebSocket endpoint and the `@connections` management API."""

from .server import GatewayEmulator

__all__ = ["GatewayEmulator"]
