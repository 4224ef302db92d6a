-- Queue depths. Returns {high, normal, low, scheduled, running, dead}.
local now_ms = clock() * 1000
return {
  redis.call('LLEN', K_QUEUE.high),
  redis.call('LLEN', K_QUEUE.normal),
  redis.call('LLEN', K_QUEUE.low),
  redis.call('ZCARD', K_SCHEDULED),
  redis.call('ZCARD', K_ACTIVE),
  redis.call('ZCOUNT', K_DEAD, '(' .. now_ms, '+inf'),
}
