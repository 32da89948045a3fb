"""The Lua scripts of the Redis state store: each multi-step update runs as one atomic script.

Redis runs a script without interleaving any other command, so "check, then write" inside one
script is a compare-and-set, and it costs one round trip. Ledger entries are records (see
:mod:`router.state.records`); the scripts only ever compare and splice their text, never decode
JSON. State lists arrive as ``",staged,delivered,"`` so membership is one plain ``find``.
"""

from __future__ import annotations

# Shared helpers, prepended to the scripts that read ledger records. \30 = RS, \31 = US.
_RECORD = r"""
local function state_of(v)
  if not v then return nil end
  return string.match(v, '^s\31"([%w_]+)"')
end
local function wanted(set, v)
  return set == '' or string.find(set, ',' .. (state_of(v) or '?') .. ',', 1, true) ~= nil
end
local function patch(v, args, from)
  local names, vals = {}, {}
  for pair in string.gmatch(v, '[^\30]+') do
    local i = string.find(pair, '\31', 1, true)
    if not i then return nil end
    local n = string.sub(pair, 1, i - 1)
    if vals[n] == nil then names[#names + 1] = n end
    vals[n] = string.sub(pair, i + 1)
  end
  for i = from, #args, 2 do
    if vals[args[i]] == nil then names[#names + 1] = args[i] end
    vals[args[i]] = args[i + 1]
  end
  local out = {}
  for _, n in ipairs(names) do
    if vals[n] ~= '' then out[#out + 1] = n .. '\31' .. vals[n] end
  end
  return table.concat(out, '\30')
end
local function each_chunk(hash, ids, fn)
  for i = 1, #ids, 500 do
    local chunk = {}
    for j = i, math.min(i + 499, #ids) do chunk[#chunk + 1] = ids[j] end
    local vals = redis.call('HMGET', hash, unpack(chunk))
    for j = 1, #chunk do
      if fn(chunk[j], vals[j]) then return end
    end
  end
end
"""

#: KEYS lease, token, instances; ARGV holder, ttl_ms, instance -> token or nil.
ACQUIRE = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return token
"""

#: KEYS lease; ARGV lease value, ttl_ms -> 1 renewed, 0 lost.
RENEW = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

#: KEYS lease; ARGV lease value.
RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

#: KEYS lease, target, instances; ARGV lease value, json, instance -> 1 written, 0 fenced off.
FENCED_SET = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""

#: KEYS ledger, order, raw, instances; ARGV key, record, instance, has_raw, raw -> 1 or 0.
CREATE = r"""
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local seq = 1
if last[2] then seq = tonumber(last[2]) + 1 end
redis.call('ZADD', KEYS[2], seq, ARGV[1])
if ARGV[4] == '1' then redis.call('SET', KEYS[3], ARGV[5]) end
redis.call('SADD', KEYS[4], ARGV[3])
return 1
"""

#: KEYS ledger; ARGV key, expected states, patch pairs... -> new record, nil, or -1 (corrupt).
TRANSITION = (
    _RECORD
    + r"""
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
local s = state_of(v)
if not s then return -1 end
if not string.find(ARGV[2], ',' .. s .. ',', 1, true) then return false end
local new = patch(v, ARGV, 3)
if not new then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], new)
return new
"""
)

#: KEYS ledger, order; ARGV states, limit (0 = all) -> [key, record, ...] in creation order.
#: Damaged records are returned (the caller reports them) but do not count towards the limit.
LIST = (
    _RECORD
    + r"""
local set, limit = ARGV[1], tonumber(ARGV[2])
local stop = -1
if set == '' and limit > 0 then stop = limit - 1 end
local out, n = {}, 0
each_chunk(KEYS[1], redis.call('ZRANGE', KEYS[2], 0, stop), function(id, v)
  if v and (wanted(set, v) or (set == '' and not state_of(v))) then
    out[#out + 1] = id
    out[#out + 1] = v
    if state_of(v) then n = n + 1 end
  end
  return limit > 0 and n >= limit
end)
return out
"""
)

#: KEYS ledger -> [state, count, ...]; damaged records are counted under "?".
COUNT = (
    _RECORD
    + r"""
local counts = {}
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local s = state_of(v) or '?'
  counts[s] = (counts[s] or 0) + 1
end
local out = {}
for s, n in pairs(counts) do
  out[#out + 1] = s
  out[#out + 1] = n
end
return out
"""
)

#: KEYS ledger, order; ARGV states, older_than, raw prefix -> number of entries deleted.
PURGE = (
    _RECORD
    + r"""
local set, cutoff, n = ARGV[1], tonumber(ARGV[2]), 0
each_chunk(KEYS[1], redis.call('ZRANGE', KEYS[2], 0, -1), function(id, v)
  if not v then
    redis.call('ZREM', KEYS[2], id)
  elseif state_of(v) and wanted(set, v) then
    local u = tonumber(string.match(v, '\30u\31([^\30]+)'))
    if u and u < cutoff then
      redis.call('HDEL', KEYS[1], id)
      redis.call('ZREM', KEYS[2], id)
      redis.call('DEL', ARGV[3] .. id)
      n = n + 1
    end
  end
  return false
end)
return n
"""
)
