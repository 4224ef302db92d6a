-- Set or clear a user's disabled flag.
-- KEYS[1]: the user hash
-- ARGV[1]: '1' to disable, '0' to enable again, ARGV[2]: TTL in ms
-- Clearing deletes the field (and the hash when nothing else is left). The
-- TTL only grows, so valid_after is never forgotten early.
if ARGV[1] == '0' then
  redis.call('HDEL', KEYS[1], 'disabled')
  return 1
end
redis.call('HSET', KEYS[1], 'disabled', '1')
local ttl = tonumber(ARGV[2])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
