-- Move a live lease's deadline; a lease that expired is gone for good.
-- KEYS[1]: the user's sorted set   ARGV[1]: lease id   ARGV[2]: ttl in ms
-- Returns 1 when refreshed, 0 when the lease was unknown or expired.
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if not redis.call('ZSCORE', key, ARGV[1]) then
  return 0
end
redis.call('ZADD', key, 'XX', now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', key, tonumber(last[2]))
return 1
