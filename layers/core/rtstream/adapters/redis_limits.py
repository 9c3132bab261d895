"""Redis adapters for the limits and presence ports, shared by every Lambda
invocation, container and process (state that one process alone cannot hold).

Each operation is one Lua script, so concurrent invocations cannot race, and
each uses Redis's own clock (``TIME``), so skewed Lambda clocks cannot bend a
bucket or expire a live connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import keys
from ..errors import BackendUnavailable
from ..models import JsonObject
from ..presence import Member, changes, decode_member, encode_member, summarize
from ..settings import Settings

_TOKEN_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return allowed
"""

_INCR_WITH_TTL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) end
return n
"""

# KEYS[1] presence zset (scored by heartbeat), KEYS[2] the same members scored 0
# (one user's members by ZRANGEBYLEX). ARGV: op ('beat'|'leave'|'read'|'sweep'),
# member, ttl_ms, keep_ms.
# 'beat'/'leave' return {members before, live members after} of the users the
# step touches (the caller's and those of expired members), dropping expired
# members (connections whose $disconnect never arrived) in the same step, so
# their users' offline events come out of the next change in that entity.
# 'sweep' only drops expired members (the housekeeping's offline events); it
# returns {{}, {}} when nothing expired. 'read' changes nothing and returns
# {{}, live members}. The keys outlive their last heartbeat by keep_ms (> ttl) so
# a sweep still finds the members that expired and can announce them.
# Cost: O(log N + expired + the touched users' members), never the whole set.
_PRESENCE = """
local key = KEYS[1]
local by_user = KEYS[2]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[3])
if op == 'read' then
  return {{}, redis.call('ZRANGEBYSCORE', key, cutoff, '+inf')}
end
local expired = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. cutoff)
if op == 'sweep' and #expired == 0 then
  return {{}, {}}
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. cutoff)
  for i = 1, #expired, 500 do
    redis.call('ZREM', by_user, unpack(expired, i, math.min(i + 499, #expired)))
  end
end
-- Only the users this step touches can change: the caller's and the expired ones'.
local affected = {}
for _, m in ipairs(expired) do
  local u = string.match(m, '^([^|]*)|')
  if u then affected[u] = true end
end
if op ~= 'sweep' then
  local u = string.match(ARGV[2], '^([^|]*)|')
  if u then affected[u] = true end
end
local current = {}
for u in pairs(affected) do
  -- ids never contain '|' (0x7C), so '}' (0x7D) bounds the user's prefix
  for _, m in ipairs(redis.call('ZRANGEBYLEX', by_user, '[' .. u .. '|', '(' .. u .. '}')) do
    table.insert(current, m)
  end
end
local before = {}
for _, m in ipairs(expired) do table.insert(before, m) end
local after = {}
local present = false
for _, m in ipairs(current) do
  table.insert(before, m)
  if m == ARGV[2] then present = true end
  if not (op == 'leave' and m == ARGV[2]) then table.insert(after, m) end
end
if op == 'beat' then
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('ZADD', by_user, 0, ARGV[2])
  if not present then table.insert(after, ARGV[2]) end
elseif op == 'leave' then
  redis.call('ZREM', key, ARGV[2])
  redis.call('ZREM', by_user, ARGV[2])
end
if op ~= 'sweep' and redis.call('ZCARD', key) > 0 then
  redis.call('PEXPIRE', key, tonumber(ARGV[4]))
  redis.call('PEXPIRE', by_user, tonumber(ARGV[4]))
end
return {before, after}
"""
# KEYS[1] presence zset, KEYS[2] its by-user twin; ARGV[1] key lifetime ms; ARGV[2..] members to mark live now.
_PRESENCE_TOUCH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now, ARGV[i])
  redis.call('ZADD', KEYS[2], 0, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))
return #ARGV - 1
"""
_TOUCH_BATCH = 500
# How long a presence key outlives its last heartbeat beyond the TTL: longer
# than the housekeeping period (1 minute), so no expiry goes unannounced.
PRESENCE_SWEEP_SLACK_MS = 180_000
_SCAN_COUNT = 500


def _translate(exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(f"redis: {exc.__class__.__name__}: {exc}")


class RedisRateLimiter:
    """Token bucket per connection (``keys.rate_bucket``) and a count of refused
    messages (``keys.rate_violations``) that decides when a flooder is closed."""

    def __init__(self, client: Any):
        self._client = client
        self._bucket = client.register_script(_TOKEN_BUCKET)
        self._incr = client.register_script(_INCR_WITH_TTL)

    def allow(self, connection_id: str, rate_per_second: float, burst: int) -> bool:
        key = keys.rate_bucket(connection_id)
        try:
            return bool(self._bucket(keys=[key.name], args=[rate_per_second, burst, key.ttl_seconds]))
        except Exception as exc:  # redis.RedisError and connection errors
            raise _translate(exc) from exc

    def record_violation(self, connection_id: str) -> int:
        key = keys.rate_violations(connection_id)
        try:
            return int(self._incr(keys=[key.name], args=[key.ttl_seconds]))
        except Exception as exc:
            raise _translate(exc) from exc


class RedisPresence:
    """Presence per entity in a sorted set scored by last heartbeat (``keys.presence``)."""

    def __init__(self, client: Any, settings: Settings):
        self._client = client
        self._settings = settings
        self._script = client.register_script(_PRESENCE)
        self._touch = client.register_script(_PRESENCE_TOUCH)

    def _run(self, entity_id: str, op: str, member: str) -> tuple[list[Member], list[Member]]:
        key = keys.presence(entity_id, self._settings)
        ttl_ms = key.ttl_seconds * 1000
        try:
            by_user = keys.presence_by_user(entity_id, self._settings).name
            before, after = self._script(keys=[key.name, by_user], args=[op, member, ttl_ms, ttl_ms + PRESENCE_SWEEP_SLACK_MS])
        except Exception as exc:
            raise _translate(exc) from exc
        decode = lambda raws: [m for m in (decode_member(r) for r in raws) if m is not None]  # noqa: E731
        return decode(before), decode(after)

    def apply_many(self, steps: Sequence[tuple[str, str, str, str, str]]) -> list[list[JsonObject]]:
        """Heartbeats and leaves ``(op 'beat'|'leave', entity, user, connection,
        transport)`` in order, in ONE pipelined round trip; the presence changes
        of each. For a server applying its streams' joins in batches."""
        from .redis_client import run_scripts

        calls = []
        for op, entity_id, user_id, connection_id, transport in steps:
            key = keys.presence(entity_id, self._settings)
            ttl_ms = key.ttl_seconds * 1000
            calls.append((self._script, [key.name, keys.presence_by_user(entity_id, self._settings).name],
                          [op, encode_member(user_id, connection_id, transport), ttl_ms, ttl_ms + PRESENCE_SWEEP_SLACK_MS]))
        try:
            replies = run_scripts(self._client, calls)
        except Exception as exc:
            raise _translate(exc) from exc
        decode = lambda raws: [m for m in (decode_member(r) for r in raws) if m is not None]  # noqa: E731
        return [changes(decode(before), decode(after)) for before, after in replies]

    def heartbeat(self, entity_id: str, user_id: str, connection_id: str, transport: str) -> list[JsonObject]:
        """Mark the connection live now; returns presence changes (join etc.)."""
        before, after = self._run(entity_id, "beat", encode_member(user_id, connection_id, transport))
        return changes(before, after)

    def leave(self, entity_id: str, user_id: str, connection_id: str, transport: str) -> list[JsonObject]:
        before, after = self._run(entity_id, "leave", encode_member(user_id, connection_id, transport))
        return changes(before, after)

    def touch(self, entity_id: str, members: Sequence[tuple[str, str, str]]) -> None:
        """Refresh many live connections of one entity at once (``(user, connection,
        transport)`` each) without computing changes: a server's periodic heartbeat
        for connections it already announced."""
        key = keys.presence(entity_id, self._settings)
        lifetime_ms = key.ttl_seconds * 1000 + PRESENCE_SWEEP_SLACK_MS
        encoded = [encode_member(*m) for m in members]
        try:
            for i in range(0, len(encoded), _TOUCH_BATCH):
                self._touch(keys=[key.name, keys.presence_by_user(entity_id, self._settings).name], args=[lifetime_ms, *encoded[i : i + _TOUCH_BATCH]])
        except Exception as exc:
            raise _translate(exc) from exc

    def online(self, entity_id: str) -> list[JsonObject]:
        _, after = self._run(entity_id, "read", "")
        return summarize(after)

    def sweep(self) -> dict[str, list[JsonObject]]:
        """Drop expired members of every entity (SCAN over the presence keys)."""
        try:
            names = list(self._client.scan_iter(match=keys.PRESENCE_SCAN_PATTERN, count=_SCAN_COUNT))
        except Exception as exc:
            raise _translate(exc) from exc
        out: dict[str, list[JsonObject]] = {}
        for name in names:
            entity_id = keys.presence_entity(name)
            if entity_id is None:
                continue
            before, after = self._run(entity_id, "sweep", "")
            if before:
                out[entity_id] = changes(before, after)
        return out
