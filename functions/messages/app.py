"""The message routes: `subscribe`, `unsubscribe`, `ping`, `presence` and
`$default` (anything the route selection did not recognise: bad JSON, unknown
or missing type gets an error frame; the connection stays usable).

One module for every route after `$connect`: the message's ``type`` decides,
in the core service (:meth:`rtstream.service.RealtimeService.handle`), so the
routing and the error handling live there and here, once. The template keeps
one function per route, all with this code, so each route keeps its own IAM
policy (only `subscribe`/`unsubscribe` touch DynamoDB), its own Lambda metrics
(duration, errors, throttles per route) and its own concurrency.

Thin: this translates the API Gateway event into a service call and the reply
into a route response; extra frames and closing a flooder go through
``@connections``.
"""

import base64
import binascii
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_websocket_event import APIGatewayWebSocketEvent
from rtstream import metrics as names
from rtstream.adapters import lambda_runtime as rt
from rtstream.errors import RealtimeError, Unauthorized
from rtstream.protocol import dumps

logger = Logger()
metrics = Metrics(namespace=names.NAMESPACE)

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


def route_response(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """API Gateway route response: the first reply frame as the body (none: no body)."""
    if not frames:
        return {"statusCode": 200}
    return {"statusCode": 200, "body": dumps(frames[0])}


def _body(event: APIGatewayWebSocketEvent) -> str | bytes:
    body: str | bytes = event.body or ""
    if event.is_base64_encoded:
        # binary frame: bytes, so the parser reports bad UTF-8 as invalid_message
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return b"\xff"  # undecodable: refused as invalid by the service
    return body


def handle_message(runtime: rt.LambdaRuntime, event: APIGatewayWebSocketEvent) -> dict[str, Any]:
    """One WebSocket message (any route but $connect/$disconnect) -> route response."""
    raw = event.raw_event
    connection_id = event.request_context.connection_id
    try:
        principal = rt.principal_from_event(raw)
    except Unauthorized as exc:
        return route_response([exc.to_frame()])
    reply = runtime.service().handle(connection_id, principal, _body(event))
    codes = [f.get("code") for f in reply.frames if f.get("type") == "error"]
    metrics.add_metric(name=names.MESSAGES, unit=MetricUnit.Count, value=1)
    if "rate_limited" in codes:
        metrics.add_metric(name=names.RATE_LIMITED, unit=MetricUnit.Count, value=1)
    if reply.security_event is not None:
        metrics.add_metric(name=names.SECURITY_EVENTS, unit=MetricUnit.Count, value=1)
        logger.warning(
            "security event",
            extra={"securityEvent": reply.security_event, "userId": principal.user_id, "entityId": principal.entity_id, "role": principal.role},
        )
    elif codes:
        logger.info("message refused", extra={"codes": codes, "route": event.request_context.route_key, "userId": principal.user_id})
    if reply.resumed is not None:
        # Average = share of connections that resumed; Sum = reconnects (rtstream.metrics)
        metrics.add_metric(name=names.RECONNECTION_RATE, unit=MetricUnit.Count, value=names.RESUMED if reply.resumed else names.FRESH)
    if len(reply.frames) <= 1 and not reply.close:
        return route_response(reply.frames)
    pusher = runtime.pusher(rt.management_endpoint_of(raw, runtime.settings))
    # Closing: API Gateway's DELETE @connections cannot set a close code (it
    # closes with 1000), so the reason goes first as a coded frame through
    # @connections; the route response would arrive after the close.
    try:
        for frame in reply.frames if reply.close else reply.frames[1:]:
            pusher.post(connection_id, dumps(frame).encode())
    except RealtimeError as exc:
        logger.warning("management API call failed", extra={"code": exc.code})
    if not reply.close:
        return route_response(reply.frames)
    logger.warning("closing a connection that keeps sending refused messages", extra={"userId": principal.user_id})
    try:
        pusher.delete(connection_id)
    except RealtimeError as exc:
        logger.warning("management API call failed", extra={"code": exc.code})
    return route_response([])


def build_handler(runtime: rt.LambdaRuntime) -> LambdaHandler:
    """The Lambda handler over ``runtime`` (the composition root's ports)."""

    @rt.lazy_tracer()
    @logger.inject_lambda_context(correlation_id_path=rt.CONNECTION_ID_PATH, clear_state=True)
    @metrics.log_metrics
    @event_source(data_class=APIGatewayWebSocketEvent)
    def handler(event: APIGatewayWebSocketEvent, context: Any) -> dict[str, Any]:
        return handle_message(runtime, event)

    return handler


runtime = rt.LambdaRuntime()  # one per container (cold start); its clients on first use
handler = build_handler(runtime)
