"""``rtstream publish TOPIC --entity E --data JSON [--source S] [--via redis|eventbridge] [--idempotency-key K]``.

Publishes one event and prints its id (via EventBridge: the EventBridge event
id). With ``--idempotency-key``, a repeat of the key for the entity within
RTSTREAM_IDEMPOTENCY_WINDOW_SECONDS (default 300) publishes nothing and prints
the first event's id. Endpoints: ``--redis-url`` / ``REDIS_URL`` and ``--aws-endpoint`` /
``AWS_ENDPOINT_URL``, else the running ``rtstream dev`` system (``--state-dir`` /
``--dev-port`` choose one; the one used is named on stderr).
Bad input: one ``error: <code>: <message>`` line on stderr and exit status 2;
an unreachable backend: exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .state import NoSuchInstance, Target, add_instance_options


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("publish", help="publish one event; prints its id", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("topic", help="transactions.new | agent.action.completed | balance.updated | sync.completed")
    p.add_argument("--entity", required=True, help="entity id the event belongs to")
    p.add_argument("--data", required=True, help="payload JSON object, e.g. '{\"transactionId\":\"t1\",\"amount\":4.2,\"merchant\":\"Cafe\"}'")
    p.add_argument("--source", default="cli", help="event source (default: cli)")
    p.add_argument("--via", choices=("redis", "eventbridge"), default="redis", help="transport (default: redis)")
    p.add_argument("--redis-url", default=None, help="default: REDIS_URL, else the running dev system")
    p.add_argument("--aws-endpoint", default=None, help="EventBridge endpoint; default: AWS_ENDPOINT_URL, else the dev system")
    p.add_argument("--idempotency-key", default=None,
                   help="same key + entity within the idempotency window = one event (1..128 of [A-Za-z0-9_.:@/+=-])")
    p.add_argument("--event-bus", default=None, help="EventBridge bus (default: the dev system's, else 'default')")
    add_instance_options(p)
    p.add_argument("--event-source", default=None,
                   help="EventBridge Source with --via eventbridge (default: the configured one: "
                        "RTSTREAM_EVENT_SOURCE, else the template's EventSource default). The bridge rule "
                        "ignores any other Source, so a different one is refused unless --force-event-source")
    p.add_argument("--force-event-source", action="store_true",
                   help="send --event-source even though the bridge would ignore it (e.g. to test another rule)")
    p.set_defaults(func=run)


def _fail(code: str, message: str, status: int = 2) -> int:
    print(f"error: {code}: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    from rtstream.errors import BackendUnavailable, RealtimeError, Throttled
    from rtstream.adapters.publishing import publish
    from rtstream.settings import Settings

    try:
        data = json.loads(args.data)
    except ValueError as exc:
        return _fail("invalid_payload", f"--data is not valid JSON ({exc})")
    target = Target(args, "publish")
    settings = Settings.from_env()
    kwargs: dict = {}
    try:
        if args.via == "redis":
            redis_url = target.value("redis_url", flag=args.redis_url, env="REDIS_URL")
            if not redis_url:
                return _fail("unavailable", "no Redis: pass --redis-url, set REDIS_URL or start `rtstream dev`", 1)
            settings = settings.replace(redis_url=redis_url)
        else:
            endpoint = target.value("aws_endpoint", flag=args.aws_endpoint, env="AWS_ENDPOINT_URL")
            kwargs["event_bus"] = target.value("event_bus", flag=args.event_bus, default="default")
            configured = configured_event_source(target)
            event_source = args.event_source or configured
            if event_source != configured:
                if not args.force_event_source:
                    return _fail("invalid_message", f"--event-source {event_source!r} is not the bridge's EventSource "
                                 f"{configured!r}: its rule would ignore the event (set RTSTREAM_EVENT_SOURCE to the "
                                 "deployed stack's EventSource, or pass --force-event-source)")
                print(f"warning: EventSource is {configured!r}; the bridge ignores Source {event_source!r}", file=sys.stderr)
            kwargs["event_source"] = event_source
            kwargs["events_client"] = _events_client(endpoint)
    except NoSuchInstance as exc:
        return _fail("unavailable", str(exc), 1)
    except BackendUnavailable as exc:
        return _fail(exc.code, exc.message, 1)
    try:
        event_id = publish(args.entity, args.topic, data, source=args.source, via=args.via, settings=settings,
                           idempotency_key=args.idempotency_key, **kwargs)
    except (BackendUnavailable, Throttled) as exc:
        return _fail(exc.code, exc.message, 1)
    except RealtimeError as exc:
        return _fail(exc.code, exc.message)
    print(event_id)
    return 0


def configured_event_source(target: Target) -> str:
    """The Source the bridge rule matches: RTSTREAM_EVENT_SOURCE (the deployed
    stack's EventSource parameter), the dev system's, else template.yaml's default."""
    configured = target.value("event_source", env="RTSTREAM_EVENT_SOURCE")
    if configured:
        return str(configured)
    try:
        from .cloudformation import load_template  # the [local] extra (samtranslator)

        return str(load_template()["Parameters"]["EventSource"]["Default"])
    except (ImportError, OSError):  # a light install, or none with template.yaml: the template's default
        return "rtstream"


def _events_client(endpoint: str | None):
    try:
        import boto3
    except ModuleNotFoundError:
        from rtstream.errors import BackendUnavailable

        raise BackendUnavailable("--via eventbridge needs boto3: pip install 'realtime-streaming[aws]'") from None

    from rtstream.settings import Settings

    region = Settings.from_env().runtime.aws_region or "us-east-1"
    if endpoint and not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
        # local emulators accept any credentials
        return boto3.client("events", endpoint_url=endpoint, region_name=region, aws_access_key_id="test", aws_secret_access_key="test")
    return boto3.client("events", endpoint_url=endpoint, region_name=region)
