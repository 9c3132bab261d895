"""API Gateway Management API (``@connections``) as a :class:`~rtstream.ports.Pusher`.

Wraps an injected boto3 ``apigatewaymanagementapi`` client (``endpoint_url`` =
``https://{api}.execute-api.{region}.amazonaws.com/{stage}`` on AWS, the
emulator's URL locally). Used by the Lambdas (e.g. to close a flooding client)
and tests; the fan-out worker has its own pooled async client.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import BackendUnavailable, ConnectionGone, RealtimeError, Throttled

THROTTLE_CODES = frozenset({"LimitExceededException", "ThrottlingException", "TooManyRequestsException", "Throttling"})


def translate(exc: Exception, connection_id: str) -> RealtimeError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "GoneException" or status == 410:
            return ConnectionGone(f"connection {connection_id} is gone")
        if code in THROTTLE_CODES or status == 429:
            return Throttled(f"management API throttled posting to {connection_id}")
        return BackendUnavailable(f"management API error {code or status} for {connection_id}")
    return BackendUnavailable(f"management API unreachable: {type(exc).__name__}")


class ApiGatewayPusher:
    def __init__(self, client: Any) -> None:
        self.client = client

    def post(self, connection_id: str, data: bytes) -> None:
        try:
            self.client.post_to_connection(ConnectionId=connection_id, Data=data)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, connection_id) from exc

    def delete(self, connection_id: str) -> None:
        try:
            self.client.delete_connection(ConnectionId=connection_id)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, connection_id) from exc
