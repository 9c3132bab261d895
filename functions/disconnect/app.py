"""`$disconnect`: removes the connection and its subscriptions (best effort by
nature: API Gateway does not wait for it; the housekeeping sweeps what it misses).

Counts every close (``connections_closed``) and, for the drop alarm, only the
abnormal ones (``connections_dropped``: not 1000 / a client's 1001; idle and
max-age timeouts included), from ``disconnectStatusCode`` / ``disconnectReason``."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_websocket_event import APIGatewayWebSocketEvent
from rtstream import metrics as names
from rtstream.adapters import lambda_runtime as rt
from rtstream.errors import Unauthorized

logger = Logger()
metrics = Metrics(namespace=names.NAMESPACE)
runtime = rt.LambdaRuntime()


@rt.lazy_tracer()
@logger.inject_lambda_context(correlation_id_path=rt.CONNECTION_ID_PATH, clear_state=True)
@metrics.log_metrics
@event_source(data_class=APIGatewayWebSocketEvent)
def handler(event: APIGatewayWebSocketEvent, context):
    ctx = event.request_context
    try:
        principal = rt.principal_from_event(event.raw_event)
    except Unauthorized:
        principal = None
    removed = runtime.service().disconnect(ctx.connection_id, principal=principal)
    raw = event.raw_event.get("requestContext") or {}
    status, reason = raw.get("disconnectStatusCode"), raw.get("disconnectReason")
    connected_at, closed_at = raw.get("connectedAt"), raw.get("requestTimeEpoch")
    age_s = (closed_at - connected_at) / 1000 if isinstance(connected_at, int) and isinstance(closed_at, int) else None
    abnormal = names.is_abnormal_close(
        status if isinstance(status, int) else None,
        reason if isinstance(reason, str) else None,
        age_seconds=age_s,
        max_age_seconds=runtime.settings.max_connection_seconds,
    )
    logger.info("disconnected", extra={"known": removed is not None, "statusCode": status, "reason": reason, "abnormal": abnormal})
    metrics.add_metric(name=names.CONNECTIONS_CLOSED, unit=MetricUnit.Count, value=1)
    if abnormal:  # what realtime_streaming.connection_drop_high watches
        metrics.add_metric(name=names.CONNECTIONS_DROPPED, unit=MetricUnit.Count, value=1)
    return {"statusCode": 200}
