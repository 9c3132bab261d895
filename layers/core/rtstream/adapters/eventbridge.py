"""EventBridge ``PutEvents`` for publishing (client injected: boto3 ``events``).

One event per call: ``DetailType`` = topic, ``Detail`` =
``{"entityId", "data", "source"}``, ``Source`` = the publishing system's name.
The bridge Lambda (functions/eventbridge_bridge) turns it into the Redis publication.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import BackendUnavailable, InvalidMessage, Throttled
from ..models import Publication
from ..publishing import eventbridge_detail

THROTTLE_CODES = frozenset({"ThrottlingException", "LimitExceededException", "TooManyRequestsException"})


class EventBridgePublisher:
    """:class:`~rtstream.ports.Publisher` over a boto3 ``events`` client (injected)."""

    def __init__(self, client: Any, *, event_bus: str = "default", event_source: str = "rtstream") -> None:
        self.client = client
        self.event_bus = event_bus
        self.event_source = event_source

    def put(self, pub: Publication, *, event_bus: str | None = None, event_source: str | None = None) -> str:
        """Put one event; ``event_bus`` / ``event_source`` override the publisher's for this call."""
        entry = {
            "Source": event_source or self.event_source,
            "DetailType": pub.topic,
            "Detail": json.dumps(eventbridge_detail(pub), separators=(",", ":"), ensure_ascii=False),
            "EventBusName": event_bus or self.event_bus,
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
