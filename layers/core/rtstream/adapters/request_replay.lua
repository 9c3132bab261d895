-- Queue a replay entry whose "until" is the entity's last history id, atomically.
-- KEYS[1] history stream, KEYS[2] the partition's replay stream
-- ARGV[1] partition maxlen, ARGV[2..] the entry's fields (without "until").
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local until_id = ''
if #last > 0 then
  until_id = last[1][1]
end
local entry = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*'}
for i = 2, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
entry[#entry + 1] = 'until'
entry[#entry + 1] = until_id
return redis.call(unpack(entry))
