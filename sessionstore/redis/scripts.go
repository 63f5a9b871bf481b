package redis

import goredis "github.com/redis/go-redis/v9"

// The Lua scripts. Every key a script touches is in KEYS, and the keys of
// one call share a hash tag, so each script runs on one Cluster node. They
// answer with integer codes rather than error replies, so that expected
// outcomes (missing session, full mailbox, wrong owner) are never confused
// with failures of Redis itself. Numbers stay far below 2^53, where Lua's
// doubles are exact.

// Script results shared by several scripts.
const (
	codeNotFound = -1
	codeFull     = -2 // Append: mailbox full
	codeNotOwner = -3 // Ack: another stream owns the session
	codeConflict = 0  // Update: the record changed since it was read
)

// createScript stores a new session unless the id is taken.
//
//	KEYS: hash, mailbox, requests
//	ARGV: rec, owner, exp (ms), fp, ttl (ms), caller
//	→ 1 created, 0 exists
var createScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'owner', ARGV[2], 'exp', ARGV[3], 'fp', ARGV[4],
  'caller', ARGV[6], 'last', '0', 'acked', '0', 'v', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
`)

// updateScript replaces the record if its version is still the one read
// (compare-and-set), and refreshes the TTL of the session's keys.
//
//	KEYS: hash, mailbox, requests
//	ARGV: version read, rec, owner, exp (ms), fp, ttl (ms)
//	→ 1 stored, 0 conflict, -1 missing
var updateScript = goredis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'v')
if not v then
  return -1
end
if v ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'rec', ARGV[2], 'owner', ARGV[3], 'exp', ARGV[4], 'fp', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return 1
`)

// deleteScript removes the keys of a session if it exists and wakes its
// subscribers.
//
//	KEYS: hash, mailbox, requests
//	ARGV: wake channel, id
//	→ {fingerprint, caller} deleted, nil missing
var deleteScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local f = redis.call('HMGET', KEYS[1], 'fp', 'caller')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return {f[1] or '', f[2] or ''}
`)

// appendBody is the body of Append, shared with FinishRequest: with the
// session hash in f (HMGET last, acked), it adds ARGV[1..2] (control, data)
// to the mailbox unless it holds ARGV[3] undelivered messages, keeps the
// mailbox's TTL that of the hash, publishes ARGV[5] on ARGV[4], and leaves
// the new seq in the local seq, or returns -2.
const appendBody = `
if tonumber(f[1]) - tonumber(f[2]) >= tonumber(ARGV[3]) then
  return -2
end
local seq = redis.call('HINCRBY', KEYS[1], 'last', 1)
redis.call('XADD', KEYS[2], string.format('%d-0', seq), 'c', ARGV[1], 'd', ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
`

// appendScript adds one message to the mailbox and wakes its subscribers.
//
//	KEYS: hash, mailbox
//	ARGV: control ("1"/"0"), data, max pending, wake channel, id
//	→ seq (> 0), -1 missing, -2 full
var appendScript = goredis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'last', 'acked')
if not f[1] then
  return -1
end
` + appendBody + `
return seq
`)

// ackScript records the delivered position and trims the mailbox down to
// the replay window.
//
//	KEYS: hash, mailbox
//	ARGV: owner ("" for any), seq, replay window
//	→ 0 done, -1 missing, -3 not the owner
var ackScript = goredis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'owner', 'last', 'acked')
if not f[2] then
  return -1
end
if ARGV[1] ~= '' and f[1] ~= ARGV[1] then
  return -3
end
local seq = math.min(tonumber(ARGV[2]), tonumber(f[2]))
if seq <= tonumber(f[3]) then
  return 0
end
redis.call('HSET', KEYS[1], 'acked', string.format('%d', seq))
local minid = seq - tonumber(ARGV[3]) + 1
if minid > 1 then
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', minid))
end
return 0
`)

// indexAddScript puts a member into an index ZSET and makes the key live at
// least ttl (an index outlives every session it lists). With a positive
// max, it only adds a member that is missing and only while the index has
// fewer than max members, and leaves the score of a present member alone:
// Create reserves its place this way before it writes the session.
//
//	KEYS: zset
//	ARGV: score, member, ttl (ms), max (0: upsert)
//	→ 1 done, 0 full
var indexAddScript = goredis.NewScript(`
local max = tonumber(ARGV[4])
if max > 0 then
  if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
    if redis.call('ZCARD', KEYS[1]) >= max then
      return 0
    end
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
  end
else
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
end
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
`)

// callerReserveScript puts a new session into its caller's index unless
// the caller already holds max live sessions: entries scored before now
// (sessions expired, or left by a Create that failed) are dropped first.
//
//	KEYS: zset
//	ARGV: score, member, ttl (ms), max, now (ms)
//	→ 1 done, 0 full
var callerReserveScript = goredis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    return 0
  end
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
`)

// Requests in flight live in the hash <prefix>{id}:r, three fields per
// request key K: q:K (the request without its id and event id, as JSON),
// i:K (the JSON-RPC id, byte for byte) and e:K (the last event id). q:K
// marks the request as present.

// trackScript records a request in flight.
//
//	KEYS: hash, requests
//	ARGV: key, rest (JSON), id, last event id
//	→ 1 done, 0 a record with that key exists, -1 missing session
var trackScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if redis.call('HEXISTS', KEYS[2], 'q:' .. ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[2], 'q:' .. ARGV[1], ARGV[2], 'i:' .. ARGV[1], ARGV[3], 'e:' .. ARGV[1], ARGV[4])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
`)

// eventIDScript records the last event id of a request, if it is tracked.
//
//	KEYS: requests
//	ARGV: key, event id
//	→ 1 set, 0 not tracked
var eventIDScript = goredis.NewScript(`
if redis.call('HEXISTS', KEYS[1], 'q:' .. ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'e:' .. ARGV[1], ARGV[2])
return 1
`)

// claimScript removes a request's record.
//
//	KEYS: requests
//	ARGV: key
//	→ 1 removed, 0 not tracked
//
// reassignScript replaces a request's replica and upstream session, if the
// request is tracked.
//
//	KEYS: requests
//	ARGV: key, rest (JSON)
//	→ 1 set, 0 not tracked
var reassignScript = goredis.NewScript(`
if redis.call('HEXISTS', KEYS[1], 'q:' .. ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'q:' .. ARGV[1], ARGV[2])
return 1
`)

var claimScript = goredis.NewScript(`
return redis.call('HDEL', KEYS[1], 'q:' .. ARGV[1], 'i:' .. ARGV[1], 'e:' .. ARGV[1]) > 0 and 1 or 0
`)

// finishScript removes a request's record and appends its answer, both or
// neither.
//
//	KEYS: hash, mailbox, requests
//	ARGV: control, data, max pending, wake channel, id, key
//	→ seq (> 0), 0 not tracked, -1 missing session, -2 full
var finishScript = goredis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'last', 'acked')
if not f[1] then
  return -1
end
if redis.call('HEXISTS', KEYS[3], 'q:' .. ARGV[6]) == 0 then
  return 0
end
` + appendBody + `
redis.call('HDEL', KEYS[3], 'q:' .. ARGV[6], 'i:' .. ARGV[6], 'e:' .. ARGV[6])
return seq
`)
