"""Housekeeping, every minute (EventBridge schedule): sweeps stale registry
records and presence entries (:mod:`rtstream.hygiene`), then emits the real
``realtime_streaming.active_connections`` count from the registry: in total
(dimension ``service``) and per transport (``service``, ``transport``).

Thin: the core decides; this wires the ports and writes the EMF.
"""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from rtstream import metrics as names
from rtstream.adapters import lambda_runtime as rt

logger = Logger()
metrics = Metrics(namespace=names.NAMESPACE)
runtime = rt.LambdaRuntime()


def emit(report) -> None:
    metrics.add_metric(name=names.STALE_CONNECTIONS_SWEPT, unit=MetricUnit.Count, value=report.connections_swept)
    metrics.add_metric(name=names.STALE_SUBSCRIPTIONS_SWEPT, unit=MetricUnit.Count, value=report.subscriptions_swept)
    metrics.add_metric(name=names.STALE_PRESENCE_SWEPT, unit=MetricUnit.Count, value=report.presence_expired)
    if not report.active:  # counting failed: no figure beats a wrong one
        return
    metrics.add_metric(name=names.ACTIVE_CONNECTIONS, unit=MetricUnit.Count, value=report.active_total)
    # One EMF document carries one dimension set: a separate one per transport.
    for transport, count in report.active.items():
        with single_metric(
            name=names.ACTIVE_CONNECTIONS, unit=MetricUnit.Count, value=count, namespace=names.NAMESPACE, default_dimensions=metrics.default_dimensions
        ) as metric:
            metric.add_dimension(name=names.TRANSPORT, value=transport)


@rt.lazy_tracer()
@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event, context):
    report = runtime.housekeeping().run()
    emit(report)
    summary = {
        "active": report.active,
        "connectionsSwept": report.connections_swept,
        "subscriptionsSwept": report.subscriptions_swept,
        "presenceExpired": report.presence_expired,
        "errors": report.errors,
        "incomplete": report.incomplete,  # more stale records than one run's bounds: the next run goes on
    }
    logger.info("housekeeping", extra=summary)
    return summary
