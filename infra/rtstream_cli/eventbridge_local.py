"""EventBridge, locally: rule -> SQS queue -> the real bridge Lambda handler.

``handle = await start(system)`` on the system's moto (or LocalStack-compatible)
endpoint creates an SQS queue and an EventBridge rule with the bridge's pattern
from ``template.yaml`` (so local and cloud match), targets the queue, and drains
it into ``functions/eventbridge_bridge/app.handler`` (imported by path) with an
event log on the system's Redis. A message whose handler raised stays in the
queue and is retried after its visibility timeout, up to ``MAX_ATTEMPTS``.
``await handle.stop()`` removes the rule, target and queue.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

from .cloudformation import PROJECT_ROOT, Intrinsics, load_template

log = logging.getLogger("rtstream_cli.eventbridge")

BRIDGE_APP = PROJECT_ROOT / "functions" / "eventbridge_bridge" / "app.py"
MAX_ATTEMPTS = 5
VISIBILITY_TIMEOUT_S = 2


def load_bridge(path: Path = BRIDGE_APP) -> ModuleType:
    name = f"rtstream_eventbridge_bridge_{uuid.uuid4().hex[:6]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rule_pattern(event_source: str = "rtstream") -> dict[str, Any]:
    """The bridge rule's pattern from template.yaml, parameters at their defaults."""
    template = load_template()
    fn = template["Resources"]["EventBridgeBridgeFunction"]["Properties"]
    rule = next(e["Properties"] for e in fn["Events"].values() if e["Type"] == "EventBridgeRule")
    return Intrinsics(template, parameters={"EventSource": event_source}).resolve(rule["Pattern"])


class _Context:
    """The parts of a Lambda context Powertools reads."""

    function_name = "EventBridgeBridgeFunction"
    function_version = "$LATEST"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:EventBridgeBridgeFunction"

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


class EventBridgeDrain:
    def __init__(self, system: Any, *, event_bus: str = "default", event_source: str = "rtstream") -> None:
        import boto3

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        kw: dict[str, Any] = {"endpoint_url": system.aws_endpoint, "region_name": region}
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            kw.update(aws_access_key_id="test", aws_secret_access_key="test")
        self.events = boto3.client("events", **kw)
        self.sqs = boto3.client("sqs", **kw)
        self.system = system
        self.event_bus = event_bus
        self.event_source = event_source
        suffix = uuid.uuid4().hex[:8]
        self.rule_name = f"rtstream-bridge-{suffix}"
        self.queue_name = f"rtstream-bridge-{suffix}"
        self.queue_url = ""
        self.handled = 0
        self.failed = 0
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> "EventBridgeDrain":
        from rtstream.adapters.lambda_runtime import LambdaRuntime

        # the bridge's own composition root, on the system's Redis
        settings = self.system.settings.replace(redis_url=self.system.redis_url)
        self.handler = load_bridge().build_handler(LambdaRuntime(settings=settings))
        await asyncio.to_thread(self._create)
        self._task = asyncio.create_task(self._drain(), name="eventbridge-drain")
        return self

    def _create(self) -> None:
        self.queue_url = self.sqs.create_queue(QueueName=self.queue_name, Attributes={"VisibilityTimeout": str(VISIBILITY_TIMEOUT_S)})["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.events.put_rule(Name=self.rule_name, EventBusName=self.event_bus, EventPattern=json.dumps(rule_pattern(self.event_source)))
        self.events.put_targets(Rule=self.rule_name, EventBusName=self.event_bus, Targets=[{"Id": "bridge-queue", "Arn": arn}])

    async def _drain(self) -> None:
        while not self._stopping.is_set():
            try:
                reply = await asyncio.to_thread(
                    self.sqs.receive_message, QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                    AttributeNames=["ApproximateReceiveCount"],
                )
            except Exception as exc:  # noqa: BLE001 - the endpoint may be restarting; keep draining
                log.warning("EventBridge drain: receive failed: %s", exc)
                await asyncio.sleep(1)
                continue
            for message in reply.get("Messages", []):
                await self._handle(message)

    async def _handle(self, message: dict[str, Any]) -> None:
        attempts = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            event = json.loads(message["Body"])
            await asyncio.to_thread(self.handler, event, _Context())
            self.handled += 1
        except Exception as exc:  # noqa: BLE001 - as Lambda: the message is retried
            self.failed += 1
            if attempts < MAX_ATTEMPTS:
                log.warning("bridge handler failed (attempt %d), will retry: %s", attempts, exc)
                return
            log.error("bridge handler failed %d times; dropping the event: %s", attempts, exc)
        await asyncio.to_thread(self.sqs.delete_message, QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except asyncio.TimeoutError:
                self._task.cancel()
        await asyncio.to_thread(self._delete)

    def _delete(self) -> None:
        for step in (
            lambda: self.events.remove_targets(Rule=self.rule_name, EventBusName=self.event_bus, Ids=["bridge-queue"]),
            lambda: self.events.delete_rule(Name=self.rule_name, EventBusName=self.event_bus),
            lambda: self.sqs.delete_queue(QueueUrl=self.queue_url),
        ):
            try:
                step()
            except Exception:  # noqa: BLE001 - the emulator may already be gone
                pass


async def start(system: Any, *, event_bus: str | None = None, event_source: str = "rtstream") -> EventBridgeDrain:
    bus = event_bus or getattr(system, "event_bus", None) or "default"
    return await EventBridgeDrain(system, event_bus=bus, event_source=event_source).start()
