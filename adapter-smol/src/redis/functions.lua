#!lua name=switchboard

-- switchboard's channels on Redis (DESIGN.md §3). Loaded by every instance with
-- FUNCTION LOAD REPLACE each time it (re)connects: a Redis restarted without persistence has
-- lost its functions.
--
-- Per channel (a pub/sub channel name such as `sb:{conversation:c-1}`; the braces are the
-- Redis Cluster hash tag, so that all of a channel's keys live on one node):
--   <channel>:m        hash {epoch, top}: the channel's epoch and the offset of its last message
--   <channel>:s        stream, the history: one entry per message, id `<offset>-0`, field `m`
--   <channel>:k:<key>  `<offset>:<epoch>`, the position a publish with this idempotency key got
-- Meta and stream expire `ttl` seconds after the last publish; the stream also keeps about
-- `history_len` entries at most. An idempotency key lives KEY_TTL seconds (or `ttl`, if
-- shorter): long enough for any retry of a publish whose answer was lost, and at a high
-- publish rate the keys, not the history, would otherwise be most of the memory.

local KEY_TTL = 300

local DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'

local function base36(n, width)
  local out = ''
  repeat
    local digit = n % 36
    out = string.sub(DIGITS, digit + 1, digit + 1) .. out
    n = math.floor(n / 36)
  until n == 0
  while string.len(out) < width do
    out = '0' .. out
  end
  return out
end

-- A fresh epoch: the server's clock to the microsecond, and a random-ish suffix. It differs
-- from every earlier epoch of the channel (those were drawn at earlier instants).
local function new_epoch()
  local now = redis.call('TIME')
  return base36(tonumber(now[1]), 1) .. base36(tonumber(now[2]), 4) .. base36(math.random(0, 1295), 2)
end

-- The offset of a stream's last entry (0 when it has none).
local function last_offset(stream)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last == 0 then
    return 0
  end
  return tonumber(string.match(last[1][1], '^(%d+)'))
end

-- FCALL switchboard_publish 3|4 <channel>:m <channel>:s <channel>:k:<key> [<channel>:k:<after>]
--       <channel> <message> <history_len> <ttl_seconds>
--
-- Unless the key was published before (then its position is returned and nothing else done):
-- gives the message the channel's next offset (a new epoch at offset 1 when the channel has
-- none), appends it to the history, and publishes on <channel>
-- `{"epoch":"<epoch>","offset":<offset>,` followed by the message without its first byte
-- (the message must be a JSON object). Returns {epoch, offset}.
--
-- With a fourth key, the key of the instance's previous publish on the channel that had no
-- answer when this one was sent: an error (`ORDER`), nothing done, unless that one is placed.
-- An instance's messages keep their order when one of its publishes fails and the next does
-- not: the next is refused, and both are retried in order.
local function publish(keys, args)
  local meta, stream, key, after = keys[1], keys[2], keys[3], keys[4]
  local channel, message = args[1], args[2]
  local history_len, ttl = tonumber(args[3]), tonumber(args[4])

  local seen = redis.call('GET', key)
  if seen then
    local colon = string.find(seen, ':', 1, true)
    return { string.sub(seen, colon + 1), tonumber(string.sub(seen, 1, colon - 1)) }
  end
  if after and redis.call('EXISTS', after) == 0 then
    return redis.error_reply('ORDER the publish before this one is not placed yet')
  end

  local epoch = redis.call('HGET', meta, 'epoch')
  local top = tonumber(redis.call('HGET', meta, 'top') or '0')
  if not epoch or last_offset(stream) > top then
    -- No channel yet, or its meta was lost while its history was kept (an eviction, a
    -- failover that rolled the counter back): the history before this is not to be trusted.
    epoch = new_epoch()
    redis.call('HSET', meta, 'epoch', epoch, 'top', 0)
  end
  local offset = redis.call('HINCRBY', meta, 'top', 1)
  if offset == 1 then
    redis.call('DEL', stream)
  end
  redis.call('XADD', stream, 'MAXLEN', '~', history_len, offset .. '-0', 'm', message)
  redis.call('EXPIRE', meta, ttl)
  redis.call('EXPIRE', stream, ttl)
  redis.call('SET', key, offset .. ':' .. epoch, 'EX', math.min(ttl, KEY_TTL))
  redis.call('PUBLISH', channel,
    '{"epoch":"' .. epoch .. '","offset":' .. offset .. ',' .. string.sub(message, 2))
  return { epoch, offset }
end

-- FCALL switchboard_read 2 <channel>:m <channel>:s <after> <limit>
--
-- The channel's top and up to <limit> history entries after offset <after>, read at one
-- instant: {epoch, top, {offset, message, offset, message, ...}}, or {nil, 0, {}} when the
-- channel has no meta (no epoch, no history).
local function read(keys, args)
  local meta, stream = keys[1], keys[2]
  local head = redis.call('HMGET', meta, 'epoch', 'top')
  if not head[1] then
    return { false, 0, {} }
  end
  local entries = redis.call('XRANGE', stream, '(' .. args[1] .. '-0', '+', 'COUNT', args[2])
  local flat = {}
  for _, entry in ipairs(entries) do
    flat[#flat + 1] = tonumber(string.match(entry[1], '^(%d+)'))
    flat[#flat + 1] = entry[2][2]
  end
  return { head[1], tonumber(head[2] or '0'), flat }
end

-- Sessions while they may be resumed (resume anywhere). A session is a hash at
-- `<prefix>{session:<connection id>}`: `r` the record (JSON, read by the instances only),
-- `owner` the instance holding it, `generation` counting claims.

-- FCALL switchboard_save_session 1 <session> <record> <owner> <generation> <ttl_ms>
--
-- Writes the record unless a later claim (a higher generation) is there already: an instance
-- that lost the session to another must not overwrite the new owner's record. Returns 1 when
-- written, 0 when not.
local function save_session(keys, args)
  local session = keys[1]
  local stored = tonumber(redis.call('HGET', session, 'generation') or '-1')
  local generation = tonumber(args[3])
  if stored > generation then
    return 0
  end
  redis.call('HSET', session, 'r', args[1], 'owner', args[2], 'generation', generation)
  redis.call('PEXPIRE', session, args[4])
  return 1
end

-- FCALL switchboard_claim_session 1 <session> <claimant> <notice channel prefix> <connection id>
--
-- Makes <claimant> the session's owner and counts its generation up; the previous owner, when
-- another instance, is told on `<prefix>{instance:<owner>}` with
-- `{"takeover":"<connection id>","generation":N}`. Returns {record, owner, generation}, or nil
-- when there is no such session.
local function claim_session(keys, args)
  local session, claimant = keys[1], args[1]
  local head = redis.call('HMGET', session, 'r', 'owner')
  if not head[1] then
    return false
  end
  local generation = redis.call('HINCRBY', session, 'generation', 1)
  redis.call('HSET', session, 'owner', claimant)
  if head[2] ~= claimant then
    redis.call('PUBLISH', args[2] .. '{instance:' .. head[2] .. '}',
      '{"takeover":"' .. args[3] .. '","generation":' .. generation .. '}')
  end
  return { head[1], claimant, generation }
end

redis.register_function('switchboard_publish', publish)
redis.register_function { function_name = 'switchboard_read', callback = read, flags = { 'no-writes' } }
redis.register_function('switchboard_save_session', save_session)
redis.register_function('switchboard_claim_session', claim_session)
