-- Queue depths and the age of the oldest job that could run now.
-- Returns {high, normal, low, scheduled, running, dead, oldest_waiting_seconds}.
-- The oldest waiting job is the earliest of each ready list's head (waiting since
-- its run_at, or its enqueued_at when it was never scheduled) and the most
-- overdue scheduled job not yet promoted (no worker has claimed since it fell due).
local now = clock()
local now_ms = now * 1000
local oldest = now
for _, priority in ipairs(PRIOS) do
  local id = redis.call('LINDEX', K_QUEUE[priority], 0)
  if id then
    local since = redis.call('HMGET', job_key(id), 'run_at', 'enqueued_at')
    local at = tonumber(since[1] or since[2])
    if at and at < oldest then
      oldest = at
    end
  end
end
local due = redis.call('ZRANGEBYSCORE', K_SCHEDULED, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, 1)
if due[2] then
  local at = tonumber(due[2]) / 1000
  if at < oldest then
    oldest = at
  end
end
return {
  redis.call('LLEN', K_QUEUE.high),
  redis.call('LLEN', K_QUEUE.normal),
  redis.call('LLEN', K_QUEUE.low),
  redis.call('ZCARD', K_SCHEDULED),
  redis.call('ZCARD', K_ACTIVE),
  redis.call('ZCOUNT', K_DEAD, '(' .. now_ms, '+inf'),
  fmt(now - oldest),
}
