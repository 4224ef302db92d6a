-- Hand a running job back to the front of its queue without spending the attempt.
-- ARGV: job_id, token. Returns 1 or 0.
local id = ARGV[1]
local key = owned(id, ARGV[2])
if not key then
  return 0
end
local job = redis.call('HMGET', key, 'attempt', 'priority')
redis.call('ZREM', K_ACTIVE, id)
redis.call('HSET', key, 'status', 'queued', 'attempt', math.max(0, tonumber(job[1]) - 1))
redis.call('HDEL', key, 'token', 'lease', 'worker', 'started_at')
redis.call('LPUSH', K_QUEUE[job[2]], id)
wake(1)
return 1
