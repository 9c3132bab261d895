"""Every Redis key and channel name, and its TTL, is built here and only here.

One function per key (the channels_redis ``_group_key`` rule): when a name or a
lifetime changes, it changes in one place. Values are plain data; the Redis
adapters apply them.

Redis Cluster: every key of one entity, and its partition's fan-out and replay
streams, carry the same hash tag, :func:`slot_tag` (``{p3}``: the entity's
partition), so they live in one hash slot and every script touches one slot.
Other keys (rate buckets, leases, counters) are single-key. Changing
``RTSTREAM_FANOUT_PARTITIONS`` remaps entities to other tags, i.e. other key
names: history, presence and idempotency keys written before are not found
under the new names (see docs/DESIGN.md).
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

from .settings import Settings

PREFIX = "rt"


class RedisKey(NamedTuple):
    name: str
    # None: the key lives as long as Redis keeps it (bounded by other means)
    ttl_seconds: int | None


# ---- publishing: the seed-compatible raw channel -------------------------------

RAW_CHANNEL_PATTERN = "*:entity:*"


def raw_channel(topic: str, entity_id: str) -> str:
    """``PUBLISH {topic}:entity:{entityId}`` from any backend, no SDK needed."""
    return f"{topic}:entity:{entity_id}"


def parse_raw_channel(channel: str) -> tuple[str, str] | None:
    """``"transactions.new:entity:e1"`` -> ``("transactions.new", "e1")``; None if not one."""
    topic, sep, entity_id = channel.partition(":entity:")
    if not sep or not topic or not entity_id:
        return None
    return topic, entity_id


# ---- hash slots (Redis Cluster) -----------------------------------------------


def partition_of(entity_id: str, settings: Settings) -> int:
    """Stable entity -> fan-out partition; one entity's events stay in one ordered stream."""
    return zlib.crc32(entity_id.encode()) % max(1, settings.fanout_partitions)


def slot_tag(partition: int) -> str:
    """The hash tag of a partition: only the text between the first ``{`` and
    ``}`` of a name picks its cluster slot, so every name carrying ``{p3}``
    shares one slot (the append script writes history AND partition stream)."""
    return f"{{p{partition}}}"


def _entity_tag(entity_id: str, settings: Settings) -> str:
    return slot_tag(partition_of(entity_id, settings))


# ---- history and fan-out streams ----------------------------------------------


def history(entity_id: str, settings: Settings) -> RedisKey:
    """Per-entity stream of events; ids are the replay cursor. Length is capped at
    ``history_maxlen``; the key expires ``history_ttl_seconds`` after the last event."""
    return RedisKey(f"{PREFIX}:history:{_entity_tag(entity_id, settings)}:{entity_id}", settings.history_ttl_seconds)


def history_horizon(entity_id: str, settings: Settings) -> RedisKey:
    """Highest id no longer in the entity's history (trimmed, or lost with an
    expired stream); replays from older cursors are gaps. Lives and expires
    with the history stream."""
    return RedisKey(f"{PREFIX}:history-horizon:{_entity_tag(entity_id, settings)}:{entity_id}", settings.history_ttl_seconds)


def fanout_stream(partition: int) -> RedisKey:
    """Work stream read by the fan-out workers (consumer group); capped by MAXLEN."""
    return RedisKey(f"{PREFIX}:fanout:{slot_tag(partition)}", None)


FANOUT_GROUP = "fanout"


def replay_stream(partition: int) -> RedisKey:
    """Replay requests (subscribe with ``since``) of one partition: a lane of their
    own, read by the partition's owner, so a resume never waits behind live work."""
    return RedisKey(f"{PREFIX}:replay:{slot_tag(partition)}", None)


def dead_letter_stream() -> RedisKey:
    """Work entries the fan-out could not handle (reason, entity, original fields);
    capped at ``DEAD_LETTER_MAXLEN`` entries, read by operators."""
    return RedisKey(f"{PREFIX}:dead-letters", None)


DEAD_LETTER_MAXLEN = 10_000


def ingest_lease() -> RedisKey:
    """Which worker records raw ``PUBLISH``es (one ingest owner: each publish once)."""
    return RedisKey(f"{PREFIX}:lease:ingest", 10)


def fanout_lease(partition: int) -> RedisKey:
    """Which worker owns a partition; renewed while the owner lives."""
    return RedisKey(f"{PREFIX}:lease:fanout:{partition}", 10)


def idempotency(entity_id: str, key: str, settings: Settings) -> RedisKey:
    """The id of the event a publisher published with idempotency ``key`` for
    this entity; a repeat within the window returns it instead of appending.
    (Entity ids carry no ':', so the name is unambiguous.)"""
    return RedisKey(f"{PREFIX}:idempotency:{_entity_tag(entity_id, settings)}:{entity_id}:{key}", max(1, settings.idempotency_window_seconds))


# ---- limits and presence ------------------------------------------------------


def rate_bucket(connection_id: str) -> RedisKey:
    """Token bucket of one connection's inbound messages (shared by Lambda invocations)."""
    return RedisKey(f"{PREFIX}:rate:{connection_id}", 60)


def rate_violations(connection_id: str) -> RedisKey:
    """Count of refused messages of one connection; too many closes it."""
    return RedisKey(f"{PREFIX}:rate-violations:{connection_id}", 60)


def presence(entity_id: str, settings: Settings) -> RedisKey:
    """Sorted set of an entity's live connections scored by last heartbeat."""
    return RedisKey(f"{PREFIX}:presence:{_entity_tag(entity_id, settings)}:{entity_id}", settings.presence_ttl_seconds)


def presence_by_user(entity_id: str, settings: Settings) -> RedisKey:
    """The same members as :func:`presence`, all scored 0, so one user's members
    are a ZRANGEBYLEX away: a heartbeat costs O(log N), not O(N) (it read the
    whole set, 0.8 ms per SSE connect in an entity of 5,000). Same lifetime."""
    return RedisKey(f"{PREFIX}:presence-by-user:{_entity_tag(entity_id, settings)}:{entity_id}", settings.presence_ttl_seconds)


PRESENCE_SCAN_PATTERN = f"{PREFIX}:presence:*"


def presence_entity(key_name: str | bytes) -> str | None:
    """Entity id of a :func:`presence` key, ``rt:presence:{p3}:acme`` -> ``acme``
    (the housekeeping sweep scans them)."""
    if isinstance(key_name, bytes):
        key_name = key_name.decode()
    head = f"{PREFIX}:presence:{{p"
    if not key_name.startswith(head):
        return None
    _, sep, entity_id = key_name[len(head) :].partition("}:")
    return entity_id if sep and entity_id else None


def metrics_counter(name: str) -> RedisKey:
    """Process-shared counters for the local /metrics (reconnects, deliveries)."""
    return RedisKey(f"{PREFIX}:metrics:{name}", None)
