-- Count the live leases and the time until the oldest expires (read only).
-- KEYS[1]: the user's sorted set
-- Returns {live leases, ms until the oldest live lease expires (0 when none)}.
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZCOUNT', key, '(' .. now, '+inf')
if live == 0 then
  return {0, 0}
end
local oldest = redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {live, tonumber(oldest[2]) - now}
