-- Record progress. ARGV: job_id, token, fraction, message (opt). Returns 1 or 0.
local key = owned(ARGV[1], ARGV[2])
if not key then
  return 0
end
redis.call('HSET', key, 'progress', ARGV[3])
local message = opt_in(ARGV[4])
if message then
  redis.call('HSET', key, 'progress_message', message)
else
  redis.call('HDEL', key, 'progress_message')
end
return 1
