-- Read what a replay needs in one step.
-- KEYS[1] history stream; ARGV[1] since (exclusive), ARGV[2] until (inclusive) or '+'
-- Returns {exists, horizon (max-deleted-entry-id), entries}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, '', {}}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local horizon = ''
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then
    horizon = info[i + 1]
  end
end
return {1, horizon, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], ARGV[2])}
