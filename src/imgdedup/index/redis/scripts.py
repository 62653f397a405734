"""Lua scripts of the Redis index, one named constant each; their users register them.

Every key of one call shares the namespace's hash tag, so each script is legal in Redis
Cluster. Replies and arguments are documented per script; docs/design.md has the protocol.
"""

# The insert step's common part, run first by both layouts' INSERT_PENDING scripts.
# KEYS rec, seq, state, meta; ARGV lease_ms, sha, image_id, the meta the caller read.
# {-1}: the namespace's meta is no longer the one the caller's layout and m came from
# (dropped and re-created meanwhile: read it again); {0, stored_record}: the image_id is
# already decided; else the seq is taken, the state is pending, and the layout's part
# runs and replies {seq, payload, now_ms[, log entry id]}.
_INSERT_HEAD = """
if redis.call('GET', KEYS[4]) ~= ARGV[4] then return {-1} end
local rec = redis.call('GET', KEYS[1])
if rec then return {0, rec} end
local seq = redis.call('INCR', KEYS[2])
if seq > 4294967295 then return redis.error_reply('namespace sequence exhausted (2^32 registrations)') end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local payload = 'P|' .. (now + tonumber(ARGV[1])) .. '|' .. ARGV[2] .. '|' .. ARGV[3]
redis.call('HSET', KEYS[3], seq, payload)
"""

#: Bucket layout: KEYS[5..] the image's own buckets, ARGV[5..] the codes for each.
INSERT_PENDING_BUCKETS = _INSERT_HEAD + """
local tail = struct.pack('<I4', seq)
for i = 5, #KEYS do
  local codes = ARGV[i]
  local out = {}
  for off = 1, #codes, 8 do out[#out + 1] = string.sub(codes, off, off + 7) .. tail end
  redis.call('APPEND', KEYS[i], table.concat(out))
end
return {seq, payload, now}
"""

#: Log layout: one stream entry (seq u32 LE + the image's codes, u64 LE) in the same
#: atomic step as the INCR, so the log holds the registrations in seq order.
#: KEYS[5]: the log; ARGV[5]: the codes. Also replies the entry's id.
INSERT_PENDING_LOG = _INSERT_HEAD + """
local id = redis.call('XADD', KEYS[5], '*', 'a', struct.pack('<I4', seq) .. ARGV[5])
return {seq, payload, now, id}
"""

#: KEYS: state, rec, dups-of-target, sha. ARGV: seq, expected payload, new state ('' =
#: none), record json, image_id, add-to-dups flag, target seq ('' = none).
#: 1 = done, 0 = fenced out or the target was removed meanwhile (decide again),
#: -1 = the image_id was taken meanwhile.
FINALIZE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[7] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[7]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return -1
end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  local holder = redis.call('GET', KEYS[4])
  if (not holder) or redis.call('HEXISTS', KEYS[1], holder) == 0 then redis.call('SET', KEYS[4], ARGV[1]) end
end
redis.call('SET', KEYS[2], ARGV[4])
if ARGV[6] == '1' then redis.call('ZADD', KEYS[3], ARGV[1], ARGV[5]) end
return 1
"""

#: Bucket layout: remove one image's records from its own buckets (a duplicate, a
#: withdrawn or removed registration). KEYS[1]: the state hash, then the buckets.
#: ARGV[1]: the seq (u32 LE), ARGV[2]: the seq (decimal); ARGV[i + 1]: the 8-byte codes
#: that live in KEYS[i]. Each record is found by a plain search for its exact 12 bytes at
#: a record boundary: no Lua loop over candidates, and atomic, so concurrent appends to
#: the same buckets cannot make it retry. Every caller deletes the seq's state first; a
#: state still there means the image is kept (e.g. a withdrawal that lost the race to its
#: own finalize, whose reply never arrived) and nothing is stripped: 0.
STRIP_BUCKETS = """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 0 end
local tail = ARGV[1]
for i = 2, #KEYS do
  local blob = redis.call('GET', KEYS[i])
  if blob then
    local changed = false
    local codes = ARGV[i + 1]
    for off = 1, #codes, 8 do
      local record = string.sub(codes, off, off + 7) .. tail
      local from = 1
      while true do
        local at = string.find(blob, record, from, true)
        if not at then break end
        if (at - 1) % 12 == 0 then
          blob = string.sub(blob, 1, at - 1) .. string.sub(blob, at + 12)
          changed = true
          from = at
        else
          from = at + 1
        end
      end
    end
    if changed then
      if #blob == 0 then redis.call('DEL', KEYS[i]) else redis.call('SET', KEYS[i], blob) end
    end
  end
end
return 1
"""

#: Log layout's STRIP_BUCKETS: a tombstone for the seq, appended only if the seq has no
#: state left, so a kept image is never dropped from the mirrors.
#: KEYS: state, log. ARGV: seq. 1 = appended.
TOMBSTONE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('XADD', KEYS[2], '*', 'd', ARGV[1])
return 1
"""

#: Compare-and-set of a state entry: extend our own lease while we wait. 1 = renewed.
CAS_SET = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""

#: Compare-and-delete of a state entry (abandon an expired pending registration).
CAS_DELETE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

#: A mirror's catch-up in one round trip. KEYS: meta, log, keys to GET...
#: ARGV: XRANGE start (exclusive), end, COUNT (0: no XRANGE).
#: Replies {meta, values of the GETs..., entries}.
CATCH_UP = """
local out = {redis.call('GET', KEYS[1])}
for i = 3, #KEYS do out[#out + 1] = redis.call('GET', KEYS[i]) end
if ARGV[3] == '0' then out[#out + 1] = {}
else out[#out + 1] = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[2], 'COUNT', ARGV[3]) end
return out
"""
