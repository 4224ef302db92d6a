-- Extend a lease. ARGV: job_id, token, lease_ms. Returns {owned, cancel_requested}.
local id, token, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = owned(id, token)
if not key then
  return {0, 0}
end
local deadline_ms = clock() * 1000 + lease_ms
redis.call('ZADD', K_ACTIVE, deadline_ms, id)
redis.call('HSET', key, 'lease', fmt(deadline_ms / 1000))
if redis.call('HGET', key, 'cancel') == '1' then
  return {1, 1}
end
return {1, 0}
