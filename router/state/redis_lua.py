"""The Lua scripts of the Redis state store: each multi-step update runs as one atomic script.

Redis runs a script without interleaving any other command, so "check, then write" inside one
script is a compare-and-set, and it costs one round trip. Ledger entries are records (see
:mod:`router.state.records`); the scripts only ever compare and splice their text, never decode
JSON. State lists arrive as ``",staged,delivered,"``: membership is one plain ``find`` and
``gmatch`` walks them. Keys built inside a script (raw bytes, per-state order indexes) come from
prefixes the caller passes, so the key schema stays in :mod:`router.state.keys`.
"""

from __future__ import annotations

# Shared helpers, prepended to the scripts that read ledger records. \30 = RS, \31 = US.
_RECORD = r"""
local function state_of(v)
  if not v then return nil end
  return string.match(v, '^s\31"([%w_]+)"')
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

# acquire(lease, token, instances, holder, ttl_ms, instance) -> the new token, or false (held).
_ACQUIRE_FN = r"""
local function acquire(lease, tokens, instances, holder, ttl_ms, instance)
  if redis.call('EXISTS', lease) == 1 then return false end
  local token = redis.call('INCR', tokens)
  redis.call('SET', lease, token .. ':' .. holder, 'PX', ttl_ms)
  redis.call('SADD', instances, instance)
  return token
end
"""

#: KEYS lease, token, instances; ARGV holder, ttl_ms, instance -> token or nil.
ACQUIRE = (
    _ACQUIRE_FN
    + r"""
return acquire(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])
"""
)

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

#: KEYS ledger, seq, order (of the new state), raw, instances;
#: ARGV key, record, instance, has_raw, raw -> 1 created, 0 existed.
CREATE = r"""
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[2]), ARGV[1])
if ARGV[4] == '1' then redis.call('SET', KEYS[4], ARGV[5]) end
redis.call('SADD', KEYS[5], ARGV[3])
return 1
"""

#: KEYS ledger; ARGV key, expected states, order prefix, patch pairs...
#: -> new record, nil (missing or not in an expected state), or -1 (damaged).
TRANSITION = (
    _RECORD
    + r"""
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
local s = state_of(v)
if not s then return -1 end
if not string.find(ARGV[2], ',' .. s .. ',', 1, true) then return false end
local new = patch(v, ARGV, 4)
if not new then return -1 end
local to = state_of(new)
if to ~= s then
  local seq = redis.call('ZSCORE', ARGV[3] .. s, ARGV[1]) or 0
  redis.call('ZREM', ARGV[3] .. s, ARGV[1])
  redis.call('ZADD', ARGV[3] .. to, seq, ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], new)
return new
"""
)

# list_entries(ledger, set, limit, prefix): the entries in the states of ``set`` (",staged,"),
# ``limit`` of them (0: all), oldest first, flattened [key, record, ...]. The first ``limit`` of
# each state's index are merged by sequence; damaged records are returned (the caller reports
# them) without counting, and if they leave the answer short the window doubles until the
# indexes are exhausted. Prepended to the scripts that list entries.
_LIST_FN = r"""
local function list_entries(ledger, set, limit, prefix)
  local function merged(k)
    local ids, exhausted = {}, true
    for s in string.gmatch(set, '[^,]+') do
      local r = redis.call('ZRANGE', prefix .. s, 0, k - 1, 'WITHSCORES')
      if k > 0 and #r >= 2 * k then exhausted = false end
      for i = 1, #r, 2 do ids[#ids + 1] = {tonumber(r[i + 1]), r[i]} end
    end
    table.sort(ids, function(a, b) return a[1] < b[1] end)
    local out = {}
    for i, pair in ipairs(ids) do out[i] = pair[2] end
    return out, exhausted
  end
  local k = limit
  while true do
    local ids, exhausted = merged(k)
    local out, n = {}, 0
    each_chunk(ledger, ids, function(id, v)
      if v then
        out[#out + 1] = id
        out[#out + 1] = v
        if state_of(v) then n = n + 1 end
      end
      return limit > 0 and n >= limit
    end)
    if limit == 0 or n >= limit or exhausted then return out end
    k = k * 2
  end
end
"""

#: KEYS ledger; ARGV states, limit (0 = all), order prefix -> [key, record, ...] oldest first.
LIST = (
    _RECORD
    + _LIST_FN
    + r"""
return list_entries(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3])
"""
)

#: A poll cycle's first step, in one round trip: ACQUIRE, then the cursor, the provider state and
#: the entries in the given states (read after the lease is taken, so no fenced write of another
#: holder comes between).
#: KEYS lease, token, instances, cursor, provider state, ledger;
#: ARGV holder, ttl_ms, instance, states, order prefix
#: -> nil (the lease is held) or [token, cursor or nil, provider state or nil, [key, record, ...]].
BEGIN_POLL = (
    _RECORD
    + _LIST_FN
    + _ACQUIRE_FN
    + r"""
local token = acquire(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])
if not token then return false end
local cursor, state = redis.call('GET', KEYS[4]), redis.call('GET', KEYS[5])
return {token, cursor, state, list_entries(KEYS[6], ARGV[4], 0, ARGV[5])}
"""
)

#: A poll cycle's last step, in one round trip: RELEASE, the counters of record_poll, then what
#: peek reads (the counters, the oldest STAGED entry).
#: KEYS lease, stats, instances, ledger;
#: ARGV lease value, processed, instance, staged state set, order prefix, n stats fields,
#: the n field names, then the stamp pairs -> [counters (n values), [key, record] or []].
END_POLL = (
    _RECORD
    + _LIST_FN
    + r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
local n = tonumber(ARGV[6])
local fields, stamps = {}, {}
for i = 7, 6 + n do fields[#fields + 1] = ARGV[i] end
for i = 7 + n, #ARGV do stamps[#stamps + 1] = ARGV[i] end
redis.call('HINCRBY', KEYS[2], 'p', ARGV[2])
redis.call('HSET', KEYS[2], unpack(stamps))
redis.call('SADD', KEYS[3], ARGV[3])
return {redis.call('HMGET', KEYS[2], unpack(fields)), list_entries(KEYS[4], ARGV[4], 1, ARGV[5])}
"""
)

#: ARGV states, order prefix -> [state, count, ...] (sizes of the order indexes; no scan).
COUNT = r"""
local out = {}
for s in string.gmatch(ARGV[1], '[^,]+') do
  local n = redis.call('ZCARD', ARGV[2] .. s)
  if n > 0 then
    out[#out + 1] = s
    out[#out + 1] = n
  end
end
return out
"""

#: KEYS ledger; ARGV key, raw key, every state, order prefix.
DELETE = r"""
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', ARGV[2])
for s in string.gmatch(ARGV[3], '[^,]+') do redis.call('ZREM', ARGV[4] .. s, ARGV[1]) end
return 0
"""

#: KEYS ledger; ARGV states, older_than, raw prefix, order prefix -> number of entries deleted.
#: Only the indexes of the purged states are read.
PURGE = (
    _RECORD
    + r"""
local set, cutoff, n = ARGV[1], tonumber(ARGV[2]), 0
for s in string.gmatch(set, '[^,]+') do
  local index = ARGV[4] .. s
  each_chunk(KEYS[1], redis.call('ZRANGE', index, 0, -1), function(id, v)
    if not v then
      redis.call('ZREM', index, id)
    elseif state_of(v) == s then
      local u = tonumber(string.match(v, '\30u\31([^\30]+)'))
      if u and u < cutoff then
        redis.call('HDEL', KEYS[1], id)
        redis.call('ZREM', index, id)
        redis.call('DEL', ARGV[3] .. id)
        n = n + 1
      end
    end
    return false
  end)
end
return n
"""
)

#: Now on the server's clock, in ms (scripts that write it replicate the effect, Redis >= 5).
_NOW_MS = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: KEYS heartbeat; ARGV ttl_ms, remember_ms.
BEAT = (
    _NOW_MS
    + r"""
redis.call('SET', KEYS[1], string.format('%d', now + tonumber(ARGV[1])), 'PX', ARGV[2])
return 1
"""
)

#: KEYS heartbeat -> 1 alive, 0 lapsed, -1 unknown.
HEARTBEAT = (
    _NOW_MS
    + r"""
local until_ms = redis.call('GET', KEYS[1])
if not until_ms then return -1 end
if tonumber(until_ms) > now then return 1 end
return 0
"""
)

# -- the Celery dispatcher's due times (workers.dispatch) ----------------------------------------
#: KEYS due, period; ARGV triples name, period_ms, phase (0 <= phase < 1) -> instances added.
#: A new instance is first due at now + phase * period (spread, not all at once); a known one
#: keeps its due instant, brought forward to now + period when its period shrank.
DUE_SYNC = (
    _NOW_MS
    + r"""
local added = 0
for i = 1, #ARGV, 3 do
  local name, p = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[2], name, ARGV[i + 1])
  local due = redis.call('ZSCORE', KEYS[1], name)
  if not due then
    redis.call('ZADD', KEYS[1], now + math.floor(tonumber(ARGV[i + 2]) * p), name)
    added = added + 1
  elseif tonumber(due) > now + p then
    redis.call('ZADD', KEYS[1], now + p, name)
  end
end
return added
"""
)

#: KEYS due, period; ARGV names -> instances dropped.
DUE_DROP = r"""
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return n
"""

#: KEYS due, period; ARGV limit -> {now, name, due, name, due, ...} (ms, server clock).
#: Every instance due by now (at most ``limit``, earliest first) is moved to its next due
#: instant in the same script, so two dispatchers never claim one due instant twice. Rounds
#: missed while no dispatcher ran are skipped, keeping the instance's phase in its period.
DUE_CLAIM = (
    _NOW_MS
    + r"""
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[1])
local out = {string.format('%d', now)}
for i = 1, #due, 2 do
  local name, at = due[i], tonumber(due[i + 1])
  local p = tonumber(redis.call('HGET', KEYS[2], name))
  if p and p > 0 then
    local nxt = at + p
    if nxt <= now then nxt = at + p * (math.floor((now - at) / p) + 1) end
    redis.call('ZADD', KEYS[1], nxt, name)
    out[#out + 1] = name
    out[#out + 1] = string.format('%d', at)
  else
    redis.call('ZREM', KEYS[1], name)
  end
end
return out
"""
)
