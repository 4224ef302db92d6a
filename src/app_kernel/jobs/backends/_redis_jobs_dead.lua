-- Dead letters: list, requeue or purge.
-- ARGV: action ('list', 'retry' or 'purge'), job_id ('' for a batch), offset, limit.
-- list returns {id, field, value, ..., '', ...} records separated by ''; retry and
-- purge return {done, batch_was_full}.
local action, one, offset, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = clock()
prune_dead(now)
if action == 'list' then
  local ids = redis.call('ZREVRANGEBYSCORE', K_DEAD, '+inf', '-inf', 'LIMIT', offset, limit)
  local reply = {}
  for _, id in ipairs(ids) do
    local record = redis.call('HGETALL', job_key(id))
    if #record > 0 then
      reply[#reply + 1] = id
      for _, item in ipairs(record) do
        reply[#reply + 1] = item
      end
      reply[#reply + 1] = ''
    end
  end
  return reply
end
local ids
if one ~= '' then
  ids = {one}
else
  ids = redis.call('ZRANGEBYSCORE', K_DEAD, '-inf', '+inf', 'LIMIT', 0, limit)
end
local done = 0
for _, id in ipairs(ids) do
  local key = job_key(id)
  local job = redis.call('HMGET', key, 'status', 'priority')
  if job[1] == 'dead' then
    redis.call('ZREM', K_DEAD, id)
    done = done + 1
    if action == 'retry' then
      redis.call('PERSIST', key)
      redis.call('HSET', key, 'status', 'queued', 'attempt', '0')
      redis.call('HDEL', key, 'finished_at', 'started_at', 'worker', 'cancel', 'progress',
        'progress_message')
      redis.call('RPUSH', K_QUEUE[job[2]], id)
    else
      redis.call('DEL', key)
    end
  elseif one == '' then
    redis.call('ZREM', K_DEAD, id)
  end
end
if action == 'retry' then
  wake(done)
end
return {done, (one == '' and #ids >= limit) and 1 or 0}
