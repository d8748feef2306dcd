"""RedisBackplane: several server processes serve as one, coordinated through one Redis.

Give every process (node) a ``RedisBackplane`` on the same Redis URL and prefix, put them
behind a load balancer, and a client may reach any of them (see `siyi_sdk.server.backplane`).

What lives in Redis (every key under ``<prefix>:``; every key expires):

========================  ==================================================================
``s:<session>``           hash: the session (principal, attached node, dropped, poller)
``b:<session>``           list: its replay buffer, oldest first (same life as the session)
``away``                  set: sessions that take packets and have no WebSocket attached
``c:<identity><id>``      the at-most-once entry of a request: running on a node, or its
                          encoded Response (``response_cache_ttl``)
``r:<request id>``        the node waiting for the answer to a request it sent
``n:<node>``              a node's liveness (refreshed every ``node_ttl / 3`` seconds)
``seq``                   the broadcast counter (one integer)
========================  ==================================================================

Nodes talk over two pub/sub channels each: ``<prefix>:all`` (broadcasts, session ends) and
``<prefix>:node:<node>`` (a packet for a client attached there, an answer for a request sent
from there, a takeover, a wake-up for a long poll). A message is one letter, a JSON header
line and, for packets, the encoded packet as it goes on the wire: encoded once, never
re-encoded on the way.

Every change that must not race (route a packet or buffer it, attach, detach, buffer a
broadcast for every session that is away) is one Lua script, so Redis runs it atomically.
A broadcast is numbered; a node that attaches a session learns the number it attached at,
and delivers only broadcasts numbered after it: the ones before are in the session's buffer.
So a client that moves between nodes gets each broadcast exactly once, in order.

When Redis is down the server keeps serving its own clients (requests, local broadcasts,
its sessions' own state), logs the outage once, and reconnects with backoff (tenacity);
what must cross processes meanwhile raises `BackplaneUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from tenacity import RetryCallState

from ..errors import (
    BackplaneUnavailableError,
    ConnectionClosedError,
    NotConnectedError,
    RequestTimeoutError,
    SiyiError,
)
from ..outcome import encode_response
from ..packets import TAKEN_OVER, Response, StatusCode, kept, new_id, parse_message
from ..peer import Peer
from ..retry import backoff
from .backplane import Backplane
from .connection import Connection
from .owners import owner_key
from .state import CacheKey, MemoryResponseCache, ResponseCache

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline, PubSub

__all__ = ["RedisBackplane", "RedisResponseCache", "SharedConnection"]

logger = logging.getLogger(__name__)

# --- Lua: each runs atomically in Redis -------------------------------------------------------

# Buffer one entry for a session: bounded (oldest dropped and counted), same life as the
# session, and a wake-up for the node long-polling it. Shared by ROUTE and BROADCAST.
# The buffer is a sorted set scored by the packet's number (`seq`), so a packet a node buffers
# late (it was on its way to a client that just left) still takes its place in order.
_PUSH = """
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
_ADOPT = """
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
_ROUTE = (
    _PUSH
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
_BROADCAST = (
    _PUSH
    + _ADOPT
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
_CLAIM = """
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

# KEYS: s, away, seq, on:me. ARGV: me, session key, ttl ms.
# Returns the number up to which this node was the one packets were routed to.
_RELEASE = """
redis.call('SREM', KEYS[4], ARGV[2])
local node = redis.call('HGET', KEYS[1], 'node')
if node == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'node')
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
elseif node then
  return tonumber(redis.call('HGET', KEYS[1], 'since') or '0')  -- another node took it
end
return tonumber(redis.call('GET', KEYS[3]) or '0')
"""

# KEYS: b. ARGV: after ('' to acknowledge nothing), consume all (1/0).
# Returns the entries still to hand over (see Connection.take).
_TAKE = """
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
_POLL = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'poll', ARGV[1]) end
return redis.call('ZCARD', KEYS[2])
"""

# KEYS: s. ARGV: me.
_UNPOLL = """
if redis.call('HGET', KEYS[1], 'poll') == ARGV[1] then redis.call('HDEL', KEYS[1], 'poll') end
"""

# KEYS: away. ARGV: session key prefix. Drops a sample of members whose session expired.
_PRUNE = """
for _, key in ipairs(redis.call('SRANDMEMBER', KEYS[1], 200)) do
  if redis.call('EXISTS', ARGV[1] .. key) == 0 then redis.call('SREM', KEYS[1], key) end
end
"""

# KEYS: nodes, away. ARGV: key prefix.
_ADOPT_DEAD = (
    _ADOPT
    + """
adopt(KEYS[1], KEYS[2], ARGV[1])
"""
)

# KEYS: c. ARGV: running marker, ttl ms. The entry if there is one, else claims it.
_RUN_ONCE = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""


Numbered = tuple[int | None, str, bytes]
"""(the packet's number in Redis's order if it has one, its id, its encoded frame)"""


def _entry(packet_id: str, frame: bytes) -> bytes:
    """A buffered packet: ``<len(id)>:<id><frame>``, so the id is found without parsing."""
    pid = packet_id.encode()
    return b"%d:%s%s" % (len(pid), pid, frame)


def _split(entry: bytes) -> tuple[str, bytes]:
    colon = entry.index(b":")
    end = colon + 1 + int(entry[:colon])
    return entry[colon + 1 : end].decode(), entry[end:]


def _message(op: bytes, header: dict[str, Any], payload: bytes = b"") -> bytes:
    return op + orjson.dumps(header) + b"\n" + payload


def _principal_json(principal: Any) -> bytes:
    # The principal crosses nodes as its owner key (JSON), so ownership compares alike on all.
    return owner_key(principal)


_REMOTE_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (RequestTimeoutError, ConnectionClosedError, NotConnectedError, SiyiError)
}


class SharedConnection(Connection):
    """A session handle whose buffer lives in Redis and whose peer may be on another node.

    What it does differently from `Connection`: a packet for a peer that has no WebSocket in
    this process is routed by the backplane (to the node holding it, else into the shared
    buffer); polls and replays read the shared buffer.
    """

    def __init__(self, *, backplane: RedisBackplane, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._backplane = backplane
        # Packets carry their number in Redis's order (`seq`) when they have one, so that
        # a packet buffered late still takes its place in the shared buffer.
        # Packets for a peer that is being replayed to: they follow the shared buffer.
        self._late: deque[Numbered] = deque()
        # Broadcasts are numbered (see the module docstring). From the moment this process
        # asks Redis to route the session here until Redis confirms it no longer does, this
        # process delivers (or buffers) the broadcasts numbered after `claim_seq`; the others
        # went to the shared buffer. Packets whose fate depends on an answer still on its way
        # from Redis wait in `_held`, with their kind: b(roadcast) or d(irect).
        self.here = False
        self.claim_seq: int | None = None
        self._releasing = False
        self._held: list[tuple[str, int | None, str, bytes]] = []
        self._claim_done: asyncio.Event | None = None
        self._refreshed = 0.0

    @property
    def buffered(self) -> int:
        """Packets held in this process for the peer (the shared buffer is in Redis)."""
        return len(self._late)

    async def deliver(self, packet_id: str, frame: bytes, seq: int | None = None) -> None:
        """See `Connection.deliver`; `seq` is the packet's number when Redis gave it one."""
        peer = self.peer
        if self.ended or (peer is not None and not peer.closed and not self._replaying):
            await super().deliver(packet_id, frame)
        else:
            await self.keep(seq, packet_id, frame)

    async def _keep(self, packet_id: str, frame: bytes) -> None:
        await self.keep(None, packet_id, frame)

    async def keep(self, seq: int | None, packet_id: str, frame: bytes) -> None:
        """A packet the peer cannot take now: after the replay, held, or routed."""
        peer = self.peer
        if peer is not None and not peer.closed:
            self._late.append((seq, packet_id, frame))  # being replayed to: after the buffer
            if self._arrived is not None:
                self._arrived.set()
            return
        if self.here:
            # Its WebSocket here just closed: Redis routes to this process until `release`
            # says otherwise, which then buffers this in order with the broadcasts held.
            self._held.append(("d", seq, packet_id, frame))
            return
        await self._backplane.route(self, packet_id, frame, seq)

    async def _expect_answer(self, request_id: str, timeout: float | None) -> None:
        await self._backplane.expect_answer(self, request_id, timeout)

    def on_broadcast(self, seq: int, packet_id: str, frame: bytes) -> bool:
        """Whether a numbered broadcast is this process's to deliver now (else held or not)."""
        if not self.here:
            return False
        if self.claim_seq is None or self._releasing:
            self._held.append(("b", seq, packet_id, frame))
            return False
        return seq > self.claim_seq

    def claiming(self) -> None:
        """Redis is being asked to route the session to this process."""
        self.here = True
        self.claim_seq = None
        self._held.clear()
        self._claim_done = asyncio.Event()

    def claimed(self, seq: int) -> None:
        """The attach is recorded in Redis at broadcast number `seq`."""
        self.claim_seq = seq
        held, self._held = self._held, []
        self._late.extend(
            (n, pid, frame) for kind, n, pid, frame in held if kind == "d" or (n or 0) > seq
        )
        if self._claim_done is not None:
            self._claim_done.set()

    async def releasing(self, timeout: float) -> None:
        """Redis is about to be told the peer left this process (after any claim finished)."""
        if self._claim_done is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._claim_done.wait()
        self._releasing = True

    def released(self, seq: int) -> list[Numbered]:
        """Redis routed here up to number `seq`: what this process must still buffer."""
        claimed = self.claim_seq if self.claim_seq is not None else seq
        held, self._held = self._held, []
        self.here = False
        self._releasing = False
        late = list(self._late)
        self._late.clear()
        return late + [
            (n, pid, frame)
            for kind, n, pid, frame in held
            if kind == "d" or claimed < (n or 0) <= seq
        ]

    async def take(self, after: str | None) -> list[bytes]:
        """See `Connection.take` (the shared buffer, atomically)."""
        return await self._backplane.take(self, after)

    async def wait_for_packets(self, timeout: float) -> None:
        """See `Connection.wait_for_packets` (woken by whichever node buffers a packet)."""
        arrived = self._arrived
        if arrived is None:
            arrived = self._arrived = asyncio.Event()
        else:
            arrived.clear()
        try:
            if await self._backplane.start_poll(self):
                return
        except BackplaneUnavailableError:
            pass  # only this node can wake it now
        try:
            async with asyncio.timeout(timeout):
                await arrived.wait()
        except TimeoutError:
            pass
        finally:
            await self._backplane.end_poll(self)

    async def replay(self, peer: Peer) -> bool:
        """See `Connection.replay`: the shared buffer first, then what came meanwhile."""
        while True:
            if self.peer is not peer:
                return False
            entries = await self._backplane.pop(self, 100)
            if not entries:
                break
            for i, (_, _, frame) in enumerate(entries):
                try:
                    await peer.send_raw(frame)
                except (NotConnectedError, ConnectionClosedError):
                    await self._backplane.push_back(self, entries[i:])
                    return False
        late = self._late
        while late:
            if self.peer is not peer:
                return False
            numbered = late.popleft()
            try:
                await peer.send_raw(numbered[2])
            except (NotConnectedError, ConnectionClosedError):
                late.appendleft(numbered)
                return False
        if self.peer is not peer:
            return False
        self._replaying = False
        return True

    def end(self) -> None:
        """See `Connection.end`: this process's handle only.

        `RedisBackplane.end_session` forgets the shared state.
        """
        self._late.clear()
        self._held.clear()
        super().end()


class RedisResponseCache(ResponseCache):
    """At most once across nodes (PROTOCOL.md §6): each request id runs on one node only.

    Repeats in this process wait on the local entry (no Redis round trip); a repeat reaching
    another node finds the entry in Redis: the Response when the first run finished, or a
    "running on node X" marker, and then waits for it. If node X dies before it answers, the
    repeat gets 503: the request may or may not have run, and running it again could run it
    twice. While Redis is down, at most once holds within each node.
    """

    def __init__(self, backplane: RedisBackplane, ttl: float) -> None:
        self._backplane = backplane
        self.ttl = ttl
        self._local = MemoryResponseCache(ttl=ttl)

    def __len__(self) -> int:
        return len(self._local)

    async def run_once(self, key: CacheKey, compute: Callable[[], Awaitable[Response]]) -> Response:
        """See `ResponseCache.run_once`."""
        return await self._local.run_once(key, partial(self._shared, key, compute))

    async def _shared(self, key: CacheKey, compute: Callable[[], Awaitable[Response]]) -> Response:
        bp = self._backplane
        identity, request_id = key
        ckey = bp.key(f"c:{identity or ''}\x1f{request_id}")
        ttl_ms = max(1, int(self.ttl * 1000))
        found = await bp.call(bp.script_run_once, [ckey], [b"R" + bp.node_id.encode(), ttl_ms])
        if found is bp.UNREACHABLE:
            return await compute()  # Redis is down: at most once within this node
        if found is None:
            response = await compute()
            await bp.call(bp.redis.set, ckey, b"D" + kept(encode_response(response)), px=ttl_ms)
            return response
        return await self._wait(ckey, found, request_id)

    async def _wait(self, ckey: str, value: bytes, request_id: str) -> Response:
        bp = self._backplane
        delay = 0.005
        while True:
            if value[:1] == b"D":
                answer = parse_message(value[1:])
                assert isinstance(answer, Response)
                return answer
            node = value[1:].decode()
            if not await bp.node_alive(node):
                return Response.fail(
                    request_id,
                    f"unavailable: node {node} was running this request and stopped before "
                    "answering; it may or may not have run",
                    StatusCode.UNAVAILABLE,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
            got = await bp.call(bp.redis.get, ckey)
            if got is bp.UNREACHABLE or got is None:
                return Response.fail(
                    request_id,
                    "unavailable: this request is running on another node, which cannot be "
                    "reached now; try again later",
                    StatusCode.UNAVAILABLE,
                )
            value = got


class RedisBackplane(Backplane):
    """Share sessions, buffers, the response cache and broadcasts through one Redis.

    Example::

        server = ProtocolServer(port=8765, backplane=RedisBackplane("redis://10.0.0.5:6379/0"))

    Every node of one deployment uses the same `url` and `prefix`; different prefixes keep
    deployments on one Redis apart. Needs the ``redis`` extra (``pip install siyi-sdk[redis]``)
    and a standalone Redis 6.2 or newer (the scripts touch keys of many sessions, which Redis
    Cluster would not allow).

    Args:
        url: the Redis URL (``redis://``, ``rediss://``, ``unix://``).
        prefix: the namespace of every key and channel.
        node_ttl: seconds after which a node that stopped refreshing its liveness counts as
            dead (a repeat of a request it was running then gets 503 instead of waiting).
        op_timeout: seconds a Redis call may take before it counts as Redis being down.
        retry_initial: the first reconnect delay in seconds (doubled up to `retry_max`).
        retry_max: the longest reconnect delay.
        sleep: the sleep between reconnect attempts (tests inject one).
        client: an existing ``redis.asyncio.Redis`` to use instead of one made from `url`.
        max_connections: Redis connections this node opens at most (calls beyond wait for
            one, up to `op_timeout`).
    """

    shared = True
    UNREACHABLE: Any = object()
    """What `call` returns when Redis could not be reached."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "siyi",
        node_ttl: float = 3.0,
        op_timeout: float = 2.0,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        client: Redis | None = None,
        max_connections: int = 50,
    ) -> None:
        try:
            import redis.asyncio
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "RedisBackplane needs the redis package: pip install 'siyi-sdk[redis]'"
            ) from exc
        self.url = url
        self.prefix = prefix
        self.node_id = secrets.token_hex(6)
        self.node_ttl = node_ttl
        self.op_timeout = op_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.sleep = sleep
        if client is None:
            # A blocking pool: a burst of work (a thousand clients dropping at once) waits
            # for a free connection instead of failing as if Redis were down.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=op_timeout,
                socket_timeout=op_timeout,
                socket_connect_timeout=op_timeout,
            )
            client = redis.asyncio.Redis(connection_pool=pool)
        self.redis: Redis = client
        self._redis_errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            OSError,
        )
        self.connected = False
        """True while this node is subscribed and Redis answers."""
        self._ready = asyncio.Event()
        self._all = self.key("all").encode()
        self._mine = self.channel(self.node_id).encode()
        self._chan_prefix = self.key("node:")
        self.script_run_once = self.redis.register_script(_RUN_ONCE)
        self._route = self.redis.register_script(_ROUTE)
        self._broadcast = self.redis.register_script(_BROADCAST)
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        self._take = self.redis.register_script(_TAKE)
        self._poll = self.redis.register_script(_POLL)
        self._unpoll = self.redis.register_script(_UNPOLL)
        self._prune = self.redis.register_script(_PRUNE)
        self._adopt_dead = self.redis.register_script(_ADOPT_DEAD)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._asking: dict[str, Connection] = {}
        self._gathers: dict[str, _Gather] = {}
        self._stopped = False

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<RedisBackplane {self.prefix!r} node {self.node_id} {state}>"

    # Names ------------------------------------------------------------------------------------

    def key(self, name: str) -> str:
        """The Redis key `name` under this backplane's prefix."""
        return f"{self.prefix}:{name}"

    def channel(self, node: str) -> str:
        """The pub/sub channel of one node."""
        return self.key(f"node:{node}")

    def _skey(self, session: str) -> str:
        return f"{self.prefix}:s:{session}"

    def _bkey(self, session: str) -> str:
        return f"{self.prefix}:b:{session}"

    @property
    def _ttl_ms(self) -> int:
        assert self._host is not None
        return max(1, int(self._host.sessions.ttl * 1000))

    # Calls ------------------------------------------------------------------------------------

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """Run one Redis call; `UNREACHABLE` (logged) when Redis is down.

        Does not even try while the node knows Redis is down: local traffic must not wait
        for connect timeouts. The listener notices the outage and its end.
        """
        if not self.connected:
            return self.UNREACHABLE
        try:
            return await fn(*args, **kwargs)
        except self._redis_errors as exc:
            self._lost(exc)
            return self.UNREACHABLE

    async def must(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """Like `call`, for what cannot be done without Redis.

        Raises:
            BackplaneUnavailableError: Redis is down.
        """
        result = await self.call(fn, *args, **kwargs)
        if result is self.UNREACHABLE:
            raise BackplaneUnavailableError(
                f"the Redis backplane at {self.url} is unreachable: "
                "clients attached to other nodes cannot be reached now"
            )
        return result

    def _down(self, exc: BaseException) -> None:
        # Logged once per outage; the listener's retries log each attempt.
        if self.connected:
            logger.error(
                "Redis backplane at %s lost: %s; serving local clients only", self.url, exc
            )
        self.connected = False
        self._ready.clear()

    def _lost(self, exc: BaseException) -> None:
        self._down(exc)
        listener = self._listener
        if listener is not None and listener is not asyncio.current_task() and not self._stopped:
            # Its subscription may look fine while calls fail: start over, with backoff.
            listener.cancel()
            self._listener = self._spawn(self._listen_forever())

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def node_alive(self, node: str) -> bool:
        """True while `node` refreshes its liveness (False also when Redis is down)."""
        if node == self.node_id:
            return True
        return bool(await self.call(self.redis.exists, self.key(f"n:{node}")) == 1)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until this node is connected to Redis and subscribed.

        Raises:
            TimeoutError: not within `timeout` seconds.
        """
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    # Lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe; if Redis is down, log and keep retrying in the background."""
        self._stopped = False
        self._listener = self._spawn(self._listen_forever())
        self._keeper = self._spawn(self._keep_alive())
        # The first attempt is bounded: a server starts serving its own clients either way.
        with contextlib.suppress(TimeoutError):
            await self.wait_ready(self.op_timeout)

    async def stop(self) -> None:
        """Unsubscribe, drop this node's liveness, close the Redis connections. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.connected:
            with contextlib.suppress(*self._redis_errors):
                await self.redis.delete(self.key(f"n:{self.node_id}"))
                await self.redis.srem(self.key("nodes"), self.node_id)
        self.connected = False
        self._ready.clear()
        with contextlib.suppress(*self._redis_errors):
            await self.redis.aclose()

    async def _listen_forever(self) -> None:
        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            logger.warning(
                "Redis backplane at %s unreachable (%s); retrying in %.1f s", self.url, exc, delay
            )

        retrying = backoff(
            self.retry_initial, self.retry_max, self.sleep, self._redis_errors, log_retry
        )
        async for attempt in retrying:
            with attempt:
                await self._listen_once()

    async def _listen_once(self) -> None:
        pubsub: PubSub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self._all, self._mine)
            await self.redis.set(self.key(f"n:{self.node_id}"), b"1", px=int(self.node_ttl * 1000))
            await self.redis.sadd(self.key("nodes"), self.node_id)
            self.connected = True
            self._ready.set()
            logger.info("Redis backplane at %s: node %s joined", self.url, self.node_id)
            await self._reclaim()
            while self.connected:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None and message["type"] == "message":
                    await self._on_message(message["data"])
            raise self._redis_errors[0]("a call to Redis failed")
        except self._redis_errors as exc:
            self._down(exc)
            raise
        finally:
            with contextlib.suppress(BaseException):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _keep_alive(self) -> None:
        # The node's liveness, and the life of the sessions attached here (a session with a
        # WebSocket never expires, even if nothing else touches it).
        interval = self.node_ttl / 3
        while True:
            await asyncio.sleep(interval)
            if not self.connected or self._host is None:
                continue
            try:
                # Members of `away` whose session expired go (a broadcast prunes them too).
                await self._prune(keys=[self.key("away")], args=[self.prefix + ":s:"])
                await self._adopt_dead(
                    keys=[self.key("nodes"), self.key("away")], args=[self.prefix + ":"]
                )
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.set(self.key(f"n:{self.node_id}"), b"1", px=int(self.node_ttl * 1000))
                    for session in self._host.sessions:
                        if session.is_connected or session.polls:
                            self._refresh(pipe, session, every=3)
                    await pipe.execute()
            except self._redis_errors as exc:
                self._lost(exc)

    async def _reclaim(self) -> None:
        # After an outage: the sessions attached here are this node's again, and what was
        # buffered for them meanwhile goes down their sockets.
        if self._host is None:
            return
        for session in self._host.sessions:
            if not isinstance(session, SharedConnection):
                continue
            if session.is_connected:
                self._spawn(self._reattach(session))
            elif session.receives and not session.ended:
                self._spawn(self.release(session))  # its detach may not have reached Redis

    async def _reattach(self, session: SharedConnection) -> None:
        peer = session.peer
        if peer is None:
            return
        session.attach(peer)  # the same socket: nothing is closed, packets wait meanwhile
        await self.claim(session)
        await session.replay(peer)

    # Sessions ---------------------------------------------------------------------------------

    def response_cache(self, ttl: float) -> ResponseCache:
        """See `Backplane.response_cache`."""
        return RedisResponseCache(self, ttl)

    def session_factory(self) -> Callable[..., Connection]:
        """See `Backplane.session_factory`."""
        return partial(SharedConnection, backplane=self)

    async def save_session(self, connection: Connection) -> None:
        """See `Backplane.save_session`."""
        skey = self._skey(connection.session)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(skey, "principal", _principal_json(connection.principal))
            if connection.provisional:
                # A provisional session (§7) takes broadcasts at once, for a short while:
                # Redis forgets it on its own unless its key comes back (saved again then).
                assert self._host is not None
                pipe.hset(skey, "receives", "1")
                pipe.sadd(self.key("away"), connection.session)
                provisional_ms = int(self._host.sessions.provisional_ttl * 1000)
                pipe.pexpire(skey, min(provisional_ms, self._ttl_ms))
            else:
                pipe.pexpire(skey, self._ttl_ms)
            await self.call(pipe.execute)

    async def touch_session(self, connection: Connection) -> None:
        """See `Backplane.touch_session` (at most a few times per TTL per session)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            if not self._refresh(pipe, connection, every=10):
                return
            if connection.receives and not connection.is_connected:
                pipe.hset(self._skey(connection.session), "receives", "1")
                pipe.sadd(self.key("away"), connection.session)
            await self.call(pipe.execute)

    def _refresh(self, pipe: Pipeline, connection: Connection, every: int) -> bool:
        """Queue a restart of the session's clock in Redis, at most `every` times per TTL.

        Returns:
            False if it was restarted too recently (nothing queued).
        """
        assert isinstance(connection, SharedConnection)
        now = time.monotonic()
        ttl = self._ttl_ms
        if (now - connection._refreshed) * 1000 < ttl / every:
            return False
        connection._refreshed = now
        pipe.pexpire(self._skey(connection.session), ttl)
        pipe.pexpire(self._bkey(connection.session), ttl)
        return True

    async def claim(self, connection: Connection) -> int:
        """See `Backplane.claim`."""
        assert isinstance(connection, SharedConnection)
        connection.claiming()
        got = await self.call(
            self._claim,
            [
                self._skey(connection.session),
                self.key("away"),
                self.key("seq"),
                self.key(f"on:{self.node_id}"),
            ],
            [
                self.node_id,
                connection.session,
                self._chan_prefix,
                _message(b"T", {"k": connection.session}),
                self._ttl_ms,
                _principal_json(connection.principal),
                self.prefix + ":",
            ],
        )
        if got is self.UNREACHABLE:
            connection.claimed(2**62)  # no broadcast reaches it until Redis is back
            return 0
        dropped, seq = int(got[0]), int(got[1])
        connection.claimed(seq)
        return dropped

    async def release(self, connection: Connection) -> None:
        """See `Backplane.release`."""
        assert isinstance(connection, SharedConnection)
        key = connection.session
        await connection.releasing(self.op_timeout)
        got = await self.call(
            self._release,
            [self._skey(key), self.key("away"), self.key("seq"), self.key(f"on:{self.node_id}")],
            [self.node_id, key, self._ttl_ms],
        )
        seq = 0 if got is self.UNREACHABLE else int(got)
        # What came for it while it was leaving (a replay that did not finish, broadcasts
        # this process still had to deliver) waits in the shared buffer, in order.
        for number, packet_id, frame in connection.released(seq):
            if connection.ended:
                break
            with contextlib.suppress(BackplaneUnavailableError, NotConnectedError):
                await self.route(connection, packet_id, frame, number)

    async def end_session(self, connection: Connection) -> None:
        """See `Backplane.end_session`."""
        key = connection.session
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._skey(key), self._bkey(key))
            pipe.srem(self.key("away"), key)
            pipe.publish(self._all, _message(b"E", {"k": key, "o": self.node_id}))
            await self.call(pipe.execute)

    async def retire(self, connection: Connection) -> bool:
        """See `Backplane.retire`."""
        got = await self.call(self.redis.exists, self._skey(connection.session))
        return got is self.UNREACHABLE or bool(got)

    async def find_session(self, key: str) -> Connection | None:
        """See `Backplane.find_session`."""
        assert self._host is not None
        found = self._host.sessions.get(key)
        if found is not None:
            return found
        # Opened on another node (or here, before this process retired its handle).
        got = await self.call(self.redis.hmget, self._skey(key), ["principal", "receives"])
        if got is self.UNREACHABLE or got[0] is None:
            return None
        found = self._handle(key, orjson.loads(got[0]))  # another call may have made it
        found.receives = found.receives or bool(got[1])
        return found

    def _handle(self, key: str, principal: Any) -> Connection:
        assert self._host is not None
        sessions = self._host.sessions
        return sessions.get(key) or sessions.add(key, principal, None, {})

    # Buffers ----------------------------------------------------------------------------------

    async def route(
        self, connection: Connection, packet_id: str, frame: bytes, seq: int | None = None
    ) -> None:
        """Send a packet to the node holding the session's WebSocket, else buffer it.

        Raises:
            NotConnectedError: the session has ended.
            BackplaneUnavailableError: Redis is down.
        """
        key = connection.session
        sent = await self.must(
            self._route,
            [self._skey(key), self._bkey(key), self.key("seq")],
            [
                self.node_id,
                _entry(packet_id, frame),
                connection._buffer_size,
                self._chan_prefix,
                orjson.dumps({"k": key, "id": packet_id})[1:] + b"\n" + frame,
                key,
                "" if seq is None else seq,
            ],
        )
        if sent == -1:
            raise NotConnectedError(f"{connection!r}: the session has ended")

    async def take(self, connection: Connection, after: str | None) -> list[bytes]:
        """What a poll of ``/events`` returns, from the shared buffer (see `Connection.take`)."""
        got = await self.must(
            self._take,
            [self._bkey(connection.session)],
            ["" if after is None else after, "1" if after is None else "0"],
        )
        return [_split(entry)[1] for entry in got]

    async def pop(self, connection: Connection, count: int) -> list[Numbered]:
        """Take up to `count` packets off the front of the shared buffer (for a replay)."""
        got = await self.call(self.redis.zpopmin, self._bkey(connection.session), count)
        if got is self.UNREACHABLE or not got:
            return []
        return [(int(score), *_split(entry)) for entry, score in got]

    async def push_back(self, connection: Connection, entries: list[Numbered]) -> None:
        """Return packets a replay could not send to the shared buffer, in their places."""
        if entries:
            await self.call(
                self.redis.zadd,
                self._bkey(connection.session),
                {_entry(pid, frame): seq or 0 for seq, pid, frame in entries},
            )

    async def start_poll(self, connection: Connection) -> bool:
        """This node long-polls the session now; True if packets are already waiting."""
        key = connection.session
        got = await self.must(self._poll, [self._skey(key), self._bkey(key)], [self.node_id])
        return bool(got)

    async def end_poll(self, connection: Connection) -> None:
        """This node's long poll of the session is over."""
        await self.call(self._unpoll, [self._skey(connection.session)], [self.node_id])

    # Requests to clients ----------------------------------------------------------------------

    async def expect_answer(
        self, connection: Connection, request_id: str, timeout: float | None
    ) -> None:
        """Note that this node waits for the answer to `request_id` (routed or buffered)."""
        life = (timeout if timeout is not None else 3600.0) + 5.0
        await self.must(
            self.redis.set, self.key(f"r:{request_id}"), self.node_id.encode(), px=int(life * 1000)
        )
        self._asking[request_id] = connection
        asyncio.get_running_loop().call_later(life, self._asking.pop, request_id, None)

    def forward_response(self, connection: Connection, response: Response) -> bool:
        """See `Backplane.forward_response`."""
        if response.id is None or not self.connected:
            return False
        self._spawn(self._forward(connection.session, response))
        return True

    async def _forward(self, key: str, response: Response) -> None:
        assert response.id is not None
        node = await self.call(self.redis.get, self.key(f"r:{response.id}"))
        if node is self.UNREACHABLE or node is None or node.decode() == self.node_id:
            logger.debug("dropping a response that matches nothing: %r", response.id)
            return
        message = _message(b"R", {"k": key}, encode_response(response))
        await self.call(self.redis.publish, self.channel(node.decode()), message)

    # Fan-out ----------------------------------------------------------------------------------

    async def broadcast_event(self, packet_id: str, frame: bytes, exclude: Iterable[str]) -> None:
        """See `Backplane.broadcast_event`.

        One script buffers the event for every session that is away and tells every node;
        each node (this one included) delivers it to its attached clients. While Redis is
        down, this node's clients still get it.
        """
        skip = list(exclude)
        tail = orjson.dumps({"id": packet_id, "x": skip})[1:] + b"\n" + frame
        sent = await self.call(
            self._broadcast,
            [self.key("away"), self.key("seq"), self.key("nodes")],
            [
                self._all,
                tail,
                _entry(packet_id, frame),
                self._host.sessions.buffer_size if self._host else 1000,
                self.prefix + ":",
                self._chan_prefix,
                *skip,
            ],
        )
        if sent is self.UNREACHABLE:
            logger.warning("broadcast reached this node's clients only: Redis is down")
            await super().broadcast_event(packet_id, frame, skip)

    async def broadcast_request(
        self,
        command: str,
        params: dict[str, Any] | None,
        timeout: float | None,
        exclude: Iterable[str],
    ) -> dict[Connection, Response | Exception]:
        """See `Backplane.broadcast_request`.

        This node asks its attached clients; every other node asks its own and sends the
        answers back; sessions that are away get the request in their buffer and answer on
        their return (within `timeout`). Nodes that do not answer within `timeout` (they
        died) are missing from the result.
        """
        assert self._host is not None
        skip = list(exclude)
        if not self.connected:
            logger.warning("broadcast request reached this node's clients only: Redis is down")
            return await super().broadcast_request(command, params, timeout, skip)
        corr = new_id()
        gather = self._gathers[corr] = _Gather()
        try:
            header = {
                "c": corr,
                "o": self.node_id,
                "cmd": command,
                "p": params,
                "t": timeout,
                "x": skip,
            }
            nodes = await self.call(self.redis.publish, self._all, _message(b"Q", header))
            away = await self.call(self.redis.smembers, self.key("away"))
            gather.expect(0 if nodes is self.UNREACHABLE else max(0, int(nodes) - 1))
            targets = self._host.local_targets(skip)
            if away is not self.UNREACHABLE:
                skipped = set(skip)
                for raw in away:
                    key = raw.decode()
                    handle = await self.find_session(key) if key not in skipped else None
                    if handle is not None and not handle.is_connected:
                        targets.append(handle)
            mine = self._host.ask_all(targets, command, params, timeout)
            theirs = gather.wait((timeout if timeout is not None else 30.0) + 2.0)
            answers, remote = await asyncio.gather(mine, theirs)
        finally:
            del self._gathers[corr]
        result: dict[Connection, Response | Exception] = dict(zip(targets, answers, strict=True))
        for key, principal, answer in remote:
            handle = self._handle(key, principal)
            result.setdefault(handle, answer)
        return result

    async def _answer_broadcast_request(self, header: dict[str, Any]) -> None:
        assert self._host is not None
        targets = self._host.local_targets(header["x"])
        answers = await self._host.ask_all(targets, header["cmd"], header["p"], header["t"])
        rows: list[list[Any]] = []
        for target, answer in zip(targets, answers, strict=True):
            principal = orjson.loads(_principal_json(target.principal))
            if isinstance(answer, Response):
                rows.append([target.session, principal, "r", encode_response(answer).decode()])
            else:
                rows.append([target.session, principal, type(answer).__name__, str(answer)])
        message = _message(b"A", {"c": header["c"], "n": self.node_id}, orjson.dumps(rows))
        await self.call(self.redis.publish, self.channel(header["o"]), message)

    # Messages from other nodes ----------------------------------------------------------------

    async def _on_message(self, data: bytes) -> None:
        op = data[:1]
        newline = data.index(b"\n")
        header = orjson.loads(data[1:newline])
        payload = data[newline + 1 :]
        host = self._host
        if host is None:
            return
        try:
            if op == b"B":
                seq, packet_id = header["seq"], header["id"]
                skip = header["x"]
                frame = kept(payload)
                skipped = set(skip)
                for session in host.sessions:
                    if (
                        isinstance(session, SharedConnection)
                        and session.session not in skipped
                        and session.on_broadcast(seq, packet_id, frame)
                    ):
                        with contextlib.suppress(NotConnectedError, BackplaneUnavailableError):
                            await session.deliver(packet_id, frame, seq)
            elif op == b"D":
                await self._deliver_here(header["k"], header["id"], kept(payload), header["seq"])
            elif op == b"R":
                response = parse_message(payload)
                assert isinstance(response, Response)
                assert response.id is not None
                asking = self._asking.pop(response.id, None)
                if asking is None or not asking.resolve(response):
                    logger.debug("dropping a forwarded response: %r", response.id)
            elif op == b"W":
                if (polled := host.sessions.get(header["k"])) is not None:
                    polled.wake()
            elif op == b"T":
                taken = host.sessions.get(header["k"])
                if taken is not None and taken.peer is not None:
                    logger.info("%r: a WebSocket on another node takes the session over", taken)
                    self._spawn(taken.close(TAKEN_OVER, "session taken over by another connection"))
            elif op == b"E":
                ended = host.sessions.get(header["k"]) if header["o"] != self.node_id else None
                if ended is not None:
                    host.sessions.discard(ended)
                    ended.end()
            elif op == b"Q":
                if header["o"] != self.node_id:
                    self._spawn(self._answer_broadcast_request(header))
            elif op == b"A":
                gather = self._gathers.get(header["c"])
                if gather is not None:
                    gather.add(orjson.loads(payload))
            else:
                logger.warning("unknown backplane message %r", op)
        except self._redis_errors:
            raise
        except Exception:
            logger.exception("backplane message %r failed", op)

    async def _deliver_here(self, key: str, packet_id: str, frame: bytes, seq: int) -> None:
        assert self._host is not None
        session = self._host.sessions.get(key)
        if isinstance(session, SharedConnection) and (session.is_connected or session.here):
            with contextlib.suppress(NotConnectedError, BackplaneUnavailableError):
                await session.deliver(packet_id, frame, seq)
            return
        # Not here any more (it dropped, or moved): route it on, or buffer it.
        handle = session or self._handle(key, None)
        with contextlib.suppress(NotConnectedError, BackplaneUnavailableError):
            await self.route(handle, packet_id, frame, seq)


class _Gather:
    """The answers other nodes send back for one broadcast request."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, Any, Response | Exception]] = []
        self._expected: int | None = None  # answers may come before the count is known
        self._answered = 0
        self._done = asyncio.Event()

    def expect(self, nodes: int) -> None:
        self._expected = nodes
        if self._answered >= nodes:
            self._done.set()

    def add(self, rows: list[list[Any]]) -> None:
        for key, principal, kind, payload in rows:
            answer: Response | Exception
            if kind == "r":
                parsed = parse_message(payload)
                assert isinstance(parsed, Response)
                answer = parsed
            else:
                answer = _REMOTE_ERRORS.get(kind, SiyiError)(payload)
            self.rows.append((key, principal, answer))
        self._answered += 1
        if self._expected is not None and self._answered >= self._expected:
            self._done.set()

    async def wait(self, timeout: float) -> list[tuple[str, Any, Response | Exception]]:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._done.wait()
        return self.rows
