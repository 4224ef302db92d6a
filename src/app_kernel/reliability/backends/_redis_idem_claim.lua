-- Take an idempotency claim, or report the live record.
-- KEYS[1]: the record hash (s = 'p' pending | 'd' done, f = fingerprint,
--          o = owner token, r = stored response)
-- ARGV[1]: fingerprint, ARGV[2]: token, ARGV[3]: lock TTL in ms
-- Returns {0} acquired, {1, pttl_ms} in progress, {2} mismatch, {3, record} done.
local rec = redis.call('HMGET', KEYS[1], 's', 'f', 'r')
if not rec[1] then
  redis.call('HSET', KEYS[1], 's', 'p', 'f', ARGV[1], 'o', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {0}
end
if rec[2] ~= ARGV[1] then
  return {2}
end
if rec[1] == 'p' then
  return {1, redis.call('PTTL', KEYS[1])}
end
return {3, rec[3]}
