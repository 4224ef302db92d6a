-- Record a new token family; any earlier record under the same id is replaced.
-- KEYS[1]: the family hash
-- ARGV[1]: user id, ARGV[2]: current jti, ARGV[3]: end of the family (ms since the epoch)
-- PEXPIREAT with a time already past deletes the key, so a stillborn family is unknown.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'jti', ARGV[2], 'revoked', '0')
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
