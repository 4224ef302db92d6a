-- The worker registry: a ZSET of expiry times and a JSON string per worker.
-- ARGV: action ('register', 'unregister' or 'list'), worker_id, info_json, ttl_ms.
local action = ARGV[1]
local now_ms = clock() * 1000
redis.call('ZREMRANGEBYSCORE', K_WORKERS, '-inf', now_ms)
if action == 'register' then
  local ttl_ms = tonumber(ARGV[4])
  redis.call('ZADD', K_WORKERS, now_ms + ttl_ms, ARGV[2])
  redis.call('SET', base .. ':worker:' .. ARGV[2], ARGV[3], 'PX', ttl_ms)
  if redis.call('PTTL', K_WORKERS) < ttl_ms then
    redis.call('PEXPIRE', K_WORKERS, ttl_ms)
  end
  return {}
end
if action == 'unregister' then
  redis.call('ZREM', K_WORKERS, ARGV[2])
  redis.call('DEL', base .. ':worker:' .. ARGV[2])
  return {}
end
local reply = {}
for _, id in ipairs(redis.call('ZRANGE', K_WORKERS, 0, -1)) do
  local info = redis.call('GET', base .. ':worker:' .. id)
  if info then
    reply[#reply + 1] = info
  end
end
return reply
