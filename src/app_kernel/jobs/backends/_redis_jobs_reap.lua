-- Treat up to `limit` expired leases as failed attempts ("lease expired").
-- ARGV: dead_ttl_ms, limit, base_seconds, cap_seconds, min_delay_seconds, then
-- `limit` random floats in [0, 1) for the full jitter. Returns how many.
local dead_ttl_ms, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local base_s, cap_s, min_s = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = clock()
local expired = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', now * 1000, 'LIMIT', 0, limit)
local reaped, retrying = 0, 0
for index, id in ipairs(expired) do
  redis.call('ZREM', K_ACTIVE, id)
  local key = job_key(id)
  local job = redis.call('HMGET', key, 'status', 'attempt', 'max_attempts')
  if job[1] == 'running' then
    reaped = reaped + 1
    local attempt = tonumber(job[2])
    redis.call('HSET', key, 'error', 'lease expired')
    redis.call('HDEL', key, 'traceback')
    if attempt < tonumber(job[3]) then
      local ceiling = math.min(cap_s, base_s * 2 ^ (attempt - 1))
      local delay = math.max(min_s, tonumber(ARGV[5 + index]) * ceiling)
      to_retrying(key, id, now, delay)
      retrying = retrying + 1
    else
      to_dead(key, id, now, dead_ttl_ms)
    end
  end
end
if reaped > 0 then
  prune_dead(now)
end
wake(retrying)
return reaped
