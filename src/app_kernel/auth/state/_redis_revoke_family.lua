-- Revoke a family; the record stays (with its TTL) so rotations see it revoked.
-- KEYS[1]: the family hash
-- Returns 1 if the family was live, 0 if it was unknown or already revoked.
local revoked = redis.call('HGET', KEYS[1], 'revoked')
if not revoked or revoked == '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'revoked', '1')
return 1
