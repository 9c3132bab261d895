"""DynamoDB :class:`~rtstream.ports.ConnectionRegistry` (low-level boto3 client, injected).

Key design (docs/DESIGN.md "DynamoDB"):

- ``ConnectionsTable``: PK ``connectionId``. The item also keeps the set of its
  subscriptions' channels (``channels``), so a connection's subscriptions are
  read consistently (GetItem + BatchGetItem) instead of through an eventually
  consistent index. The same table holds the admission counters (one item per
  user and per entity, ``connectionId`` = ``#u#{user}`` / ``#e#{entity}``: real
  ids never contain ``#``): a connect is three single-item writes (two
  conditional ``ADD``s and the record's ``Put``), no read, whatever the entity
  holds. GSIs ``byUser`` and ``byEntity`` serve only diagnostics and the
  counters' repair.
- GSI ``byExpiry`` (both tables): partition ``expiryBucket`` =
  ``{kind}{ttl // BUCKET_SECONDS}#{shard}``, sort ``ttl``; housekeeping queries
  only the buckets that expired since its last run (cursor item ``#sweep``), so
  its cost follows what expired, not the table. Connection records are purged
  natively by ``purgeAt`` (a day after ``ttl``): the sweep (which releases the
  counters) always sees them first.
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

from ..errors import BackendUnavailable, Throttled, TooManyConnections
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

# byExpiry index: one key per kind, hour and shard. An index key takes ~1,000
# writes/s, so 4 shards carry 4,000 connects/s (API Gateway admits 500/s per
# account); a sweep or count reads 4 keys per hour it covers.
BUCKET_SECONDS = 3600
SHARDS = 4
# index key kinds: connection records, user counters, entity counters, subscriptions
CONNECTION, USER_COUNTER, ENTITY_COUNTER, SUBSCRIPTION = "c", "m", "n", "s"
COUNTER = ENTITY_COUNTER
# Native TTL (attribute purgeAt) is only a backstop, this long after ttl.
PURGE_AFTER_SECONDS = 86_400
# A first sweep (no cursor yet) looks this far back: older records are purged natively.
FIRST_SWEEP_LOOKBACK_SECONDS = PURGE_AFTER_SECONDS
# A new connection's ttl lies this far ahead (service: max_connection_seconds 7200 + 300 slack).
CONNECTION_TTL_SECONDS = 7500
# A counter changed this recently may have an admission in flight (increment
# done, record not yet written): its repair waits. Far above a $connect's 29 s.
REPAIR_QUIET_SECONDS = 120
SWEEP_CURSOR = "#sweep"


def counter_key(kind: str, ident: str) -> str:
    """``#u#alice`` / ``#e#acme``: never a real connection id (ids have no '#')."""
    return f"#{kind}#{ident}"


def expiry_bucket(kind: str, expires_at: int, shard_of: str) -> str:
    import zlib

    return f"{kind}{expires_at // BUCKET_SECONDS}#{zlib.crc32(shard_of.encode()) % SHARDS}"


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


def _transport_attr(transport: str) -> str:
    """Per-transport share of a counter: ``nWebsocket``, ``nSse``."""
    return "n" + transport.capitalize()


def _s(item: dict[str, Any], name: str, default: str = "") -> str:
    value = item.get(name)
    return value["S"] if value and "S" in value else default


def _n(item: dict[str, Any], name: str, default: int = 0) -> int:
    value = item.get(name)
    return int(value["N"]) if value and "N" in value else default


class DynamoDBRegistry:
    def __init__(self, client: Any, *, connections_table: str, subscriptions_table: str, clock: Any = None,
                 connection_ttl_seconds: int = CONNECTION_TTL_SECONDS):
        self._client = client
        # how far ahead a new connection's ttl lies (max_connection_seconds + slack)
        self.connection_ttl_seconds = connection_ttl_seconds
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
            item["purgeAt"] = {"N": str(c.expires_at + PURGE_AFTER_SECONDS)}
            item["expiryBucket"] = {"S": expiry_bucket(CONNECTION, c.expires_at, c.connection_id)}
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
            item["expiryBucket"] = {"S": expiry_bucket(SUBSCRIPTION, s.expires_at, s.connection_id)}
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
        """Record a connection without limits (it still takes its counted slots)."""
        self.admit_connection(connection, max_per_user=None, max_per_entity=None)

    def admit_connection(self, connection: Connection, *, max_per_user: int | None, max_per_entity: int | None) -> None:
        """Take a slot of the user's and of the entity's counter (each one
        conditional ``ADD``: atomic, so concurrent connects never pass a limit),
        then write the record; undo the slots if a later step fails.

        Three single-item writes, no read. Not one TransactWriteItems: concurrent
        transactions on one item cancel each other (``TransactionConflict``),
        and a busy entity's counter is exactly such an item; single-item updates
        on it serialise instead. A process killed between the steps leaves a
        counter one too high (refusing early, never admitting too many) until
        housekeeping's repair recounts it."""
        taken: list[str] = []
        try:
            for kind, ident, limit, what in (
                ("u", connection.user_id, max_per_user, "user"),
                ("e", connection.entity_id, max_per_entity, "entity"),
            ):
                if not self._take_slot(counter_key(kind, ident), connection, limit):
                    # Full: records past their TTL (lost $disconnects the sweep has
                    # not reached yet) must not block; only this refusal path reads.
                    if not (self._evict_expired(kind, ident) and self._take_slot(counter_key(kind, ident), connection, limit)):
                        raise TooManyConnections(f"at most {limit} concurrent connections per {what}")
                taken.append(counter_key(kind, ident))
            written = self._call(
                "put_item",
                condition_ok=True,
                TableName=self.connections_table,
                Item=self._connection_item(connection),
                ConditionExpression="attribute_not_exists(connectionId)",
            )
            if written is None:
                # A retried $connect: the record (and its slots) exist already.
                self._release_slots(taken, connection.transport)
            taken = []
        finally:
            if taken:
                self._release_slots(taken, connection.transport)

    def _take_slot(self, key: str, connection: Connection, limit: int | None) -> bool:
        # The counter's ttl is a bound on its connections' ttls (a record written
        # with an earlier one must not move it back): when the repair may look.
        expires = max(connection.expires_at, self._now_s() + self.connection_ttl_seconds)
        values: dict[str, Any] = {
            ":one": {"N": "1"},
            ":t": {"N": str(expires)},
            ":b": {"S": expiry_bucket(USER_COUNTER if key.startswith("#u#") else ENTITY_COUNTER, expires, key)},
            ":now": {"N": str(self._now_s())},
        }
        kwargs: dict[str, Any] = {}
        if limit is not None:
            kwargs["ConditionExpression"] = "attribute_not_exists(#n) OR #n < :limit"
            values[":limit"] = {"N": str(limit)}
        # ttl here is when the counter's newest connection expires: when the
        # repair may look at it (counters are never purged natively: no purgeAt).
        out = self._call(
            "update_item",
            condition_ok=limit is not None,
            TableName=self.connections_table,
            Key={"connectionId": {"S": key}},
            UpdateExpression="ADD #n :one, #nt :one SET #ttl = :t, expiryBucket = :b, changedAt = :now",
            ExpressionAttributeNames={"#n": "n", "#nt": _transport_attr(connection.transport), **_TTL_NAMES},
            ExpressionAttributeValues=values,
            **kwargs,
        )
        return out is not None

    def _evict_expired(self, kind: str, ident: str) -> int:
        """Remove the user's / entity's records past their TTL (releasing their
        slots); how many went."""
        index, attribute = ("byUser", "userId") if kind == "u" else ("byEntity", "entityId")
        items = self._query_all(
            TableName=self.connections_table,
            IndexName=index,
            KeyConditionExpression="#k = :v",
            FilterExpression="#ttl <= :now",
            ExpressionAttributeNames={"#k": attribute, **_TTL_NAMES},
            ExpressionAttributeValues={":v": {"S": ident}, ":now": {"N": str(self._now_s())}},
        )
        return sum(1 for i in items if self.remove_connection(_s(i, "connectionId")) is not None)

    def _release_slots(self, keys: list[str], transport: str) -> None:
        for key in keys:
            self._call(
                "update_item",
                condition_ok=True,
                TableName=self.connections_table,
                Key={"connectionId": {"S": key}},
                UpdateExpression="ADD #n :minus, #nt :minus SET changedAt = :now",
                ConditionExpression="#n > :zero",
                ExpressionAttributeNames={"#n": "n", "#nt": _transport_attr(transport)},
                ExpressionAttributeValues={":minus": {"N": "-1"}, ":zero": {"N": "0"}, ":now": {"N": str(self._now_s())}},
            )

    def get_connection(self, connection_id: str) -> Connection | None:
        out = self._call("get_item", TableName=self.connections_table, Key={"connectionId": {"S": connection_id}}, ConsistentRead=True) or {}
        item = out.get("Item")
        if not item or not self._live(item, self._now_s()):
            return None
        return self._connection_from(item)

    def remove_connection(self, connection_id: str) -> Connection | None:
        if connection_id.startswith("#"):
            return None  # a counter or the sweep cursor, never a connection
        out = self._call(
            "delete_item", TableName=self.connections_table, Key={"connectionId": {"S": connection_id}}, ReturnValues="ALL_OLD"
        ) or {}
        old = out.get("Attributes")
        connection = self._connection_from(old) if old and "userId" in old else None
        if connection is not None:
            # Only the call that deleted the record releases its slots (exactly
            # once), and first: a failing subscription cleanup must not hold them.
            self._release_slots([counter_key("u", connection.user_id), counter_key("e", connection.entity_id)], connection.transport)
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
        return connection

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

    def count_connections(self, now_s: int) -> dict[str, int]:
        """Connections by transport: the sum of the entity counters whose
        newest connection has not expired (their index keys lie within
        ``connection_ttl_seconds`` ahead). Reads one small index entry per active
        entity, never the connection records."""
        from typing import get_args

        from ..models import Transport

        counts = {t: 0 for t in get_args(Transport)}
        first, last = now_s // BUCKET_SECONDS, (now_s + self.connection_ttl_seconds) // BUCKET_SECONDS + 1
        for bucket in range(first, last + 1):
            for shard in range(SHARDS):
                for item in self._query_all(
                    TableName=self.connections_table,
                    IndexName="byExpiry",
                    KeyConditionExpression="expiryBucket = :b AND #ttl > :now",
                    ExpressionAttributeNames=_TTL_NAMES,
                    ExpressionAttributeValues={":b": {"S": f"{ENTITY_COUNTER}{bucket}#{shard}"}, ":now": {"N": str(now_s)}},
                ):
                    for t in counts:
                        counts[t] += _n(item, _transport_attr(t))
        return counts

    def _sweep_cursor(self, kind: str, now_s: int) -> int:
        out = self._call("get_item", TableName=self.connections_table, Key={"connectionId": {"S": SWEEP_CURSOR}}, ConsistentRead=True) or {}
        cursor = _n(out.get("Item", {}), kind, -1)
        return cursor if cursor >= 0 else (now_s - FIRST_SWEEP_LOOKBACK_SECONDS) // BUCKET_SECONDS

    def _advance_cursor(self, kind: str, bucket: int) -> None:
        """Buckets before ``bucket`` are empty for good: nothing expiring in the
        past is ever written (new ttls lie two hours ahead)."""
        self._call(
            "update_item",
            condition_ok=True,
            TableName=self.connections_table,
            Key={"connectionId": {"S": SWEEP_CURSOR}},
            UpdateExpression="SET #k = :b",
            ConditionExpression="attribute_not_exists(#k) OR #k < :b",
            ExpressionAttributeNames={"#k": kind},
            ExpressionAttributeValues={":b": {"N": str(bucket)}},
        )

    def _expired(self, kind: str, table: str, now_s: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` index entries of ``kind`` with ``ttl <= now``, reading
        only the buckets from the sweep cursor to now; a past bucket found empty
        moves the cursor past it."""
        now_bucket = now_s // BUCKET_SECONDS
        cursor = self._sweep_cursor(kind, now_s)
        found: list[dict[str, Any]] = []
        for bucket in range(cursor, now_bucket + 1):
            in_bucket = 0
            for shard in range(SHARDS):
                kwargs: dict[str, Any] = {
                    "TableName": table,
                    "IndexName": "byExpiry",
                    "KeyConditionExpression": "expiryBucket = :b AND #ttl <= :now",
                    "ExpressionAttributeNames": _TTL_NAMES,
                    "ExpressionAttributeValues": {":b": {"S": f"{kind}{bucket}#{shard}"}, ":now": {"N": str(now_s)}},
                }
                while len(found) < limit:
                    page = self._call("query", Limit=limit - len(found), **kwargs) or {}
                    items = page.get("Items", [])
                    found.extend(items)
                    in_bucket += len(items)
                    if not page.get("LastEvaluatedKey"):
                        break
                    kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
                if len(found) >= limit:
                    return found
            # The previous hour stays in reach too: a record written late (clock
            # skew between writers) may still land there.
            if in_bucket == 0 and bucket < now_bucket - 1 and bucket == cursor:
                cursor = bucket + 1
                self._advance_cursor(kind, cursor)
        return found

    def stale_connections(self, now_s: int, limit: int) -> list[str]:
        items = self._expired(CONNECTION, self.connections_table, now_s, limit)
        return [_s(i, "connectionId") for i in items if _s(i, "connectionId")]

    def stale_subscriptions(self, now_s: int, limit: int) -> list[Subscription]:
        out = []
        for item in self._expired(SUBSCRIPTION, self.subscriptions_table, now_s, limit):
            entity_id, _, topic = _s(item, "channel").partition("#")
            out.append(Subscription(connection_id=_s(item, "connectionId"), entity_id=entity_id, topic=topic, expires_at=_n(item, "ttl")))
        return out

    def repair_counters(self, now_s: int, limit: int) -> tuple[int, int]:
        """Recount counters whose newest connection has expired (so all their
        connections are stale, and the sweep that ran first released them):
        the count of records still there, usually 0 (the counter is deleted).
        Corrects the drift of a connect killed between its writes. Each
        write is conditional on the counter being unchanged since read, and a
        counter changed in the last ``REPAIR_QUIET_SECONDS`` waits (an
        admission may be between its increment and its record).
        Returns ``(checked, corrected)``."""
        checked = corrected = 0
        due = self._expired(USER_COUNTER, self.connections_table, now_s, limit)
        due += self._expired(ENTITY_COUNTER, self.connections_table, now_s, limit - len(due)) if len(due) < limit else []
        for entry in due:
            key = _s(entry, "connectionId")
            out = self._call("get_item", TableName=self.connections_table, Key={"connectionId": {"S": key}}, ConsistentRead=True) or {}
            item = out.get("Item")
            if not item or _n(item, "ttl") > now_s or _n(item, "changedAt") > now_s - REPAIR_QUIET_SECONDS:
                continue
            checked += 1
            index, attribute = ("byUser", "userId") if key.startswith("#u#") else ("byEntity", "entityId")
            ids = [_s(i, "connectionId") for i in self._query_all(
                TableName=self.connections_table, IndexName=index, KeyConditionExpression="#k = :v",
                ExpressionAttributeNames={"#k": attribute}, ExpressionAttributeValues={":v": {"S": key[3:]}},
            )]
            by_transport: dict[str, int] = {}
            for cid in ids:
                got = self._call("get_item", TableName=self.connections_table, Key={"connectionId": {"S": cid}}, ConsistentRead=True) or {}
                if "Item" in got:
                    t = _s(got["Item"], "transport", "websocket")
                    by_transport[t] = by_transport.get(t, 0) + 1
            total = sum(by_transport.values())
            if total == _n(item, "n") and all(_n(item, _transport_attr(t)) == c for t, c in by_transport.items()) and total:
                continue
            unchanged = {
                "ConditionExpression": "#n = :n0 AND #ttl = :t0 AND changedAt = :c0",
                "ExpressionAttributeValues": {":n0": item.get("n", {"N": "0"}), ":t0": item["ttl"], ":c0": item.get("changedAt", {"N": "0"})},
            }
            if total == 0:
                done = self._call("delete_item", condition_ok=True, TableName=self.connections_table, Key={"connectionId": {"S": key}},
                                  ExpressionAttributeNames={"#n": "n", **_TTL_NAMES}, **unchanged)
            else:
                sets = ", ".join(f"#a{i} = :v{i}" for i in range(len(by_transport)))
                names = {f"#a{i}": _transport_attr(t) for i, t in enumerate(by_transport)}
                values = {f":v{i}": {"N": str(c)} for i, c in enumerate(by_transport.values())}
                # transports without a record drop to 0 too
                zero = [t for t in ("websocket", "sse") if t not in by_transport and _transport_attr(t) in item]
                for j, t in enumerate(zero):
                    sets += f", #z{j} = :zero"
                    names[f"#z{j}"] = _transport_attr(t)
                if zero:
                    values[":zero"] = {"N": "0"}
                done = self._call(
                    "update_item", condition_ok=True, TableName=self.connections_table, Key={"connectionId": {"S": key}},
                    UpdateExpression=f"SET #n = :total, {sets}",
                    ExpressionAttributeNames={"#n": "n", **_TTL_NAMES, **names},
                    ConditionExpression=unchanged["ConditionExpression"],
                    ExpressionAttributeValues={**unchanged["ExpressionAttributeValues"], ":total": {"N": str(total)}, **values},
                )
            if done is not None and total != _n(item, "n"):
                corrected += 1
        return checked, corrected
