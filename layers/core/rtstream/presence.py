"""Presence: who is online in an entity, and the join/leave events, as pure logic.

A presence store keeps one member per live connection, ``user|connection|transport``,
scored by its last heartbeat. Members whose heartbeat is older than the presence
TTL are expired (their ``$disconnect`` never arrived). The store returns the
members before and after each change; :func:`changes` turns that into the
``presence`` topic's join/leave payloads, so every store computes them alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from .models import JsonObject, JsonValue

ONLINE = "online"
OFFLINE = "offline"


class Member(NamedTuple):
    user_id: str
    connection_id: str
    transport: str


def encode_member(user_id: str, connection_id: str, transport: str) -> str:
    # '|' never occurs in identifiers (models.IDENTIFIER) or connection ids
    return f"{user_id}|{connection_id}|{transport}"


def decode_member(raw: str | bytes) -> Member | None:
    if isinstance(raw, bytes):
        raw = raw.decode()
    parts = raw.split("|")
    if len(parts) != 3:
        return None
    return Member(*parts)


def summarize(members: Iterable[Member]) -> list[JsonObject]:
    """Members -> ``[{"userId", "connections", "transports"}]`` sorted by user."""
    by_user: dict[str, list[Member]] = {}
    for m in members:
        by_user.setdefault(m.user_id, []).append(m)
    return [
        {
            "userId": user,
            "connections": len(ms),
            "transports": list[JsonValue](sorted({m.transport for m in ms})),
        }
        for user, ms in sorted(by_user.items())
    ]


def changes(before: Iterable[Member], after: Iterable[Member]) -> list[JsonObject]:
    """Presence payloads for users whose online state or connection set changed.

    A user appearing -> ``online``; disappearing -> ``offline``; a changed
    connection count or transport set while online -> ``online`` with the new
    figures (so dashboards can show "2 devices").
    """
    old = {str(u["userId"]): u for u in summarize(before)}
    new = {str(u["userId"]): u for u in summarize(after)}
    out: list[JsonObject] = []
    for user in sorted(set(old) | set(new)):
        if user not in new:
            out.append({"userId": user, "state": OFFLINE, "connections": 0, "transports": []})
        elif old.get(user) != new[user]:
            out.append({"userId": user, "state": ONLINE, "connections": new[user]["connections"], "transports": new[user]["transports"]})
    return out
