"""Topics and the payload schema of each (from the seed's ``RealTimeEvents``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InvalidPayload, UnknownTopic

TRANSACTIONS_NEW = "transactions.new"
AGENT_ACTION_COMPLETED = "agent.action.completed"
BALANCE_UPDATED = "balance.updated"
SYNC_COMPLETED = "sync.completed"
PRESENCE = "presence"
WILDCARD = "*"

# Business topics: what backends publish and what ``*`` stands for.
EVENT_TOPICS: tuple[str, ...] = (TRANSACTIONS_NEW, AGENT_ACTION_COMPLETED, BALANCE_UPDATED, SYNC_COMPLETED)
# What a client may name in subscribe/unsubscribe. ``presence`` is not part of ``*``.
SUBSCRIBABLE_TOPICS: tuple[str, ...] = EVENT_TOPICS + (WILDCARD, PRESENCE)

_NUMBER = "number"
_STRING = "string"
_INTEGER = "integer"
_ANY = "any"

# field -> (kind, required)
SCHEMAS: dict[str, dict[str, tuple[str, bool]]] = {
    TRANSACTIONS_NEW: {
        "transactionId": (_STRING, True),
        "amount": (_NUMBER, True),
        "merchant": (_STRING, True),
        "category": (_STRING, False),
    },
    AGENT_ACTION_COMPLETED: {
        "agentId": (_STRING, True),
        "action": (_STRING, True),
        "result": (_ANY, True),
    },
    BALANCE_UPDATED: {
        "accountId": (_STRING, True),
        "newBalance": (_NUMBER, True),
        "change": (_NUMBER, True),
    },
    SYNC_COMPLETED: {
        "source": (_STRING, True),
        "recordsUpdated": (_INTEGER, True),
    },
    PRESENCE: {
        "userId": (_STRING, True),
        "state": (_STRING, True),
        "connections": (_INTEGER, True),
        "transports": (_ANY, True),
    },
}


def _is_kind(value: Any, kind: str) -> bool:
    if kind == _ANY:
        return True
    if kind == _STRING:
        return isinstance(value, str)
    if isinstance(value, bool):  # bool is an int subclass, never a number here
        return False
    if kind == _INTEGER:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and value == value and value not in (float("inf"), float("-inf"))


def require_subscribable(topic: Any) -> str:
    if not isinstance(topic, str) or topic not in SUBSCRIBABLE_TOPICS:
        raise UnknownTopic(f"unknown topic {topic!r}; expected one of {', '.join(SUBSCRIBABLE_TOPICS)}")
    return topic


def require_publishable(topic: Any) -> str:
    """Topics a backend may publish to (presence is published by the system only)."""
    if not isinstance(topic, str) or topic not in EVENT_TOPICS:
        raise UnknownTopic(f"unknown topic {topic!r}; expected one of {', '.join(EVENT_TOPICS)}")
    return topic


def validate_payload(topic: str, data: Any) -> dict:
    """Check ``data`` against the topic's schema; extra fields are kept.

    Raises :class:`InvalidPayload` naming every problem, so a publisher sees
    them all at once.
    """
    if topic not in SCHEMAS:
        raise UnknownTopic(f"unknown topic {topic!r}")
    if not isinstance(data, Mapping):
        raise InvalidPayload(f"{topic} payload must be a JSON object, got {type(data).__name__}")
    problems = []
    for field, (kind, required) in SCHEMAS[topic].items():
        if field not in data:
            if required:
                problems.append(f"missing field {field!r}")
            continue
        if not _is_kind(data[field], kind):
            problems.append(f"field {field!r} must be a {kind}, got {type(data[field]).__name__}")
    if problems:
        raise InvalidPayload(f"invalid {topic} payload: " + "; ".join(problems))
    return dict(data)
