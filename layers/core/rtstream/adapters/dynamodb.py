"""DynamoDB :class:`~rtstream.ports.ConnectionRegistry` (low-level boto3 client, injected).

Key design (docs/DESIGN.md "DynamoDB"):

- ``ConnectionsTable``: PK ``connectionId``; GSIs ``byUser`` and ``byEntity`` for
  the connection limits. The item also keeps the set of its subscriptions'
  channels (``channels``), so a connection's subscriptions are read consistently
  (GetItem + BatchGetItem) instead of through an eventually consistent index.
- ``SubscriptionsTable``: PK ``channel`` = ``"{entity}#{topic}"``, SK
  ``connectionId``; GSI ``byConnection`` catches subscriptions whose connection
  record is gone. The fan-out's lookup is ONE Query on the channel.
- Every item carries ``ttl`` (epoch s); reads filter ``ttl > now`` because
  DynamoDB deletes expired items lazily (up to days later).

botocore errors become :mod:`rtstream.errors`: throttling -> ``Throttled``,
anything else -> ``BackendUnavailable``. Programming errors are not masked.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..errors import BackendUnavailable, Throttled
from ..models import Connection, Filters, Principal, Subscription

THROTTLING_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded", "Throttling", "TooManyRequestsException"}
)
CONDITION_FAILED = "ConditionalCheckFailedException"
# BatchWriteItem / BatchGetItem limits
_BATCH_WRITE = 25
_BATCH_GET = 100
_BATCH_RETRIES = 5

# "ttl" is a DynamoDB reserved word
_TTL_NAMES = {"#ttl": "ttl"}
# No ttl attribute = no expiry (as in the in-memory registry).
_LIVE = "attribute_not_exists(#ttl) OR #ttl > :now"


def translate_error(exc: BaseException) -> BaseException:
    """botocore exception -> coded error; anything else is returned unchanged."""
    from botocore.exceptions import BotoCoreError, ClientError  # lazy: cold start

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        op = getattr(exc, "operation_name", "") or "request"
        if code in THROTTLING_CODES:
            return Throttled(f"DynamoDB throttled {op} ({code})")
        return BackendUnavailable(f"DynamoDB {op} failed ({code or 'unknown error'})")
    if isinstance(exc, BotoCoreError) and exc.__class__.__name__ != "ParamValidationError":
        return BackendUnavailable(f"DynamoDB unreachable ({exc.__class__.__name__})")
    return exc


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


def _s(item: dict[str, Any], name: str, default: str = "") -> str:
    value = item.get(name)
    return value["S"] if value and "S" in value else default


def _n(item: dict[str, Any], name: str, default: int = 0) -> int:
    value = item.get(name)
    return int(value["N"]) if value and "N" in value else default


class DynamoDBRegistry:
    def __init__(self, client: Any, *, connections_table: str, subscriptions_table: str, clock: Any = None):
        self._client = client
        self.connections_table = connections_table
        self.subscriptions_table = subscriptions_table
        self._clock = clock

    # ---- plumbing ------------------------------------------------------------

    def _now_s(self) -> int:
        return self._clock.now_ms() // 1000 if self._clock is not None else int(time.time())

    def _call(self, operation: str, *, condition_ok: bool = False, **kwargs: Any) -> dict[str, Any] | None:
        """One API call; with ``condition_ok`` a failed condition returns None."""
        try:
            return getattr(self._client, operation)(**kwargs)
        except Exception as exc:
            if condition_ok and _error_code(exc) == CONDITION_FAILED:
                return None
            translated = translate_error(exc)
            if translated is exc:
                raise
            raise translated from exc

    def _query_all(self, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self._call("query", **kwargs) or {}
            items.extend(page.get("Items", []))
            last = page.get("LastEvaluatedKey")
            if not last:
                return items
            kwargs["ExclusiveStartKey"] = last

    def _count(self, index: str, attribute: str, value: str, now_s: int) -> int:
        kwargs: dict[str, Any] = {
            "TableName": self.connections_table,
            "IndexName": index,
            "KeyConditionExpression": "#k = :v",
            "FilterExpression": _LIVE,
            "ExpressionAttributeNames": {"#k": attribute, **_TTL_NAMES},
            "ExpressionAttributeValues": {":v": {"S": value}, ":now": {"N": str(now_s)}},
            "Select": "COUNT",
        }
        total = 0
        while True:
            page = self._call("query", **kwargs) or {}
            total += int(page.get("Count", 0))
            last = page.get("LastEvaluatedKey")
            if not last:
                return total
            kwargs["ExclusiveStartKey"] = last

    @staticmethod
    def channel(entity_id: str, topic: str) -> str:
        return f"{entity_id}#{topic}"

    # ---- items -----------------------------------------------------------------

    @staticmethod
    def _connection_item(c: Connection) -> dict[str, Any]:
        item = {
            "connectionId": {"S": c.connection_id},
            "userId": {"S": c.user_id},
            "entityId": {"S": c.entity_id},
            "role": {"S": c.principal.role},
            "transport": {"S": c.transport},
            "connectedAt": {"N": str(c.connected_at_ms)},
            "sourceIp": {"S": c.source_ip or "-"},
        }
        if c.expires_at:
            item["ttl"] = {"N": str(c.expires_at)}
        return item

    @staticmethod
    def _connection_from(item: dict[str, Any]) -> Connection:
        source_ip = _s(item, "sourceIp")
        return Connection(
            connection_id=_s(item, "connectionId"),
            principal=Principal(user_id=_s(item, "userId"), entity_id=_s(item, "entityId"), role=_s(item, "role", "user")),  # type: ignore[arg-type]
            transport=_s(item, "transport", "websocket"),  # type: ignore[arg-type]
            connected_at_ms=_n(item, "connectedAt"),
            source_ip="" if source_ip == "-" else source_ip,
            expires_at=_n(item, "ttl"),
        )

    def _subscription_item(self, s: Subscription) -> dict[str, Any]:
        item = {
            "channel": {"S": self.channel(s.entity_id, s.topic)},
            "connectionId": {"S": s.connection_id},
            "entityId": {"S": s.entity_id},
            "topic": {"S": s.topic},
            "userId": {"S": s.user_id or "-"},
            "filters": {"S": json.dumps(s.filters.to_dict(), separators=(",", ":"))},
        }
        if s.expires_at:
            item["ttl"] = {"N": str(s.expires_at)}
        if s.pending_replay:
            item["pendingReplay"] = {"S": s.pending_replay}
        return item

    @staticmethod
    def _subscription_from(item: dict[str, Any]) -> Subscription:
        user_id = _s(item, "userId")
        return Subscription(
            connection_id=_s(item, "connectionId"),
            entity_id=_s(item, "entityId"),
            topic=_s(item, "topic"),
            user_id="" if user_id == "-" else user_id,
            filters=Filters.from_dict(json.loads(_s(item, "filters") or "{}")),
            pending_replay=_s(item, "pendingReplay") or None,
            expires_at=_n(item, "ttl"),
        )

    @staticmethod
    def _live(item: dict[str, Any], now_s: int) -> bool:
        expires = _n(item, "ttl")
        return expires == 0 or expires > now_s

    # ---- connections -------------------------------------------------------------

    def add_connection(self, connection: Connection) -> None:
        self._call("put_item", TableName=self.connections_table, Item=self._connection_item(connection))

    def get_connection(self, connection_id: str) -> Connection | None:
        out = self._call("get_item", TableName=self.connections_table, Key={"connectionId": {"S": connection_id}}, ConsistentRead=True) or {}
        item = out.get("Item")
        if not item or not self._live(item, self._now_s()):
            return None
        return self._connection_from(item)

    def remove_connection(self, connection_id: str) -> Connection | None:
        out = self._call(
            "delete_item", TableName=self.connections_table, Key={"connectionId": {"S": connection_id}}, ReturnValues="ALL_OLD"
        ) or {}
        old = out.get("Attributes")
        channels = set(old.get("channels", {}).get("SS", [])) if old else set()
        # The index also finds subscriptions written after the connection record went.
        for item in self._query_all(
            TableName=self.subscriptions_table,
            IndexName="byConnection",
            KeyConditionExpression="connectionId = :c",
            ExpressionAttributeValues={":c": {"S": connection_id}},
        ):
            channels.add(_s(item, "channel"))
        self._batch_delete_subscriptions(connection_id, sorted(c for c in channels if c))
        return self._connection_from(old) if old else None

    def _batch_delete_subscriptions(self, connection_id: str, channels: list[str]) -> None:
        for start in range(0, len(channels), _BATCH_WRITE):
            requests = [
                {"DeleteRequest": {"Key": {"channel": {"S": ch}, "connectionId": {"S": connection_id}}}} for ch in channels[start : start + _BATCH_WRITE]
            ]
            pending: dict[str, Any] = {self.subscriptions_table: requests}
            for attempt in range(_BATCH_RETRIES):
                out = self._call("batch_write_item", RequestItems=pending) or {}
                pending = out.get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(min(0.05 * 2**attempt, 0.5))
            if pending:
                raise Throttled("DynamoDB left subscription deletes unprocessed")

    def count_user_connections(self, user_id: str, now_s: int) -> int:
        return self._count("byUser", "userId", user_id, now_s)

    def count_entity_connections(self, entity_id: str, now_s: int) -> int:
        return self._count("byEntity", "entityId", entity_id, now_s)

    # ---- subscriptions -------------------------------------------------------------

    def put_subscription(self, subscription: Subscription) -> None:
        self._call("put_item", TableName=self.subscriptions_table, Item=self._subscription_item(subscription))
        # Record the channel on the connection (if it still exists: never create a stub).
        self._call(
            "update_item",
            condition_ok=True,
            TableName=self.connections_table,
            Key={"connectionId": {"S": subscription.connection_id}},
            UpdateExpression="ADD channels :c",
            ConditionExpression="attribute_exists(connectionId)",
            ExpressionAttributeValues={":c": {"SS": [self.channel(subscription.entity_id, subscription.topic)]}},
        )

    def remove_subscription(self, connection_id: str, entity_id: str, topic: str) -> bool:
        channel = self.channel(entity_id, topic)
        out = self._call(
            "delete_item",
            TableName=self.subscriptions_table,
            Key={"channel": {"S": channel}, "connectionId": {"S": connection_id}},
            ReturnValues="ALL_OLD",
        ) or {}
        self._call(
            "update_item",
            condition_ok=True,
            TableName=self.connections_table,
            Key={"connectionId": {"S": connection_id}},
            UpdateExpression="DELETE channels :c",
            ConditionExpression="attribute_exists(connectionId)",
            ExpressionAttributeValues={":c": {"SS": [channel]}},
        )
        old = out.get("Attributes")
        return bool(old) and self._live(old, self._now_s())

    def connection_subscriptions(self, connection_id: str) -> list[Subscription]:
        now = self._now_s()
        out = self._call(
            "get_item",
            TableName=self.connections_table,
            Key={"connectionId": {"S": connection_id}},
            ConsistentRead=True,
            ProjectionExpression="channels",
        ) or {}
        channels = sorted(out.get("Item", {}).get("channels", {}).get("SS", []))
        if not channels:
            items = self._query_all(
                TableName=self.subscriptions_table,
                IndexName="byConnection",
                KeyConditionExpression="connectionId = :c",
                ExpressionAttributeValues={":c": {"S": connection_id}},
            )
            channels = sorted({_s(i, "channel") for i in items})
        found: list[dict[str, Any]] = []
        for start in range(0, len(channels), _BATCH_GET):
            keys = [{"channel": {"S": ch}, "connectionId": {"S": connection_id}} for ch in channels[start : start + _BATCH_GET]]
            pending: dict[str, Any] = {self.subscriptions_table: {"Keys": keys, "ConsistentRead": True}}
            for attempt in range(_BATCH_RETRIES):
                page = self._call("batch_get_item", RequestItems=pending) or {}
                found.extend(page.get("Responses", {}).get(self.subscriptions_table, []))
                pending = page.get("UnprocessedKeys") or {}
                if not pending:
                    break
                time.sleep(min(0.05 * 2**attempt, 0.5))
            if pending:
                raise Throttled("DynamoDB left subscription reads unprocessed")
        subs = [self._subscription_from(i) for i in found if self._live(i, now)]
        return sorted(subs, key=lambda s: (s.entity_id, s.topic))

    def subscribers(self, entity_id: str, topic: str) -> list[Subscription]:
        """ONE Query on the channel (paginated); consistent, so a subscription
        written before a replay entry is queued is always seen by the fan-out."""
        items = self._query_all(
            TableName=self.subscriptions_table,
            KeyConditionExpression="channel = :ch",
            FilterExpression=_LIVE,
            ExpressionAttributeNames=_TTL_NAMES,
            ExpressionAttributeValues={":ch": {"S": self.channel(entity_id, topic)}, ":now": {"N": str(self._now_s())}},
            ConsistentRead=True,
        )
        return [self._subscription_from(i) for i in items]

    def clear_pending_replay(self, connection_id: str, entity_id: str, topic: str, marker: str) -> None:
        # Conditional: only the replay that set this marker may activate it.
        self._call(
            "update_item",
            condition_ok=True,
            TableName=self.subscriptions_table,
            Key={"channel": {"S": self.channel(entity_id, topic)}, "connectionId": {"S": connection_id}},
            UpdateExpression="REMOVE pendingReplay",
            ConditionExpression="pendingReplay = :m",
            ExpressionAttributeValues={":m": {"S": marker}},
        )

    def claim_first_subscribe(self, connection_id: str) -> bool:
        # Conditional: of concurrent first subscribes (one Lambda each), exactly one wins.
        out = self._call(
            "update_item",
            condition_ok=True,
            TableName=self.connections_table,
            Key={"connectionId": {"S": connection_id}},
            UpdateExpression="SET firstSubscribeAt = :now",
            ConditionExpression="attribute_exists(connectionId) AND attribute_not_exists(firstSubscribeAt)",
            ExpressionAttributeValues={":now": {"N": str(self._now_s())}},
        )
        return out is not None

    # ---- housekeeping (rtstream.hygiene) ------------------------------------------

    def _scan(self, *, limit: int | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """Scan pages until done (or ``limit`` items found)."""
        items: list[dict[str, Any]] = []
        while True:
            page = self._call("scan", **kwargs) or {}
            items.extend(page.get("Items", []))
            last = page.get("LastEvaluatedKey")
            if not last or (limit is not None and len(items) >= limit):
                return items if limit is None else items[:limit]
            kwargs["ExclusiveStartKey"] = last

    def count_connections(self, now_s: int) -> dict[str, int]:
        """One ``Select=COUNT`` Scan per transport (paginated; a scan page reads at
        most 1 MB). Run by the housekeeping once a minute, never on a hot path."""
        from typing import get_args

        from ..models import Transport

        counts: dict[str, int] = {}
        for transport in get_args(Transport):
            kwargs: dict[str, Any] = {
                "TableName": self.connections_table,
                "Select": "COUNT",
                "FilterExpression": f"#transport = :t AND ({_LIVE})",
                "ExpressionAttributeNames": {"#transport": "transport", **_TTL_NAMES},
                "ExpressionAttributeValues": {":t": {"S": transport}, ":now": {"N": str(now_s)}},
            }
            total = 0
            while True:
                page = self._call("scan", **kwargs) or {}
                total += int(page.get("Count", 0))
                last = page.get("LastEvaluatedKey")
                if not last:
                    break
                kwargs["ExclusiveStartKey"] = last
            counts[transport] = total
        return counts

    def stale_connections(self, now_s: int, limit: int) -> list[str]:
        items = self._scan(
            limit=limit,
            TableName=self.connections_table,
            FilterExpression="#ttl <= :now",
            ProjectionExpression="connectionId",
            ExpressionAttributeNames=_TTL_NAMES,
            ExpressionAttributeValues={":now": {"N": str(now_s)}},
        )
        return [_s(i, "connectionId") for i in items if _s(i, "connectionId")]

    def stale_subscriptions(self, now_s: int, limit: int) -> list[Subscription]:
        items = self._scan(
            limit=limit,
            TableName=self.subscriptions_table,
            FilterExpression="#ttl <= :now",
            ExpressionAttributeNames=_TTL_NAMES,
            ExpressionAttributeValues={":now": {"N": str(now_s)}},
        )
        return [self._subscription_from(i) for i in items]
