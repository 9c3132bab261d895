"""`$connect`: records the connection (principal from the authorizer context),
enforcing the per-user and per-entity connection limits. A non-2xx answer makes
API Gateway refuse the handshake."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_websocket_event import APIGatewayWebSocketEvent
from rtstream import metrics as names
from rtstream.adapters import lambda_runtime as rt
from rtstream.errors import RealtimeError

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
        runtime.service().connect(
            principal,
            ctx.connection_id,
            source_ip=ctx.identity.source_ip or "",
            now_ms=ctx.connected_at or None,
        )
    except RealtimeError as exc:
        logger.warning("connection refused", extra={"code": exc.code, "reason": exc.message, **(event.raw_event["requestContext"].get("authorizer") or {})})
        metrics.add_metric(name=names.CONNECTIONS_REFUSED, unit=MetricUnit.Count, value=1)
        return {"statusCode": exc.status, "body": exc.code}
    logger.info("connected", extra=principal.to_context())
    metrics.add_metric(name=names.CONNECTIONS_OPENED, unit=MetricUnit.Count, value=1)
    return {"statusCode": 200}
