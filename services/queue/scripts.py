"""The job store's Lua scripts: every change of a job's state is one of these, run atomically in Redis,
so a job ends exactly once and a dispatcher whose attempt was superseded (a stale attempt number: the
fencing token) cannot write to it any more. services/queue/jobstore.py runs them; the key layout is
described there."""

SUBMIT = """
local job, events, owner_idx, queue, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local job_id, ttl, now, job_prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
if idem ~= '' then
  local existing = redis.call('GET', idem)
  if existing and redis.call('EXISTS', job_prefix .. existing) == 1 then return {0, existing} end
  redis.call('SET', idem, job_id, 'EX', ttl)
end
redis.call('HSET', job, 'id', job_id, 'state', 1, 'create_ms', now, 'update_ms', now, 'attempts', 0,
           'tokens', 0, 'progress', 0, unpack(ARGV, 9))
redis.call('EXPIRE', job, ttl)
redis.call('XADD', events, '*', 'e', ARGV[5])
redis.call('EXPIRE', events, ttl)
redis.call('ZADD', owner_idx, now, job_id)
redis.call('EXPIRE', owner_idx, ttl)
if ARGV[7] ~= '' then
  redis.call('XADD', queue, '*', 'job_id', job_id, 'service', ARGV[6], 'spec', ARGV[7], 'deadline_ms', ARGV[8])
else
  redis.call('XADD', queue, '*', 'job_id', job_id, 'service', ARGV[6])
end
return {1, job_id}
"""

# Move a job to a new state if its state is one of ARGV[1] (comma list) and, when ARGV[2] is not
# empty, its attempt number equals ARGV[2]. ARGV[3]: new state; ARGV[4]: TTL; ARGV[5]: queue entry
# id to acknowledge and delete from KEYS[4] when applied ('' = none); ARGV[6]: the job id;
# ARGV[7..]: events to append, then '|' and hash fields to set. A terminal state also writes its
# last event to KEYS[3] (final) and publishes "<job id>\n<final entry id>\n<event>" on the job's
# `notify` channel, if the gateway that submitted it waits there. Returns 1 when applied.
TRANSITION = """
local job, events, final, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local state = redis.call('HGET', job, 'state')
if not state then return -1 end
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == state then ok = true end end
if not ok then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', job, 'attempts') ~= ARGV[2] then return 0 end
local i, last = 7, nil
while ARGV[i] ~= '|' do
  if ARGV[i] ~= '' then redis.call('XADD', events, '*', 'e', ARGV[i]); last = ARGV[i] end
  i = i + 1
end
redis.call('HSET', job, 'state', ARGV[3], unpack(ARGV, i + 1))
if last and (ARGV[3] == '3' or ARGV[3] == '4' or ARGV[3] == '5') then
  local fid = redis.call('XADD', final, '*', 'e', last)
  redis.call('EXPIRE', final, tonumber(ARGV[4]))
  local notify = redis.call('HGET', job, 'notify')
  if notify and notify ~= '' then redis.call('PUBLISH', notify, ARGV[6] .. '\\n' .. fid .. '\\n' .. last) end
end
if ARGV[5] ~= '' then
  redis.call('XACK', queue, 'dispatchers', ARGV[5])
  redis.call('XDEL', queue, ARGV[5])
end
return 1
"""

# Claim a job for a dispatch attempt: QUEUED/RUNNING -> RUNNING with attempts + 1, recording the
# attempt's worker call id (ARGV[3]). Returns {attempt, record}, the record read before the new call
# id is written (so it names the previous attempt's call); attempt 0 if the job already ended, -1 if
# it is gone.
START = """
local job, events = KEYS[1], KEYS[2]
local state = redis.call('HGET', job, 'state')
if not state then return {-1, {}} end
if state ~= '1' and state ~= '2' then return {0, {}} end
local attempts = redis.call('HINCRBY', job, 'attempts', 1)
redis.call('HSET', job, 'state', 2, 'update_ms', ARGV[1])
redis.call('XADD', events, '*', 'e', ARGV[2])
local record = redis.call('HGETALL', job)
if ARGV[3] ~= '' then redis.call('HSET', job, 'call', ARGV[3]) end
return {attempts, record}
"""

# Append text chunks (ARGV[5..]) if the caller still owns the running attempt (fencing).
CHUNK = """
local job, events = KEYS[1], KEYS[2]
if redis.call('HGET', job, 'state') ~= '2' or redis.call('HGET', job, 'attempts') ~= ARGV[1] then return 0 end
for i = 5, #ARGV do redis.call('XADD', events, '*', 'e', ARGV[i]) end
redis.call('HSET', job, 'tokens', ARGV[2], 'progress', ARGV[3], 'update_ms', ARGV[4])
return 1
"""
