"""REQUEST authorizer on `$connect`: verifies the JWT from `?token=` / `?access_token=`
(browsers cannot set WebSocket headers) or `Authorization: Bearer`, and hands the
principal to every later event of the connection as the authorizer context.

Refusals return a Deny policy, which API Gateway answers with 403 (and so does
MiniStack: raising ``Exception("Unauthorized")`` would be 401 on AWS but 500 on
MiniStack, which turns any authorizer exception into 500). A backend failure
(JWKS or SSM unreachable) still raises: that is a 500, not a refusal.
The token is never logged.
"""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import APIGatewayAuthorizerRequestEvent
from rtstream import metrics as names
from rtstream.adapters import lambda_runtime as rt
from rtstream.auth import extract_token
from rtstream.errors import Unauthorized

logger = Logger()
metrics = Metrics(namespace=names.NAMESPACE)
runtime = rt.LambdaRuntime()


def _policy(effect: str, principal_id: str, method_arn: str, context: dict) -> dict:
    return {
        "principalId": principal_id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": method_arn}],
        },
        "context": context,
    }


def allow_policy(principal_id: str, method_arn: str, context: dict) -> dict:
    return _policy("Allow", principal_id, method_arn, context)


def deny_policy(method_arn: str) -> dict:
    # no principal is known; the context is empty so nothing reaches $connect
    return _policy("Deny", "anonymous", method_arn, {})


@rt.lazy_tracer()
@logger.inject_lambda_context(correlation_id_path=rt.CONNECTION_ID_PATH, clear_state=True)
@metrics.log_metrics
@event_source(data_class=APIGatewayAuthorizerRequestEvent)
def handler(event: APIGatewayAuthorizerRequestEvent, context):
    token = extract_token(event.query_string_parameters, event.raw_event.get("headers"))
    try:
        principal = runtime.verifier().verify(token)
    except Unauthorized as exc:
        logger.info("connection refused by the authorizer", extra={"reason": exc.message, "tokenPresent": token is not None})
        metrics.add_metric(name=names.CONNECTIONS_REFUSED, unit=MetricUnit.Count, value=1)
        return deny_policy(event.method_arn)  # API Gateway and MiniStack: 403
    # per-call keys: handlers of one process share the logger's state
    logger.info("connection authorized", extra=principal.to_context())
    metrics.add_metric(name=names.AUTHORIZED, unit=MetricUnit.Count, value=1)
    return allow_policy(principal.user_id, event.method_arn, principal.to_context())
