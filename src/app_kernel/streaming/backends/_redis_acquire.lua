-- Grant a lease if the user holds fewer than the limit; prune expired ones first.
-- KEYS[1]: the user's sorted set (member = lease id, score = deadline in ms, server clock)
-- ARGV[1]: lease id   ARGV[2]: limit   ARGV[3]: ttl in ms
-- Returns {1, 0} when granted (or an already held lease was extended),
-- {0, ms until the oldest live lease expires} when refused.
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if not redis.call('ZSCORE', key, ARGV[1]) then
  if redis.call('ZCARD', key) >= tonumber(ARGV[2]) then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return {0, tonumber(oldest[2]) - now}
  end
end
redis.call('ZADD', key, now + tonumber(ARGV[3]), ARGV[1])
-- The key outlives its last lease by nothing: an idle user's set disappears.
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', key, tonumber(last[2]))
return {1, 0}
