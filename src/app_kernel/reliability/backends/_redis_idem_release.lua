-- Delete a pending claim held by the caller's token (compare-and-delete).
-- KEYS[1]: the record hash
-- ARGV[1]: token
-- Returns 1 deleted, 0 not held by this token.
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] ~= 'p' or rec[2] ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
