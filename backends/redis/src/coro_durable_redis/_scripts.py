"""The Lua scripts of the Redis store: every write is one script, so it is atomic on the server.

The fenced writes that group commit batches (append, park, finish) are Lua functions of the
prelude, called by their own scripts and by the ``batch`` script, which runs many of them in one
call and answers each on its own.

Each script is the shared ``_PRELUDE`` (helpers for the key layout, the server clock, the fence,
the secondary indexes and the schedule sets) followed by its body. ``ARGV[1]`` is always the key
prefix; the other arguments are listed above each body. Replies are tables whose first element
says what happened (``ok``, ``missing``, ``lease``, ``conflict``, ``gone``), so the Python side
never parses error messages.

Conventions:

* Times are the server's ``TIME`` (seconds as a double) and are written with ``%.17g`` so that
  Python's ``float()`` reads back exactly the same double. Times that come from the client
  (``wake_at``, ``retry_at``) are stored as the client's ``repr()``, verbatim.
* An optional string argument is ``''`` for None and ``'=' .. value`` otherwise (``opt``).
* ``op:<token>`` remembers, for ten minutes, that a write whose reply may have been lost has
  landed: the Python side retries a write with the same token after a connection error, and the
  script recognises its own earlier write instead of failing the fence or applying it twice.
* Lua here is 5.1: no ``goto``, and numbers passed to ``redis.call`` would be formatted with
  ``%.14g``, so every number is formatted explicitly before it is sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["Script", "SCRIPTS", "LAYOUT_VERSION"]

#: Version of the key layout (see the package docstring); stored in ``<prefix>meta``. A store
#: refuses a newer layout and upgrades an older one at open (``RedisStore._upgrade``).
#: 1: journal entries are JSON arrays; 2: JSON objects (named fields, ``meta`` among them).
LAYOUT_VERSION = 3

_PRELUDE = r"""
if redis.replicate_commands then pcall(redis.replicate_commands) end  -- Redis < 5: effects replication for TIME
local P = ARGV[1]

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function num(x)
  return string.format('%.17g', x)
end

local function opt(s)
  if s == '' then return nil end
  return string.sub(s, 2)
end

local function rk(id) return P .. 'run:' .. id end

-- A run as the client reads it: its hash's flat field/value pairs as ONE JSON text ('{}' when
-- unknown; a field that is None is absent). The client picks the fields by name; one bulk string
-- decoded in C costs it far less than a RESP array of every name and value parsed in Python.
local function row(key) return cjson.encode(redis.call('HGETALL', key)) end
local function jk(id) return P .. 'journal:' .. id end
local function sq(id) return P .. 'sigq:' .. id end

-- {'missing'} / {'lease', epoch, status} when the caller does not hold the run at `epoch`.
local function fence(id, epoch)
  local f = redis.call('HMGET', rk(id), 'epoch', 'status')
  if not f[1] then return {'missing'} end
  if f[1] ~= epoch or f[2] ~= 'running' then return {'lease', f[1], f[2] or ''} end
  return false
end

-- Secondary indexes for list_runs, scored by created_at: by status, by status and workflow.
local function reindex(id, wf, old, new, created)
  if old == new then return end
  if old then
    redis.call('ZREM', P .. 'ix:st:' .. old, id)
    redis.call('ZREM', P .. 'ix:wfst:' .. old .. ':' .. wf, id)
  end
  redis.call('ZADD', P .. 'ix:st:' .. new, created, id)
  redis.call('ZADD', P .. 'ix:wfst:' .. new .. ':' .. wf, created, id)
end

-- A run is in at most one schedule set: due (pending/waiting with a wake_at) or lease (running).
-- The timeline holds the union, for watchers to know when work next falls due.
local function schedule(id, wf, kind, at)
  if kind == 'due' then
    redis.call('ZREM', P .. 'lease:' .. wf, id)
    redis.call('ZADD', P .. 'due:' .. wf, at, id)
    redis.call('ZADD', P .. 'timeline', at, id)
  elseif kind == 'lease' then
    redis.call('ZREM', P .. 'due:' .. wf, id)
    redis.call('ZADD', P .. 'lease:' .. wf, at, id)
    redis.call('ZADD', P .. 'timeline', at, id)
  else
    redis.call('ZREM', P .. 'due:' .. wf, id)
    redis.call('ZREM', P .. 'lease:' .. wf, id)
    redis.call('ZREM', P .. 'timeline', id)
  end
end

-- Whether ``waits`` (the run's encode_waits JSON, or nil) wait for signal ``name``: only such a
-- signal wakes a parked run (awaited_signals); another is kept for a later await_signal.
local function awaits(waits, name)
  if not waits then return false end
  for _, w in ipairs(cjson.decode(waits)) do
    if w['kind'] == 'signal' and w['name'] == name then return true end
  end
  return false
end

-- Whether an unconsumed signal of run ``id`` is one that ``waits`` wait for.
local function awaited_here(id, waits)
  if not waits then return false end
  for _, element in ipairs(redis.call('LRANGE', sq(id), 0, -1)) do
    if awaits(waits, cjson.decode(element)[2]) then return true end  -- [signal_id, name, payload]
  end
  return false
end

local function wake(origin, at)
  redis.call('PUBLISH', P .. 'wake', origin .. '|' .. (at or ''))
end

local function remember(token, value)
  redis.call('SET', P .. 'op:' .. token, value, 'EX', 600)
end

local function done_before(token)
  return redis.call('EXISTS', P .. 'op:' .. token) == 1
end

-- Check journal entries given as quads (seq, status, checksum, value) in ARGV[first..last].
-- Returns the seqs and values to write and whether any entry is final, or a conflict reply.
-- Writes nothing.
local function stage(id, first, last)
  local key = jk(id)
  local staged, order, final = {}, {}, false
  for i = first, last, 4 do
    local seq, ck, value = ARGV[i], ARGV[i + 2], ARGV[i + 3]
    if ARGV[i + 1] ~= 'pending' then final = true end
    local cur = staged[seq] or redis.call('HGET', key, seq)
    local keep = false
    if cur then
      local st, cck = string.match(cur, '^([^|]*)|([^|]*)|')
      if st ~= 'pending' then
        if cck ~= ck then return nil, {'conflict', seq, cur} end
        keep = true  -- identical final entry: our own earlier write, acknowledgement lost
      end
    end
    if not keep then
      if not staged[seq] then order[#order + 1] = seq end
      staged[seq] = value
    end
  end
  return {staged, order, final}, nil
end

-- Write a staged plan; only a plan holding a final entry resets crash_count (progress).
local function commit(id, plan, now)
  local staged, order, final = plan[1], plan[2], plan[3]
  local key = jk(id)
  if #order > 0 then
    local args = {}
    for _, seq in ipairs(order) do
      args[#args + 1] = seq
      args[#args + 1] = staged[seq]
    end
    redis.call('HSET', key, unpack(args))
  end
  -- steps counts the effects: the journal's entries but its audit notes (seq < 0, see retry)
  local notes = tonumber(redis.call('HGET', rk(id), 'notes')) or 0
  redis.call('HSET', rk(id), 'steps', tostring(redis.call('HLEN', key) - notes), 'updated_at',
             now)
  if final then redis.call('HSET', rk(id), 'crash_count', '0') end
end

-- The fenced writes, shared by their own scripts and the group commit batch script.

-- An append of the quads in ARGV[first..last] -> {'ok'} or a refusal.
local function append(id, epoch, first, last)
  local bad = fence(id, epoch)
  if bad then return bad end
  local plan, conflict = stage(id, first, last)
  if conflict then return conflict end
  commit(id, plan, num(clock()))
  return {'ok'}
end

local function park(origin, token, id, epoch, opt_at, opt_waits)
  if done_before(token) then return {'ok'} end
  local bad = fence(id, epoch)
  if bad then return bad end
  local key = rk(id)
  local now = num(clock())
  local at, waits = opt(opt_at), opt(opt_waits)
  local f = redis.call('HMGET', key, 'cancel_requested', 'workflow', 'created_at')
  if f[1] == '1' or awaited_here(id, waits) then
    at = now  -- a signal it waits for or a cancel request is already here: no lost wake-up
  end
  redis.call('HSET', key, 'status', 'waiting', 'updated_at', now)
  redis.call('HDEL', key, 'owner', 'lease_expires')
  if at then redis.call('HSET', key, 'wake_at', at) else redis.call('HDEL', key, 'wake_at') end
  if waits then
    redis.call('HSET', key, 'waits', waits)
  else
    redis.call('HDEL', key, 'waits')
  end
  reindex(id, f[2], 'running', 'waiting', f[3])
  if at then schedule(id, f[2], 'due', at) else schedule(id, f[2], nil) end
  remember(token, '1')
  wake(origin, at)
  return {'ok'}
end

local function finish(token, id, epoch, status, opt_result, opt_error)
  if done_before(token) then return {'ok'} end
  local bad = fence(id, epoch)
  if bad then return bad end
  local key = rk(id)
  local result, err = opt(opt_result), opt(opt_error)
  local f = redis.call('HMGET', key, 'workflow', 'created_at')
  redis.call('HSET', key, 'status', status, 'updated_at', num(clock()))
  redis.call('HDEL', key, 'owner', 'lease_expires', 'wake_at', 'waits')
  if result then redis.call('HSET', key, 'result', result) else redis.call('HDEL', key, 'result') end
  if err then redis.call('HSET', key, 'error', err) else redis.call('HDEL', key, 'error') end
  reindex(id, f[1], 'running', status, f[2])
  schedule(id, f[1], nil)
  remember(token, '1')
  return {'ok'}
end
"""


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def _script(name: str, body: str) -> Script:
    source = _PRELUDE + body
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


# ---- runs ------------------------------------------------------------------------------------

# ARGV: P, origin, token, run_id, workflow, then field/value pairs of the other fields.
# -> {created (1/0), row}
_CREATE = r"""
local id, wf = ARGV[4], ARGV[5]
local key = rk(id)
if redis.call('EXISTS', key) == 1 then
  if done_before(ARGV[3]) then return {1, row(key)} end
  return {0, row(key)}
end
local now = num(clock())
local fields = {'run_id', id, 'workflow', wf, 'status', 'pending', 'wake_at', now,
                'created_at', now, 'updated_at', now}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', key, unpack(fields))
redis.call('ZADD', P .. 'ix:all', now, id)
redis.call('ZADD', P .. 'ix:wf:' .. wf, now, id)
for i = 6, #ARGV - 1, 2 do  -- the run's tags (meta.tags), one index each: list_runs(tags=)
  if ARGV[i] == 'meta' then
    local tags = cjson.decode(ARGV[i + 1])['tags']
    if type(tags) == 'table' then
      for k, v in pairs(tags) do redis.call('ZADD', P .. 'ix:tag:' .. k .. '=' .. v, now, id) end
    end
  end
end
reindex(id, wf, nil, 'pending', now)
schedule(id, wf, 'due', now)
remember(ARGV[3], '1')
wake(ARGV[2], now)
return {1, row(key)}
"""

# ARGV: P, run_id -> row (empty when unknown)
_GET = r"""
return row(rk(ARGV[2]))
"""

# ARGV: P, index key (after the prefix), start, stop -> JSON [row, ...] newest first (a run
# that vanished meanwhile is an empty row).
# One JSON text rather than nested arrays: thousands of rows decode in C on the client side.
_LIST = r"""
local ids = redis.call('ZREVRANGE', P .. ARGV[2], ARGV[3], ARGV[4])
if #ids == 0 then return '[]' end
local out = {}
for i, id in ipairs(ids) do out[i] = redis.call('HGETALL', rk(id)) end
return cjson.encode(out)
"""

# ---- journal -----------------------------------------------------------------------------------

# ARGV: P, run_id, epoch, then quads (seq, status, checksum, value) -> {'ok'} or a refusal
_APPEND = r"""
return append(ARGV[2], ARGV[3], 4, #ARGV)
"""

# ARGV: P, run_id, epoch -> {'ok', unconsumed signals oldest first} or a refusal
_SIGNALS = r"""
local bad = fence(ARGV[2], ARGV[3])
if bad then return bad end
return {'ok', redis.call('LRANGE', sq(ARGV[2]), 0, -1)}
"""

# ARGV: P, token, run_id, epoch, signal element, then one quad (seq, status, checksum, value)
# -> {'ok'}, {'gone'} (the signal was taken meanwhile) or a refusal
_CONSUME = r"""
local id = ARGV[3]
if done_before(ARGV[2]) then return {'ok'} end
local bad = fence(id, ARGV[4])
if bad then return bad end
local plan, conflict = stage(id, 6, #ARGV)
if conflict then return conflict end
if redis.call('LREM', sq(id), 1, ARGV[5]) == 0 then return {'gone'} end
commit(id, plan, num(clock()))
remember(ARGV[2], '1')
return {'ok'}
"""

# ---- leases --------------------------------------------------------------------------------------

# ARGV: P, token, worker, limit, lease_ttl, max_crashes, workflow names...
# -> {row...} of the runs claimed, in claim order
_CLAIM = r"""
local token, worker = ARGV[2], ARGV[3]
local limit, ttl, max_crashes = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {}
local previous = redis.call('GET', P .. 'op:' .. token)
if previous then  -- our earlier attempt landed: hand back what it claimed, if still ours
  local got = cjson.decode(previous)
  for i = 1, #got, 2 do
    local f = redis.call('HMGET', rk(got[i]), 'epoch', 'status', 'owner')
    if f[1] == got[i + 1] and f[2] == 'running' and f[3] == worker then
      out[#out + 1] = row(rk(got[i]))
    end
  end
  return out
end

local now = clock()
local nows = num(now)
local cands, seen = {}, {}
local function add(id, wf, key, lease)
  if not seen[id] then
    seen[id] = true
    cands[#cands + 1] = {id = id, wf = wf, key = key, lease = lease}
  end
end
for i = 7, #ARGV do
  local wf = ARGV[i]
  -- Expired leases first (their workers died); bounded, oldest run first after sorting.
  local expired = redis.call('ZRANGEBYSCORE', P .. 'lease:' .. wf, '-inf', nows,
                             'LIMIT', 0, limit + 1000)
  for _, id in ipairs(expired) do add(id, wf, 0, true) end
  local due = redis.call('ZRANGEBYSCORE', P .. 'due:' .. wf, '-inf', nows, 'WITHSCORES',
                         'LIMIT', 0, limit)
  for j = 1, #due, 2 do add(due[j], wf, tonumber(due[j + 1]), false) end
  if #due == 2 * limit then  -- runs tied with the last one are ordered by created_at
    local last = due[#due]
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'due:' .. wf, last, last)) do
      add(id, wf, tonumber(last), false)
    end
  end
end
for _, c in ipairs(cands) do
  local f = redis.call('HMGET', rk(c.id), 'created_at', 'status', 'crash_count', 'owner')
  c.created, c.status, c.crashes, c.owner = tonumber(f[1]) or 0, f[2], f[3], f[4]
  c.created_s = f[1]
end
table.sort(cands, function(a, b)
  if a.key ~= b.key then return a.key < b.key end
  if a.created ~= b.created then return a.created < b.created end
  return a.id < b.id
end)

local record = {}
for _, c in ipairs(cands) do
  if #record >= 2 * limit then break end
  local key = rk(c.id)
  local take = true
  if c.lease then
    -- its worker stopped renewing: the takeover counts as a crash
    local crashes = (tonumber(c.crashes) or 0) + 1
    redis.call('HSET', key, 'crash_count', tostring(crashes), 'last_error',
               'worker ' .. (c.owner or 'None') .. ' lost its lease (crashed or stalled) while running')
    if crashes >= max_crashes then
      take = false
      redis.call('HSET', key, 'status', 'quarantined', 'updated_at', nows)
      redis.call('HDEL', key, 'owner', 'lease_expires', 'wake_at')
      reindex(c.id, c.wf, c.status, 'quarantined', c.created_s)
      schedule(c.id, c.wf, nil)
    end
  end
  if take then
    local epoch = redis.call('HINCRBY', key, 'epoch', 1)
    local expires = num(now + ttl)
    redis.call('HSET', key, 'status', 'running', 'owner', worker, 'lease_expires', expires,
               'updated_at', nows)
    redis.call('HDEL', key, 'wake_at')
    reindex(c.id, c.wf, c.status, 'running', c.created_s)
    schedule(c.id, c.wf, 'lease', expires)
    record[#record + 1] = c.id
    record[#record + 1] = tostring(epoch)
    out[#out + 1] = row(key)
  end
end
if #record > 0 then remember(token, cjson.encode(record)) end
return out
"""

# ARGV: P, worker, lease_ttl, then pairs (run_id, epoch) -> flat {run_id, cancel_requested, ...}
_RENEW = r"""
local worker = ARGV[2]
local now = clock()
local expires = num(now + tonumber(ARGV[3]))
local out = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local key = rk(id)
  local f = redis.call('HMGET', key, 'epoch', 'status', 'owner', 'cancel_requested', 'workflow')
  if f[1] == ARGV[i + 1] and f[2] == 'running' and f[3] == worker then
    redis.call('HSET', key, 'lease_expires', expires)
    schedule(id, f[5], 'lease', expires)
    out[#out + 1] = id
    out[#out + 1] = f[4] or '0'
  end
end
return out
"""

# ARGV: P, origin, token, run_id, epoch, opt(wake_at), opt(waits) -> {'ok'} or a refusal
_PARK = r"""
return park(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
"""

# ARGV: P, token, run_id, epoch, status, opt(result), opt(error) -> {'ok'} or a refusal
_FINISH = r"""
return finish(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
"""

# Group commit: many fenced writes in one script call (one round trip, one atomic step).
# ARGV: P, then per write an op letter ('a' append, 'p' park, 'f' finish), the number n of its
# arguments and those n arguments, as the append, park and finish scripts take them after P.
# -> one reply per write: what that write's own script would have replied, except that {'ok'}
# is sent as the bare string 'ok' (less to parse), and a write that raised an error (its own
# script would have failed with it) answers {'error', message} without stopping the others.
_BATCH = r"""
local out = {}
local i = 2
while i <= #ARGV do
  local op, n = ARGV[i], tonumber(ARGV[i + 1])
  local a = i + 2
  local ok, r = pcall(function()
    if op == 'a' then
      return append(ARGV[a], ARGV[a + 1], a + 2, a + n - 1)
    elseif op == 'p' then
      return park(ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5])
    elseif op == 'f' then
      return finish(ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5])
    end
    error('coro_durable batch: unknown op ' .. tostring(op))
  end)
  if not ok then
    r = {'error', type(r) == 'table' and tostring(r.err) or tostring(r)}
  elseif r[1] == 'ok' and #r == 1 then
    r = 'ok'
  end
  out[#out + 1] = r
  i = a + n
end
return out
"""

# ARGV: P, origin, token, run_id, opt(epoch), error, retry_at, max_crashes
# -> {'ok', row} or a refusal
_CRASH = r"""
local id = ARGV[4]
local key = rk(id)
if done_before(ARGV[3]) then return {'ok', row(key)} end
local epoch = opt(ARGV[5])
if epoch then
  local bad = fence(id, epoch)
  if bad then return bad end
elseif redis.call('EXISTS', key) == 0 then
  return {'missing'}
end
local f = redis.call('HMGET', key, 'status', 'workflow', 'created_at')
local crashes = redis.call('HINCRBY', key, 'crash_count', 1)
redis.call('HSET', key, 'last_error', ARGV[6], 'updated_at', num(clock()))
redis.call('HDEL', key, 'owner', 'lease_expires')
local status = 'waiting'
if not epoch or crashes >= tonumber(ARGV[8]) then
  status = 'quarantined'
  redis.call('HDEL', key, 'wake_at')
  schedule(id, f[2], nil)
else
  redis.call('HSET', key, 'wake_at', ARGV[7])
  schedule(id, f[2], 'due', ARGV[7])
  wake(ARGV[2], ARGV[7])
end
redis.call('HSET', key, 'status', status)
reindex(id, f[2], f[1], status, f[3])
remember(ARGV[3], '1')
return {'ok', row(key)}
"""

# ARGV: P, origin, run_id -> {'ok', row} or {'missing'}
_RESUME = r"""
local id = ARGV[3]
local key = rk(id)
local f = redis.call('HMGET', key, 'status', 'workflow', 'created_at')
if not f[1] then return {'missing'} end
if f[1] == 'quarantined' then
  local now = num(clock())
  redis.call('HSET', key, 'status', 'pending', 'crash_count', '0', 'wake_at', now,
             'updated_at', now)
  reindex(id, f[2], 'quarantined', 'pending', f[3])
  schedule(id, f[2], 'due', now)
  wake(ARGV[2], now)
end
return {'ok', row(key)}
"""

# ARGV: P, origin, run_id, opt(after), then the note's quad (seq, status, checksum, value), then
# the seqs to reopen -> {'ok', row}, {'missing'}, {'taken', checksum} (the note's seq holds an
# entry: an earlier call of ours, or a concurrent retry) or {'status', status} (not retryable).
# The run hash's ``notes`` counts the journal's audit notes, which ``steps`` leaves out.
_RETRY = r"""
local id = ARGV[3]
local key = rk(id)
local f = redis.call('HMGET', key, 'status', 'workflow', 'created_at')
if not f[1] then return {'missing'} end
local journal = jk(id)
local taken = redis.call('HGET', journal, ARGV[5])
if taken then
  local _, checksum = string.match(taken, '^([^|]*)|([^|]*)|')
  return {'taken', checksum or ''}
end
if f[1] ~= 'failed' and f[1] ~= 'cancelled' then return {'status', f[1]} end
local after = opt(ARGV[4])
if after then after = tonumber(after) end
local doomed = {}
for i = 9, #ARGV do doomed[ARGV[i]] = true end
local notes = 1  -- the one written here
for _, seq in ipairs(redis.call('HKEYS', journal)) do
  local n = tonumber(seq)
  if n < 0 then
    notes = notes + 1
  elseif doomed[seq] or (after and n > after) then
    redis.call('HDEL', journal, seq)
  end
end
redis.call('HSET', journal, ARGV[5], ARGV[8])
local now = num(clock())
redis.call('HSET', key, 'status', 'pending', 'wake_at', now, 'cancel_requested', '0',
           'crash_count', '0', 'notes', tostring(notes),
           'steps', tostring(redis.call('HLEN', journal) - notes), 'updated_at', now)
redis.call('HDEL', key, 'owner', 'lease_expires', 'waits', 'error', 'result')
reindex(id, f[2], f[1], 'pending', f[3])
schedule(id, f[2], 'due', now)
wake(ARGV[2], now)
return {'ok', row(key)}
"""

# ---- signals and cancellation ----------------------------------------------------------------------

# ARGV: P, origin, token, run_id, signal_id, signal element -> {'ok', 1 delivered / 0 duplicate}
_DELIVER = r"""
local id = ARGV[4]
local key = rk(id)
if done_before(ARGV[3]) then return {'ok', 1} end
local f = redis.call('HMGET', key, 'status', 'workflow', 'waits')
if not f[1] then return {'missing'} end
if redis.call('SADD', P .. 'sigids:' .. id, ARGV[5]) == 0 then return {'ok', 0} end
redis.call('RPUSH', sq(id), ARGV[6])
local at = nil
if f[1] == 'waiting' and awaits(f[3] or nil, cjson.decode(ARGV[6])[2]) then
  at = num(clock())
  redis.call('HSET', key, 'wake_at', at)
  schedule(id, f[2], 'due', at)
end
remember(ARGV[3], '1')
wake(ARGV[2], at)
return {'ok', 1}
"""

# ARGV: P, origin, run_id, error JSON of a run cancelled on the spot -> {'ok', row}
_CANCEL = r"""
local id = ARGV[3]
local key = rk(id)
local f = redis.call('HMGET', key, 'status', 'workflow', 'created_at', 'steps')
if not f[1] then return {'missing'} end
local status = f[1]
local now = num(clock())
if status == 'quarantined' or (status == 'pending' and f[4] == '0') then
  -- nothing is executing it: cancel on the spot
  redis.call('HSET', key, 'status', 'cancelled', 'cancel_requested', '1', 'error', ARGV[4],
             'updated_at', now)
  redis.call('HDEL', key, 'wake_at')
  reindex(id, f[2], status, 'cancelled', f[3])
  schedule(id, f[2], nil)
elseif status ~= 'completed' and status ~= 'failed' and status ~= 'cancelled' then
  redis.call('HSET', key, 'cancel_requested', '1')
  if status == 'waiting' or status == 'pending' then
    redis.call('HSET', key, 'wake_at', now)
    schedule(id, f[2], 'due', now)
    wake(ARGV[2], now)
  end
end
return {'ok', row(key)}
"""

# ---- watching ----------------------------------------------------------------------------------------

# ARGV: P -> {server now, the next future time in the timeline or ''}
_NEXT_WAKE = r"""
local now = clock()
local nx = redis.call('ZRANGEBYSCORE', P .. 'timeline', '(' .. num(now), '+inf', 'WITHSCORES',
                      'LIMIT', 0, 1)
return {num(now), nx[2] or ''}
"""

# ---- the worker registry -----------------------------------------------------------------------------
#
# ``P workers`` maps a worker id to ``started_at|last_seen|expires_at|<JSON [host, pid, [names]]>``
# and ``P workers:expiry`` orders the ids by expires_at (server clock).

# ARGV: P, worker_id, ttl, JSON info -> {started_at, last_seen, expires_at}. Deletes the other
# workers' expired registrations; a registration that had expired starts again.
_WORKER_BEAT = r"""
local id = ARGV[2]
local H, Z = P .. 'workers', P .. 'workers:expiry'
local now = clock()
local nows = num(now)
for _, other in ipairs(redis.call('ZRANGEBYSCORE', Z, '-inf', nows)) do
  if other ~= id then
    redis.call('HDEL', H, other)
    redis.call('ZREM', Z, other)
  end
end
local started = nows
local cur = redis.call('HGET', H, id)
if cur then
  local s, e = string.match(cur, '^([^|]*)|[^|]*|([^|]*)|')
  if s and tonumber(e) and tonumber(e) > now then started = s end
end
local expires = num(now + tonumber(ARGV[3]))
redis.call('HSET', H, id, started .. '|' .. nows .. '|' .. expires .. '|' .. ARGV[4])
redis.call('ZADD', Z, expires, id)
return {started, nows, expires}
"""

# ARGV: P -> flat {worker_id, stored value, ...} of the registrations that have not expired
_WORKERS = r"""
local H = P .. 'workers'
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'workers:expiry', '(' .. num(clock()), '+inf')) do
  local value = redis.call('HGET', H, id)
  if value then
    out[#out + 1] = id
    out[#out + 1] = value
  end
end
return out
"""

# ARGV: P, worker_id -> 1 if it was registered
_WORKER_REMOVE = r"""
redis.call('ZREM', P .. 'workers:expiry', ARGV[2])
return redis.call('HDEL', P .. 'workers', ARGV[2])
"""

# ---- upgrading the layout -------------------------------------------------------------------------

# ARGV: P, run_id, then triples (seq, value as read, value to write) -> how many were written.
# A value that changed since it was read is left alone (its writer knew the layout it wrote).
_UPGRADE_ENTRIES = r"""
local key = jk(ARGV[2])
local n = 0
for i = 3, #ARGV, 3 do
  if redis.call('HGET', key, ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', key, ARGV[i], ARGV[i + 2])
    n = n + 1
  end
end
return n
"""

# ARGV: P, run_id -> 1 if the run's hash had the prose ``waiting_on`` of layout 2: it is dropped
# and, if the run is waiting, the run is made due now (wake_at 0), to re-park with its
# structured ``waits`` at its next activation (a wake-up before due only replays).
_UPGRADE_WAITS = r"""
local id = ARGV[2]
local key = rk(id)
if redis.call('HEXISTS', key, 'waiting_on') == 0 then return 0 end
redis.call('HDEL', key, 'waiting_on')
local f = redis.call('HMGET', key, 'status', 'workflow')
if f[1] == 'waiting' then
  redis.call('HSET', key, 'wake_at', '0')
  schedule(id, f[2], 'due', 0)
end
return 1
"""

# ARGV: P, lock token, opt(layout) -> 1 if we still held the upgrade lock: then the layout (if
# given: the upgrade is done) is recorded and the lock released
_UPGRADE_DONE = r"""
if redis.call('GET', P .. 'meta:upgrade') ~= ARGV[2] then return 0 end
local layout = opt(ARGV[3])
if layout then redis.call('HSET', P .. 'meta', 'layout', layout) end
redis.call('DEL', P .. 'meta:upgrade')
return 1
"""

# ARGV: P, lock token, milliseconds -> 1 if the upgrade lock is (still) ours, now extended
_UPGRADE_LOCK = r"""
if redis.call('GET', P .. 'meta:upgrade') == ARGV[2] then
  redis.call('PEXPIRE', P .. 'meta:upgrade', ARGV[3])
  return 1
end
return redis.call('SET', P .. 'meta:upgrade', ARGV[2], 'NX', 'PX', ARGV[3]) and 1 or 0
"""

SCRIPTS: dict[str, Script] = {
    s.name: s
    for s in (
        _script("create", _CREATE),
        _script("get", _GET),
        _script("list", _LIST),
        _script("append", _APPEND),
        _script("signals", _SIGNALS),
        _script("consume", _CONSUME),
        _script("claim", _CLAIM),
        _script("renew", _RENEW),
        _script("park", _PARK),
        _script("finish", _FINISH),
        _script("batch", _BATCH),
        _script("crash", _CRASH),
        _script("resume", _RESUME),
        _script("retry", _RETRY),
        _script("deliver", _DELIVER),
        _script("cancel", _CANCEL),
        _script("next_wake", _NEXT_WAKE),
        _script("worker_beat", _WORKER_BEAT),
        _script("workers", _WORKERS),
        _script("worker_remove", _WORKER_REMOVE),
        _script("upgrade_entries", _UPGRADE_ENTRIES),
        _script("upgrade_waits", _UPGRADE_WAITS),
        _script("upgrade_done", _UPGRADE_DONE),
        _script("upgrade_lock", _UPGRADE_LOCK),
    )
}
