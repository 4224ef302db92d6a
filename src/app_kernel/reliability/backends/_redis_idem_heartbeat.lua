-- Extend a pending claim held by the caller's token.
-- KEYS[1]: the record hash
-- ARGV[1]: token, ARGV[2]: lock TTL in ms
-- Returns 1 extended, 0 not held by this token.
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] ~= 'p' or rec[2] ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
