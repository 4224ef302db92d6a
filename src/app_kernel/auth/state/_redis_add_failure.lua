-- Count one failure; the window starts at the first failure and is not extended.
-- KEYS[1]: the counter
-- ARGV[1]: window in ms
-- Returns {count, ms until the window ends}.
local count = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if count == 1 or left < 0 then
  -- A new window (or, defensively, a counter that lost its expiry).
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {count, left}
