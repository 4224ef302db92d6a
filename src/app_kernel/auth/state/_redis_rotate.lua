-- Replace a family's current refresh token, or revoke the family on reuse.
-- KEYS[1]: the family hash
-- ARGV[1]: the presented (old) jti, ARGV[2]: the new jti
-- Returns 0 ROTATED, 1 REUSED, 2 REVOKED.
local record = redis.call('HMGET', KEYS[1], 'jti', 'revoked')
local current, revoked = record[1], record[2]
if not current or revoked == '1' then
  return 2
end
if current == ARGV[1] then
  redis.call('HSET', KEYS[1], 'jti', ARGV[2])
  return 0
end
if current == ARGV[2] then
  -- The same call again: the client retried after a lost reply, and the
  -- first attempt already rotated. New jtis are random, so nobody else
  -- can present this one as a new token.
  return 0
end
-- A retired token: revoke the family but keep the record (with its TTL)
-- so later attempts also see it revoked.
redis.call('HSET', KEYS[1], 'revoked', '1')
return 1
