-- Promote due scheduled/retrying jobs, then take up to `limit` ready jobs.
-- ARGV: worker_id, limit, lease_ms, token_base, allowed ('1'/'0' for high, normal,
--       low), strict ('1' or '0'), weight high, weight normal, weight low
-- Returns {next_due_ms or '', then 13 fields per claimed job}.
local PROMOTE_MAX = 1000
local worker_id, limit, lease_ms, token_base = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local strict = ARGV[6] == '1'
local weights = {tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])}
local now = clock()
local now_ms = now * 1000

local due = redis.call('ZRANGEBYSCORE', K_SCHEDULED, '-inf', now_ms, 'LIMIT', 0, PROMOTE_MAX)
for _, id in ipairs(due) do
  redis.call('ZREM', K_SCHEDULED, id)
  local key = job_key(id)
  local priority = redis.call('HGET', key, 'priority')
  if priority then
    redis.call('HSET', key, 'status', 'queued')
    redis.call('RPUSH', K_QUEUE[priority], id)
  end
end

local waiting = {}
for p = 1, 3 do
  if string.sub(ARGV[5], p, p) == '1' then
    waiting[p] = redis.call('LLEN', K_QUEUE[PRIOS[p]])
  else
    waiting[p] = 0
  end
end

-- Weighted rounds: picks already made in the current round, per priority.
local used = {0, 0, 0}
if not strict then
  local stored = redis.call('HMGET', K_ROUND, 'high', 'normal', 'low')
  for p = 1, 3 do
    used[p] = tonumber(stored[p]) or 0
  end
end

-- A round is high's block, then normal's, then low's; a block's unused picks
-- pass down. So priority p may take a pick while, for p and every lower
-- priority q, the picks of priorities up to q stay within their weights.
local function allowed(p)
  if strict then
    return true
  end
  local taken, share = 0, 0
  for q = 1, 3 do
    taken = taken + used[q]
    share = share + weights[q]
    if q >= p and taken + 1 > share then
      return false
    end
  end
  return true
end

local function choose()
  for p = 1, 3 do
    if waiting[p] > 0 and allowed(p) then
      return p
    end
  end
  return nil
end

local reply = {''}
local claimed = 0
while claimed < limit do
  local p = choose()
  if not p and not strict and waiting[1] + waiting[2] + waiting[3] > 0 then
    used = {0, 0, 0} -- the round is over: start the next one
    p = choose()
  end
  if not p then
    break
  end
  local id = redis.call('LPOP', K_QUEUE[PRIOS[p]])
  waiting[p] = waiting[p] - 1
  if id then
    local key = job_key(id)
    local job = redis.call('HMGET', key, 'status', 'task', 'payload', 'attempt', 'max_attempts',
      'timeout', 'user', 'metadata', 'enqueued_at', 'on_success', 'on_failure')
    if job[1] == 'queued' then
      claimed = claimed + 1
      used[p] = used[p] + 1
      local attempt = tonumber(job[4]) + 1
      local token = token_base .. ':' .. claimed
      local deadline_ms = now_ms + lease_ms
      redis.call('HSET', key, 'status', 'running', 'attempt', attempt, 'token', token,
        'worker', worker_id, 'started_at', fmt(now), 'lease', fmt(deadline_ms / 1000))
      redis.call('HDEL', key, 'run_at')
      redis.call('ZADD', K_ACTIVE, deadline_ms, id)
      local n = #reply
      reply[n + 1] = id
      reply[n + 2] = job[2]
      reply[n + 3] = job[3]
      reply[n + 4] = PRIOS[p]
      reply[n + 5] = tostring(attempt)
      reply[n + 6] = job[5]
      reply[n + 7] = job[6]
      reply[n + 8] = opt_out(job[7])
      reply[n + 9] = job[8]
      reply[n + 10] = job[9]
      reply[n + 11] = token
      reply[n + 12] = opt_out(job[10])
      reply[n + 13] = opt_out(job[11])
    end
  end
end

if not strict then
  redis.call('HSET', K_ROUND, 'high', used[1], 'normal', used[2], 'low', used[3])
end

local left = 0
for p = 1, 3 do
  left = left + redis.call('LLEN', K_QUEUE[PRIOS[p]])
end
if left == 0 then
  -- Nothing is ready: drop stale wake-ups so idle workers block instead of spinning.
  redis.call('DEL', K_WAKE)
elseif #due > 0 then
  wake(math.min(#due, left))
end

local next_due = redis.call('ZRANGE', K_SCHEDULED, 0, 0, 'WITHSCORES')
if next_due[2] then
  reply[1] = tostring(math.max(0, tonumber(next_due[2]) - now_ms))
end
return reply
