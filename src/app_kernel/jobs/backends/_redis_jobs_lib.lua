-- Shared by every job script: redis.py puts this text in front of each one.
-- KEYS[1] is the namespace base '<prefix>jobs:{<namespace>}'. Every key is
-- that base plus a suffix, so all of them share its Cluster hash tag (the
-- BullMQ pattern for scripts that build job keys).
local base = KEYS[1]
local PRIOS = {'high', 'normal', 'low'}
local K_QUEUE = {high = base .. ':q:high', normal = base .. ':q:normal', low = base .. ':q:low'}
local K_SCHEDULED = base .. ':scheduled'
local K_ACTIVE = base .. ':active'
local K_DEAD = base .. ':dead'
local K_WAKE = base .. ':wake'
local K_ROUND = base .. ':round'
local K_WORKERS = base .. ':workers'
local WAKE_MAX = 100
local SPEC_FIELDS = 11

local function job_key(id)
  return base .. ':job:' .. id
end

-- The server's clock, in seconds (with microseconds).
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(seconds)
  return string.format('%.6f', seconds)
end

-- Optional strings travel as '' (None) or '=' .. value.
local function opt_in(value)
  if value == '' then
    return nil
  end
  return string.sub(value, 2)
end

local function opt_out(value)
  if not value then
    return ''
  end
  return '=' .. value
end

-- Push up to WAKE_MAX tokens for BLPOP waiters; the list never grows past WAKE_MAX.
local function wake(n)
  if n <= 0 then
    return
  end
  if n > WAKE_MAX then
    n = WAKE_MAX
  end
  local tokens = {}
  for i = 1, n do
    tokens[i] = '1'
  end
  redis.call('RPUSH', K_WAKE, unpack(tokens))
  redis.call('LTRIM', K_WAKE, -WAKE_MAX, -1)
end

-- Write the spec at ARGV[i .. i + SPEC_FIELDS - 1]:
--   id, task, payload, priority, user (opt), timeout, max_attempts, delay,
--   metadata, on_success (opt), on_failure (opt)
-- Returns enqueued_at (string), deduplicated (0/1), ready (0/1).
local function enqueue_one(a, i, now)
  local id = a[i]
  local key = job_key(id)
  local existing = redis.call('HMGET', key, 'status', 'enqueued_at')
  local status = existing[1]
  if status == 'queued' or status == 'scheduled' or status == 'retrying' or status == 'running' then
    return existing[2], 1, 0
  end
  if status then
    -- A finished job: replaced by the new one (and no longer expiring).
    redis.call('DEL', key)
    redis.call('ZREM', K_DEAD, id)
  end
  local priority = a[i + 3]
  local delay = tonumber(a[i + 7])
  local enqueued_at = fmt(now)
  local fields = {
    'task', a[i + 1], 'payload', a[i + 2], 'priority', priority, 'timeout', a[i + 5],
    'max_attempts', a[i + 6], 'metadata', a[i + 8], 'attempt', '0', 'enqueued_at', enqueued_at,
  }
  local optional = {user = opt_in(a[i + 4]), on_success = opt_in(a[i + 9]), on_failure = opt_in(a[i + 10])}
  for name, value in pairs(optional) do
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
  local ready = 0
  if delay > 0 then
    local run_at = now + delay
    fields[#fields + 1] = 'status'
    fields[#fields + 1] = 'scheduled'
    fields[#fields + 1] = 'run_at'
    fields[#fields + 1] = fmt(run_at)
    redis.call('ZADD', K_SCHEDULED, run_at * 1000, id)
  else
    fields[#fields + 1] = 'status'
    fields[#fields + 1] = 'queued'
    redis.call('RPUSH', K_QUEUE[priority], id)
    ready = 1
  end
  redis.call('HSET', key, unpack(fields))
  return enqueued_at, 0, ready
end

-- Enqueue the callback spec at ARGV[i ..] if one was passed (count at ARGV[i - 1]).
local function enqueue_callback(a, i, now)
  if a[i - 1] ~= '1' then
    return
  end
  local _, deduplicated = enqueue_one(a, i, now)
  if deduplicated == 0 then
    wake(1)
  end
end

-- Check that `token` holds the running job; returns its key or nil.
local function owned(id, token)
  local key = job_key(id)
  local record = redis.call('HMGET', key, 'status', 'token')
  if record[1] ~= 'running' or record[2] ~= token then
    return nil
  end
  return key
end

-- A finished attempt that goes to the dead letters, kept for ttl_ms.
local function to_dead(key, id, now, ttl_ms)
  redis.call('HSET', key, 'status', 'dead', 'finished_at', fmt(now))
  redis.call('HDEL', key, 'token', 'lease', 'run_at')
  redis.call('ZADD', K_DEAD, now * 1000 + ttl_ms, id)
  redis.call('PEXPIRE', key, ttl_ms)
end

local function to_retrying(key, id, now, delay)
  local run_at = now + delay
  redis.call('HSET', key, 'status', 'retrying', 'run_at', fmt(run_at))
  redis.call('HDEL', key, 'token', 'lease')
  redis.call('ZADD', K_SCHEDULED, run_at * 1000, id)
end

-- Forget dead letters whose records expired.
local function prune_dead(now)
  redis.call('ZREMRANGEBYSCORE', K_DEAD, '-inf', now * 1000)
end

-- ====================================================================================
