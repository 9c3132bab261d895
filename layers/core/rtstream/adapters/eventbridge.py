"""EventBridge ``PutEvents`` for publishing (client injected: boto3 ``events``).

One event per call: ``DetailType`` = topic, ``Detail`` =
``{"entityId", "data", "source"}``, ``Source`` = the publishing system's name.
The bridge Lambda (functions/eventbridge_bridge) turns it into the Redis publication.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import BackendUnavailable, InvalidMessage, Throttled

if TYPE_CHECKING:
    from ..publishing import Publication

THROTTLE_CODES = frozenset({"ThrottlingException", "LimitExceededException", "TooManyRequestsException"})


def detail_of(pub: "Publication") -> dict[str, Any]:
    detail = {"entityId": pub.entity_id, "data": pub.data, "source": pub.source}
    if pub.idempotency_key is not None:
        detail["idempotencyKey"] = pub.idempotency_key
    return detail


class EventBridgePublisher:
    def __init__(self, client: Any = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("events")
        self.client = client

    def put(self, pub: "Publication", *, event_bus: str = "default", event_source: str = "rtstream") -> str:
        entry = {
            "Source": event_source,
            "DetailType": pub.topic,
            "Detail": json.dumps(detail_of(pub), separators=(",", ":"), ensure_ascii=False),
            "EventBusName": event_bus,
        }
        try:
            reply = self.client.put_events(Entries=[entry])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in THROTTLE_CODES:
                raise Throttled(f"EventBridge throttled PutEvents: {code}") from exc
            if code in ("ValidationException", "ResourceNotFoundException"):
                raise InvalidMessage(f"EventBridge refused the event: {code}: {exc.response.get('Error', {}).get('Message', '')}") from exc
            raise BackendUnavailable(f"EventBridge PutEvents failed: {code}") from exc
        except BotoCoreError as exc:
            raise BackendUnavailable(f"EventBridge unreachable: {type(exc).__name__}") from exc
        result = (reply.get("Entries") or [{}])[0]
        if reply.get("FailedEntryCount") or "EventId" not in result:
            code = result.get("ErrorCode", "unknown")
            if code in THROTTLE_CODES:
                raise Throttled(f"EventBridge throttled the event: {code}")
            raise BackendUnavailable(f"EventBridge did not accept the event: {code}: {result.get('ErrorMessage', '')}")
        return result["EventId"]
