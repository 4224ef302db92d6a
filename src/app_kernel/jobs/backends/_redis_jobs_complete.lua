-- Mark a job succeeded. ARGV: job_id, token, result_json, result_ttl_ms,
-- has_callback ('1'/'0'), then the on_success spec's fields.
local id = ARGV[1]
local key = owned(id, ARGV[2])
if not key then
  return 0
end
local now = clock()
redis.call('ZREM', K_ACTIVE, id)
redis.call('HSET', key, 'status', 'succeeded', 'result', ARGV[3], 'finished_at', fmt(now))
redis.call('HDEL', key, 'token', 'lease')
redis.call('PEXPIRE', key, ARGV[4])
enqueue_callback(ARGV, 6, now)
return 1
