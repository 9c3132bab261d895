"""`subscribe` route: an entity-scoped subscription (entity from the token only),
optionally replaying history after `since` or the last N events (`rewind`); the fan-out then sends `subscribed`.

Thin: the core service decides; this translates the API Gateway event and the reply.
"""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_websocket_event import APIGatewayWebSocketEvent
from rtstream import metrics as names
from rtstream.adapters import lambda_runtime as rt

logger = Logger()
metrics = Metrics(namespace=names.NAMESPACE)
runtime = rt.LambdaRuntime()


@rt.lazy_tracer()
@logger.inject_lambda_context(correlation_id_path=rt.CONNECTION_ID_PATH, clear_state=True)
@metrics.log_metrics
@event_source(data_class=APIGatewayWebSocketEvent)
def handler(event: APIGatewayWebSocketEvent, context):
    return rt.handle_message_event(runtime, event, logger=logger, metrics=metrics)
