-- Raise a user's valid_after; it never moves backwards.
-- KEYS[1]: the user hash
-- ARGV[1]: valid_after (seconds since the epoch, decimal), ARGV[2]: TTL in ms
-- The TTL only grows: the hash also holds the disabled flag, whose TTL a
-- shorter one must not cut.
local new = tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'valid_after'))
if not current or new > current then
  redis.call('HSET', KEYS[1], 'valid_after', ARGV[1])
end
local ttl = tonumber(ARGV[2])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
