-- Enqueue N specs (ARGV holds SPEC_FIELDS values per spec, in order).
-- Returns {enqueued_at, deduplicated} per spec.
local now = clock()
local replies = {}
local ready, scheduled = 0, 0
for i = 1, #ARGV, SPEC_FIELDS do
  local enqueued_at, deduplicated, is_ready = enqueue_one(ARGV, i, now)
  replies[#replies + 1] = enqueued_at
  replies[#replies + 1] = deduplicated
  if deduplicated == 0 then
    if is_ready == 1 then
      ready = ready + 1
    else
      scheduled = 1
    end
  end
end
-- A scheduled job wakes one waiter too: its claim learns when the job is due.
wake(ready + scheduled)
return replies
