"""Lua script of the review workflow on the Redis index (see `RedisMihIndex.apply_change`).

All keys share the namespace's hash tag, so the script is legal in Redis Cluster.
"""

#: Apply one reviewer's change to an image atomically.
#: KEYS: state, rec, old-dups (rec if none), new-dups (rec if none), sha, reviews, hist.
#: ARGV: 1 the record as read (compare), 2 the new record, 3 image_id, 4 audit entry,
#: 5 the old seq, 6 the new seq, 7 the new seq's pending payload ('' unless reindexing),
#: 8 mode 'keep' | 'unindex' | 'reindex', 9 the target's seq ('' none), 10 '1' = open
#: review, 11 the kept state to store when reindexing.
#: 1 = applied; -1 the record changed; -2 the target is no longer kept; 0 our pending seq
#: was fenced out (lease expired).
APPLY_CHANGE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
if ARGV[9] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[9]) == 0 then return -2 end
if ARGV[8] == 'reindex' then
  if redis.call('HGET', KEYS[1], ARGV[6]) ~= ARGV[7] then return 0 end
  redis.call('HSET', KEYS[1], ARGV[6], ARGV[11])
  local holder = redis.call('GET', KEYS[5])
  if (not holder) or redis.call('HEXISTS', KEYS[1], holder) == 0 then redis.call('SET', KEYS[5], ARGV[6]) end
elseif ARGV[8] == 'unindex' then
  redis.call('HDEL', KEYS[1], ARGV[5])
  if redis.call('GET', KEYS[5]) == ARGV[5] then redis.call('DEL', KEYS[5]) end
end
redis.call('SET', KEYS[2], ARGV[2])
if KEYS[3] ~= KEYS[2] then redis.call('ZREM', KEYS[3], ARGV[3]) end
if KEYS[4] ~= KEYS[2] then redis.call('ZADD', KEYS[4], ARGV[6], ARGV[3]) end
if ARGV[10] == '1' then redis.call('ZADD', KEYS[6], ARGV[6], ARGV[3]) else redis.call('ZREM', KEYS[6], ARGV[3]) end
redis.call('RPUSH', KEYS[7], ARGV[4])
return 1
"""
