-- Append one event: [idempotency check] + history XADD (+ trim) + PEXPIRE + fan-out XADD, atomically.
-- KEYS[1] history stream, KEYS[2] partition stream, KEYS[3] history horizon,
-- KEYS[4] (optional) idempotency key of this publish (keys.idempotency)
-- ARGV[1] history maxlen, ARGV[2] history ttl ms, ARGV[3] partition maxlen,
-- ARGV[4] "1" record in history, ARGV[5] idempotency window s, ARGV[6] n = history field pairs,
-- ARGV[7 .. 6+2n] history fields, then the partition entry's fields (without "id").
-- Returns the event id; with KEYS[4], {id, duplicate}: a key seen within the
-- window returns the first event's id and appends nothing.
local idem = KEYS[4]
if idem then
  local prior = redis.call('GET', idem)
  if prior then
    return {prior, 1}
  end
end
local n = tonumber(ARGV[6])
local first_queued = 7 + 2 * n
local queued = {}
for i = first_queued, #ARGV do
  queued[#queued + 1] = ARGV[i]
end
local id
if ARGV[4] == '1' then
  local hist = {'XADD', KEYS[1], '*'}
  for i = 7, first_queued - 1 do
    hist[#hist + 1] = ARGV[i]
  end
  local existed = redis.call('EXISTS', KEYS[1])
  id = redis.call(unpack(hist))
  if existed == 0 then
    -- Whatever an earlier, expired stream of this entity held is lost: the new
    -- stream's first id is the horizon, so older cursors answer replay_gap.
    redis.call('SET', KEYS[3], id)
  end
  -- Trim exactly, in small batches, recording the last trimmed id as the horizon.
  local maxlen = tonumber(ARGV[1])
  local len = redis.call('XLEN', KEYS[1])
  if len >= maxlen + math.min(100, math.max(1, math.floor(maxlen / 10))) then
    local drop = len - maxlen
    local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', drop + 1)
    redis.call('XTRIM', KEYS[1], 'MINID', head[drop + 1][1])
    redis.call('SET', KEYS[3], head[drop][1])
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'id', id, unpack(queued))
else
  -- Not recorded (presence): the work-stream entry id stands in as the event id.
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'id', '', unpack(queued))
end
if idem then
  redis.call('SET', idem, id, 'EX', tonumber(ARGV[5]))
  return {id, 0}
end
return id
