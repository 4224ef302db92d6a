-- Record a failed attempt. ARGV: job_id, token, error, traceback (opt),
-- retry_delay_seconds ('' for none), dead_ttl_ms, has_callback, on_failure spec.
-- Returns 'retrying', 'dead' or 'lost'.
local id = ARGV[1]
local key = owned(id, ARGV[2])
if not key then
  return 'lost'
end
local now = clock()
redis.call('ZREM', K_ACTIVE, id)
redis.call('HSET', key, 'error', ARGV[3])
local traceback = opt_in(ARGV[4])
if traceback then
  redis.call('HSET', key, 'traceback', traceback)
else
  redis.call('HDEL', key, 'traceback')
end
local job = redis.call('HMGET', key, 'attempt', 'max_attempts')
if ARGV[5] ~= '' and tonumber(job[1]) < tonumber(job[2]) then
  to_retrying(key, id, now, tonumber(ARGV[5]))
  wake(1)
  return 'retrying'
end
prune_dead(now)
to_dead(key, id, now, tonumber(ARGV[6]))
enqueue_callback(ARGV, 8, now)
return 'dead'
