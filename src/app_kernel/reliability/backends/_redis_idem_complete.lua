-- Store the response if the caller's token still holds the pending claim.
-- KEYS[1]: the record hash
-- ARGV[1]: token, ARGV[2]: record, ARGV[3]: record TTL in ms
-- Returns 1 stored, 0 the claim was lost (expired or taken by another token).
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] ~= 'p' or rec[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 's', 'd', 'r', ARGV[2])
redis.call('HDEL', KEYS[1], 'o')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
