-- Read what a replay needs in one step.
-- KEYS[1] history stream, KEYS[2] history horizon
-- ARGV[1] since (exclusive), ARGV[2] until (inclusive) or '+'
-- Returns {exists, horizon, entries}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, '', {}}
end
local horizon = redis.call('GET', KEYS[2]) or ''
if ARGV[1] == '18446744073709551615-18446744073709551615' then
  -- the largest id: nothing can follow it (and '(' of it is an XRANGE error)
  return {1, horizon, {}}
end
return {1, horizon, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], ARGV[2])}
