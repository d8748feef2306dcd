"""The Lua scripts of the Redis backplane: each runs atomically in Redis.

Every change that must not race (route a packet or buffer it, attach, detach, buffer a
broadcast for every session that is away) is one of these. `Scripts` registers them on a
client; the sources stay importable for tests and tools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "ADOPT",
    "ADOPT_DEAD",
    "BROADCAST",
    "CLAIM",
    "POLL",
    "PRUNE",
    "PUSH",
    "RELEASE",
    "ROUTE",
    "RUN_ONCE",
    "TAKE",
    "UNPOLL",
    "Scripts",
]

# Buffer one entry for a session: bounded (oldest dropped and counted), same life as the
# session, and a wake-up for the node long-polling it. Shared by ROUTE and BROADCAST.
# The buffer is a sorted set scored by the packet's number (`seq`), so a packet a node buffers
# late (it was on its way to a client that just left) still takes its place in order.
PUSH = """
local function push(s, b, entry, size, chan, key, score)
  redis.call('ZADD', b, score, entry)
  local over = redis.call('ZCARD', b) - size
  if over > 0 then
    redis.call('ZREMRANGEBYRANK', b, 0, over - 1)
    redis.call('HINCRBY', s, 'dropped', over)
  end
  local ttl = redis.call('PTTL', s)
  if ttl > 0 then redis.call('PEXPIRE', b, ttl) end
  local poller = redis.call('HGET', s, 'poll')
  if poller then
    redis.call('PUBLISH', chan .. poller, 'W{"k":"' .. key .. '"}' .. string.char(10))
  end
end
"""

# Sessions attached to a node that died (its subscription is gone: Redis dropped the
# connection of the killed process) become away, so that broadcasts buffer for them at once.
# Shared by BROADCAST and ADOPT (run by every node now and then).
ADOPT = """
local function adopt(nodes, away, prefix)
  for _, node in ipairs(redis.call('SMEMBERS', nodes)) do
    local numsub = redis.call('PUBSUB', 'NUMSUB', prefix .. 'node:' .. node)
    if numsub[2] == 0 then
      local on = prefix .. 'on:' .. node
      for _, key in ipairs(redis.call('SMEMBERS', on)) do
        local s = prefix .. 's:' .. key
        if redis.call('HGET', s, 'node') == node then
          redis.call('HDEL', s, 'node')
          redis.call('SADD', away, key)
        end
      end
      redis.call('DEL', on)
      redis.call('SREM', nodes, node)
    end
  end
end
"""

# KEYS: s, b, seq. ARGV: me, entry, size, node channel prefix, message tail for the
# attached node, session key, the packet's number ('' for a new one).
# Returns 1 (sent to the node holding the WebSocket), 0 (buffered), -1 (no such session).
ROUTE = (
    PUSH
    + """
local score = tonumber(ARGV[7]) or redis.call('INCR', KEYS[3])
local node = redis.call('HGET', KEYS[1], 'node')
if node and node ~= ARGV[1] then
  local message = 'D{"seq":' .. score .. ',' .. ARGV[5]
  if redis.call('PUBLISH', ARGV[4] .. node, message) > 0 then return 1 end
  redis.call('HDEL', KEYS[1], 'node')  -- that node is gone: keep it for the client's return
end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
push(KEYS[1], KEYS[2], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[6], score)
return 0
"""
)

# KEYS: away, seq, nodes. ARGV: all channel, header tail + frame, entry, size, key prefix,
# node channel prefix, excluded session keys...
# Buffers for every session that is away, then tells every node (which deliver to their
# attached clients the broadcasts numbered after their attach). Returns the number of nodes.
BROADCAST = (
    PUSH
    + ADOPT
    + """
adopt(KEYS[3], KEYS[1], ARGV[5])
local seq = redis.call('INCR', KEYS[2])
local skip = {}
for i = 7, #ARGV do skip[ARGV[i]] = true end
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not skip[key] then
    local s = ARGV[5] .. 's:' .. key
    if redis.call('EXISTS', s) == 0 then
      redis.call('SREM', KEYS[1], key)  -- expired: no unbounded growth
    else
      push(s, ARGV[5] .. 'b:' .. key, ARGV[3], tonumber(ARGV[4]), ARGV[6], key, seq)
    end
  end
end
return redis.call('PUBLISH', ARGV[1], 'B{"seq":' .. seq .. ',' .. ARGV[2])
"""
)

# KEYS: s, away, seq, on:me. ARGV: me, session key, node channel prefix, takeover message,
# ttl ms, principal JSON, key prefix. Returns {dropped, broadcast number now}.
CLAIM = """
local previous = redis.call('HGET', KEYS[1], 'node')
local now = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'receives', '1', 'since', now)
redis.call('HSETNX', KEYS[1], 'principal', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SREM', KEYS[2], ARGV[2])
local dropped = tonumber(redis.call('HGET', KEYS[1], 'dropped') or '0')
redis.call('HDEL', KEYS[1], 'dropped')
redis.call('SADD', KEYS[4], ARGV[2])
if previous and previous ~= ARGV[1] then
  redis.call('SREM', ARGV[7] .. 'on:' .. previous, ARGV[2])
  redis.call('PUBLISH', ARGV[3] .. previous, ARGV[4])
end
return {dropped, now}
"""

# KEYS: s, away, seq, on:me. ARGV: me, session key, ttl ms, this node's channel, a fence.
# Returns the number up to which this node was the one packets were routed to, and publishes
# the fence on this node's channel: it reaches the node after every broadcast numbered so far.
RELEASE = """
redis.call('SREM', KEYS[4], ARGV[2])
local node = redis.call('HGET', KEYS[1], 'node')
local upto
if node == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'node')
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  upto = tonumber(redis.call('GET', KEYS[3]) or '0')
elseif node then
  upto = tonumber(redis.call('HGET', KEYS[1], 'since') or '0')  -- another node took it
else
  upto = tonumber(redis.call('GET', KEYS[3]) or '0')
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return upto
"""

# KEYS: b. ARGV: after ('' to acknowledge nothing), consume all (1/0).
# Returns the entries still to hand over (see Connection.take).
TAKE = """
local entries = redis.call('ZRANGE', KEYS[1], 0, -1)
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1])
  return entries
end
for i, e in ipairs(entries) do
  local colon = string.find(e, ':', 1, true)
  local n = tonumber(string.sub(e, 1, colon - 1))
  if string.sub(e, colon + 1, colon + n) == ARGV[1] then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, i - 1)
    local rest = {}
    for j = i + 1, #entries do rest[#rest + 1] = entries[j] end
    return rest
  end
end
return entries
"""

# KEYS: s, b. ARGV: me. Mark this node as the one long-polling; returns what is buffered.
POLL = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'poll', ARGV[1]) end
return redis.call('ZCARD', KEYS[2])
"""

# KEYS: s. ARGV: me.
UNPOLL = """
if redis.call('HGET', KEYS[1], 'poll') == ARGV[1] then redis.call('HDEL', KEYS[1], 'poll') end
"""

# KEYS: away. ARGV: session key prefix. Drops a sample of members whose session expired.
PRUNE = """
for _, key in ipairs(redis.call('SRANDMEMBER', KEYS[1], 200)) do
  if redis.call('EXISTS', ARGV[1] .. key) == 0 then redis.call('SREM', KEYS[1], key) end
end
"""

# KEYS: nodes, away. ARGV: key prefix.
ADOPT_DEAD = (
    ADOPT
    + """
adopt(KEYS[1], KEYS[2], ARGV[1])
"""
)

# KEYS: c. ARGV: running marker, ttl ms. The entry if there is one, else claims it.
RUN_ONCE = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""


class Scripts:
    """The scripts, registered on one Redis client (each call runs ``EVALSHA``).

    Args:
        redis: the client they run on.
    """

    def __init__(self, redis: Redis) -> None:
        self.run_once = redis.register_script(RUN_ONCE)
        self.route = redis.register_script(ROUTE)
        self.broadcast = redis.register_script(BROADCAST)
        self.claim = redis.register_script(CLAIM)
        self.release = redis.register_script(RELEASE)
        self.take = redis.register_script(TAKE)
        self.poll = redis.register_script(POLL)
        self.unpoll = redis.register_script(UNPOLL)
        self.prune = redis.register_script(PRUNE)
        self.adopt_dead = redis.register_script(ADOPT_DEAD)
