-- Cancel a waiting job, or ask a running one to stop (unless waiting_only).
-- ARGV: job_id, cancelled_ttl_ms, waiting_only (1 or 0). Returns 1 or 0.
local id = ARGV[1]
local key = job_key(id)
local job = redis.call('HMGET', key, 'status', 'priority')
local status = job[1]
if status == 'running' then
  if ARGV[3] == '1' then
    return 0
  end
  redis.call('HSET', key, 'cancel', '1')
  return 1
end
if status == 'queued' then
  redis.call('LREM', K_QUEUE[job[2]], 1, id)
elseif status == 'scheduled' or status == 'retrying' then
  redis.call('ZREM', K_SCHEDULED, id)
else
  return 0
end
redis.call('HSET', key, 'status', 'cancelled', 'finished_at', fmt(clock()))
redis.call('PEXPIRE', key, ARGV[2])
return 1
