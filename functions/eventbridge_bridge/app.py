"""EventBridge -> Redis bridge: a backend event becomes the same Redis publication
as an SDK or raw publish (history + fan-out queue, one atomic script).

Invalid events are logged and counted, then dropped (a retry could never fix
them); Redis failures raise, so EventBridge retries (the rule's RetryPolicy),
and the event id (or the detail's ``idempotencyKey``) is the publish's
idempotency key, so a retried event is recorded once (within
``RTSTREAM_IDEMPOTENCY_WINDOW_SECONDS``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source

from rtstream import metrics as names
from rtstream.adapters import lambda_runtime as rt
from rtstream.errors import BackendUnavailable, RealtimeError
from rtstream.ports import Appended
from rtstream.publishing import parse_eventbridge

logger = Logger()
metrics = Metrics(namespace=names.NAMESPACE)

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


def bridge(runtime: rt.LambdaRuntime, event: EventBridgeEvent) -> dict[str, Any]:
    """One EventBridge event -> the Redis publication (or a counted drop)."""
    try:
        pub = parse_eventbridge(event.detail_type, event.detail, event.get_id)
    except RealtimeError as exc:
        metrics.add_metric(name=names.INVALID_EVENTS, unit=MetricUnit.Count, value=1)
        logger.warning("invalid EventBridge event dropped", extra={"eventId": event.get_id, "code": exc.code, "reason": exc.message[:300]})
        return {"status": "invalid", "code": exc.code}
    try:
        event_log = runtime.event_log()
        if event_log is None:
            raise BackendUnavailable("REDIS_URL is not set: the bridge has no event log")
        if pub.idempotency_key is None:  # an event without an id (never from EventBridge itself)
            published = Appended(event_log.append(pub.entity_id, pub.topic, pub.data, pub.source), False)
        else:
            published = event_log.append_idempotent(pub.entity_id, pub.topic, pub.data, pub.source, pub.idempotency_key)
    except BackendUnavailable:
        logger.exception("Redis unavailable; EventBridge will retry", extra={"eventId": event.get_id})
        raise
    if published.duplicate:
        metrics.add_metric(name=names.BRIDGED_DUPLICATES, unit=MetricUnit.Count, value=1)
        logger.info("duplicate EventBridge delivery ignored", extra={"eventId": event.get_id, "id": published.event.id})
        return {"status": "duplicate", "id": published.event.id}
    metrics.add_metric(name=names.BRIDGED_EVENTS, unit=MetricUnit.Count, value=1)
    logger.info("bridged", extra={"eventId": event.get_id, "topic": pub.topic, "id": published.event.id})
    return {"status": "published", "id": published.event.id}


def build_handler(runtime: rt.LambdaRuntime) -> LambdaHandler:
    """The Lambda handler over ``runtime``, the composition root every handler
    uses (``rtstream dev`` builds one on its own Redis)."""

    @rt.lazy_tracer()
    @logger.inject_lambda_context(clear_state=True)
    @metrics.log_metrics
    @event_source(data_class=EventBridgeEvent)
    def handler(event: EventBridgeEvent, context: Any) -> dict[str, Any]:
        return bridge(runtime, event)

    return handler


runtime = rt.LambdaRuntime()  # one per container (cold start); its clients on first use
handler = build_handler(runtime)
