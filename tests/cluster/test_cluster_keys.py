"""Redis Cluster key layout: every key of one entity, and the partition streams
its scripts write, hash to one slot (``redis.crc.key_slot``); each script's keys
share a slot; names still parse back."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from rtstream import keys
from rtstream.adapters.redis_eventlog import append_call, replay_call, request_replay_call
from rtstream.models import Filters, Subscription
from rtstream.settings import Settings

ENTITIES = ["acme", "e1", "ent-7f3a", "x" * 128, "a.b_c-d", "42"]


def slot(name: str) -> int:
    return key_slot(name.encode())


def entity_keys(entity_id: str, settings: Settings) -> list[str]:
    p = keys.partition_of(entity_id, settings)
    return [
        keys.history(entity_id, settings).name,
        keys.history_horizon(entity_id, settings).name,
        keys.idempotency(entity_id, "order-1", settings).name,
        keys.presence(entity_id, settings).name,
        keys.presence_by_user(entity_id, settings).name,
        keys.fanout_stream(p).name,
        keys.replay_stream(p).name,
    ]


@pytest.mark.parametrize("partitions", [1, 4, 16, 64])
def test_every_key_of_an_entity_and_its_partition_streams_share_one_slot(partitions):
    settings = Settings().replace(fanout_partitions=partitions)
    for entity_id in ENTITIES:
        names = entity_keys(entity_id, settings)
        assert len({slot(n) for n in names}) == 1, (entity_id, names)


def test_partitions_spread_over_slots():
    """Distinct partitions are distinct slots: a cluster spreads them over its nodes."""
    assert len({slot(keys.fanout_stream(p).name) for p in range(64)}) == 64


def test_each_script_touches_one_slot():
    settings = Settings()
    for entity_id in ENTITIES:
        (append_keys, _), _ = append_call(settings, entity_id, "balance.updated", {"balance": 1}, "t", 1, idempotency_key="k-1")
        assert len(append_keys) == 4 and len({slot(k) for k in append_keys}) == 1
        (plain_keys, _), _ = append_call(settings, entity_id, "balance.updated", {"balance": 1}, "t", 1)
        assert len({slot(k) for k in plain_keys}) == 1
        replay_keys, _ = replay_call(settings, entity_id, "0-0", None)
        assert len({slot(k) for k in replay_keys}) == 1
        sub = Subscription(connection_id="c1", entity_id=entity_id, topic="*", filters=Filters())
        request_keys, _ = request_replay_call(settings, sub, "0-0")
        assert len({slot(k) for k in request_keys}) == 1
        # presence: both sorted sets in one script call
        assert slot(keys.presence(entity_id, settings).name) == slot(keys.presence_by_user(entity_id, settings).name)


def test_presence_key_names_parse_back_and_others_do_not():
    settings = Settings()
    for entity_id in ENTITIES:
        assert keys.presence_entity(keys.presence(entity_id, settings).name) == entity_id
        assert keys.presence_entity(keys.presence(entity_id, settings).name.encode()) == entity_id
    assert keys.presence_entity(keys.presence_by_user("acme", settings).name) is None
    assert keys.presence_entity("rt:presence:acme") is None  # the pre-cluster layout
    assert keys.presence_entity("rt:presence:{p3}:") is None
