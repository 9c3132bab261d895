"""`$disconnect`: removes the connection and its subscriptions (best effort by
nature: API Gateway does not wait for it, and the records' TTL covers a miss)."""

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
    logger.info(
        "disconnected",
        extra={"known": removed is not None, "statusCode": ctx.disconnect_status_code, "reason": ctx.disconnect_reason},
    )
    metrics.add_metric(name=names.CONNECTIONS_DROPPED, unit=MetricUnit.Count, value=1)
    return {"statusCode": 200}
