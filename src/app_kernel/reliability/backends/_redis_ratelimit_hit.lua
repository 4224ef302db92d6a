-- Rate-limit hit: check every limit, record the hit on all of them or on none.
-- KEYS[i]: limit i's key (sorted-set log when ARGV mode is 'z', hash counter when 'c').
--   All keys share one hash tag (the hashed identifier), so this runs on Redis Cluster.
-- ARGV[1]: unique member for the log; ARGV[2]: 1 to record (hit), 0 to only look (peek).
-- ARGV[3i], ARGV[3i+1], ARGV[3i+2]: limit i's requests, window in ms, mode.
-- Returns a flat list: per limit {remaining, reset_ms, retry_after_ms}.
-- Time is the server's (TIME), so clocks of the calling hosts do not matter.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member = ARGV[1]
local record = ARGV[2] == '1'
local n = #KEYS
local out = {}
local allowed = true
local counts = {}
local rooms = {}

for i = 1, n do
  local key = KEYS[i]
  local limit = tonumber(ARGV[3 * i])
  local w = tonumber(ARGV[3 * i + 1])
  local mode = ARGV[3 * i + 2]
  local reset, retry
  if mode == 'z' then
    -- Exact sliding log: a hit counts while now - score < w.
    local c
    if record then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - w)
      c = redis.call('ZCARD', key)
    else
      c = redis.call('ZCOUNT', key, '(' .. (now - w), '+inf')
    end
    counts[i] = c
    rooms[i] = limit - c
    if c + 1 > limit then
      -- The (c - limit + 1)th oldest hit must leave the window before one more fits.
      local e = redis.call('ZRANGEBYSCORE', key, '(' .. (now - w), '+inf', 'WITHSCORES', 'LIMIT', c - limit, 1)
      retry = tonumber(e[2]) + w - now
      reset = retry
      allowed = false
    else
      retry = 0
      local first = redis.call('ZRANGEBYSCORE', key, '(' .. (now - w), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
      if first[2] then reset = tonumber(first[2]) + w - now else reset = w end
    end
  else
    -- Sliding-window counter: fields are fixed-window numbers, the previous one weighted.
    local bucket = math.floor(now / w)
    local elapsed = now - bucket * w
    local vals = redis.call('HMGET', key, bucket - 1, bucket)
    local prev = tonumber(vals[1]) or 0
    local cur = tonumber(vals[2]) or 0
    local est = prev * (w - elapsed) / w + cur
    counts[i] = bucket
    rooms[i] = math.floor(limit - est)
    if est + 1 > limit then
      if cur + 1 <= limit then
        retry = math.ceil((w - elapsed) - (limit - 1 - cur) * w / prev)
      else
        retry = (w - elapsed) + math.max(0, math.ceil(w - (limit - 1) * w / cur))
      end
      if retry < 1 then retry = 1 end
      reset = retry
      allowed = false
    else
      retry = 0
      reset = w - elapsed
    end
  end
  out[3 * i - 2] = 0
  out[3 * i - 1] = reset
  out[3 * i] = retry
end

-- Remaining: the room each limit had, less this hit when it is recorded.
local used = 0
if record and allowed then used = 1 end
for i = 1, n do
  out[3 * i - 2] = math.max(0, rooms[i] - used)
end

if record and allowed then
  local done = {}
  for i = 1, n do
    local key = KEYS[i]
    if not done[key] then
      done[key] = true
      local w = tonumber(ARGV[3 * i + 1])
      if ARGV[3 * i + 2] == 'z' then
        redis.call('ZADD', key, now, member)
        redis.call('PEXPIRE', key, w)
      else
        local bucket = counts[i]
        redis.call('HINCRBY', key, bucket, 1)
        redis.call('HDEL', key, bucket - 2, bucket - 3)
        redis.call('PEXPIRE', key, 2 * w)
      end
    end
  end
end
return out
