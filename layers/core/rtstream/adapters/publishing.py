"""The SDK's one-call publish, and the publishers it builds (clients injected,
or created from the settings / the environment here, at the edge).

``publish("acme", "transactions.new", {...}, client=redis_client)`` validates
before any I/O (the core's :func:`rtstream.publishing.validate`), then appends
through the Redis event log (history + fan-out queue, one atomic script) or, with
``via="eventbridge"``, puts one EventBridge event that the bridge Lambda turns
into the same Redis publication.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidMessage
from ..ports import Publisher
from ..publishing import EventLogPublisher, validate
from ..settings import Settings

VIAS = ("redis", "eventbridge")


def make_publisher(
    via: str = "redis",
    *,
    client: Any = None,
    settings: Settings | None = None,
    events_client: Any = None,
    event_bus: str = "default",
    event_source: str = "rtstream",
) -> Publisher:
    """A publisher for ``via``: over ``client`` (redis-py; default: one from
    ``settings.redis_url``) or ``events_client`` (boto3 ``events``; default: one
    from the environment). Builds clients only; no request is made."""
    if via not in VIAS:
        raise InvalidMessage(f"via must be one of {', '.join(VIAS)}, got {via!r}")
    if via == "eventbridge":
        from .eventbridge import EventBridgePublisher  # boto3: only with the [aws] extra

        if events_client is None:
            import boto3

            events_client = boto3.client("events")
        return EventBridgePublisher(events_client, event_bus=event_bus, event_source=event_source)
    from .redis_eventlog import RedisEventLog

    settings = settings or Settings.from_env()
    log = RedisEventLog(client, settings) if client is not None else RedisEventLog.from_url(settings.redis_url, settings)
    return EventLogPublisher(log)


def publish(
    entity_id: str,
    topic: str,
    data: dict[str, Any],
    *,
    source: str = "sdk",
    via: str = "redis",
    client: Any = None,
    settings: Settings | None = None,
    events_client: Any = None,
    event_bus: str = "default",
    event_source: str = "rtstream",
    idempotency_key: str | None = None,
) -> str:
    """Publish one event; returns its id (via EventBridge: the EventBridge event id).

    ``idempotency_key``: the same key for the same entity within
    ``Settings.idempotency_window_seconds`` (default 5 minutes) is one event; a
    repeat publishes nothing and returns the first event's id (via EventBridge
    the key travels in the detail and the bridge applies it).

    ``client``: a redis-py client (default: one from ``settings.redis_url``);
    ``events_client``: a boto3 ``events`` client (default: one from the environment).
    Bad input raises :class:`InvalidMessage`, :class:`UnknownTopic`,
    :class:`InvalidPayload` or :class:`MessageTooLarge` before any client is built.
    """
    if via not in VIAS:
        raise InvalidMessage(f"via must be one of {', '.join(VIAS)}, got {via!r}")
    pub = validate(entity_id, topic, data, source, idempotency_key)
    publisher = make_publisher(
        via, client=client, settings=settings, events_client=events_client, event_bus=event_bus, event_source=event_source
    )
    return publisher.put(pub)
