"""Sessions and their buffers in Redis: the part of `RedisBackplane` that keeps §7 across nodes.

A session is a hash (``s:<session>``: principal, attached node, dropped, poller) and a
buffer (``b:<session>``, a sorted set by packet number); ``away`` lists the sessions that
take packets and have no WebSocket attached. Attaching (`claim`), detaching (`release`) and
routing a packet (`route`) are atomic scripts. Every node keeps the sessions attached to it
alive, and adopts those of a node that died (they become away).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import orjson

from ...errors import BackplaneUnavailableError, NotConnectedError
from ..backplane import Backplane
from ..connection import Connection
from .connection import SharedConnection
from .messages import Numbered, entry, message, principal_json, split_entry
from .node import RedisNode

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

__all__ = ["RedisSessions"]


class RedisSessions(RedisNode, Backplane):
    """The sessions, buffers and liveness of a `RedisBackplane` (its base class)."""

    # Names ------------------------------------------------------------------------------------

    def _skey(self, session: str) -> str:
        return f"{self.prefix}:s:{session}"

    def _bkey(self, session: str) -> str:
        return f"{self.prefix}:b:{session}"

    @property
    def _ttl_ms(self) -> int:
        assert self._host is not None
        return max(1, int(self._host.sessions.ttl * 1000))

    # Lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """See `RedisNode.start`; the node also keeps its sessions alive from now on."""
        self.spawn(self._keep_alive())
        await super().start()

    async def _keep_alive(self) -> None:
        # The node's liveness, and the life of the sessions attached here (a session with a
        # WebSocket never expires, even if nothing else touches it).
        interval = self.node_ttl / 3
        while True:
            await asyncio.sleep(interval)
            if not self.connected or self._host is None:
                continue
            try:
                # Timed for the metrics (`round_trip`): one PING a keep-alive, nothing else.
                started = time.perf_counter()
                await self.redis.ping()
                self.round_trip = time.perf_counter() - started
                # Members of `away` whose session expired go (a broadcast prunes them too).
                await self.scripts.prune(keys=[self.key("away")], args=[self.prefix + ":s:"])
                await self.scripts.adopt_dead(
                    keys=[self.key("nodes"), self.key("away")], args=[self.prefix + ":"]
                )
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.set(self.key(f"n:{self.node_id}"), b"1", px=int(self.node_ttl * 1000))
                    for session in self._host.sessions:
                        if session.is_connected or session.polls:
                            self._refresh(pipe, session, every=3)
                    await pipe.execute()
            except self.redis_errors as exc:
                self.lost(exc)

    async def on_subscribed(self) -> None:
        """See `RedisNode.on_subscribed`."""
        # After an outage: the sessions attached here are this node's again, and what was
        # buffered for them meanwhile goes down their sockets.
        if self._host is None:
            return
        for session in self._host.sessions:
            if not isinstance(session, SharedConnection):
                continue
            if session.is_connected:
                self.spawn(self._reattach(session))
            elif session.receives and not session.ended:
                self.spawn(self.release(session))  # its detach may not have reached Redis

    async def _reattach(self, session: SharedConnection) -> None:
        peer = session.peer
        if peer is None:
            return
        session.attach(peer)  # the same socket: nothing is closed, packets wait meanwhile
        await self.claim(session)
        await session.replay(peer)

    # Sessions ---------------------------------------------------------------------------------

    async def save_session(self, connection: Connection) -> None:
        """See `Backplane.save_session`."""
        skey = self._skey(connection.session)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(skey, "principal", principal_json(connection.principal))
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
        if (now - connection.refreshed) * 1000 < ttl / every:
            return False
        connection.refreshed = now
        pipe.pexpire(self._skey(connection.session), ttl)
        pipe.pexpire(self._bkey(connection.session), ttl)
        return True

    async def claim(self, connection: Connection) -> int:
        """See `Backplane.claim`."""
        assert isinstance(connection, SharedConnection)
        connection.claiming()
        got = await self.call(
            self.scripts.claim,
            [
                self._skey(connection.session),
                self.key("away"),
                self.key("seq"),
                self.key(f"on:{self.node_id}"),
            ],
            [
                self.node_id,
                connection.session,
                self.channel_prefix,
                message(b"T", {"k": connection.session}),
                self._ttl_ms,
                principal_json(connection.principal),
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
        key, me = connection.session, self.node_id
        await connection.releasing(self.op_timeout)
        with self.fence() as fence:
            got = await self.call(
                self.scripts.release,
                [self._skey(key), self.key("away"), self.key("seq"), self.key(f"on:{me}")],
                [me, key, self._ttl_ms, self.channel(me), fence.message],
            )
            if got is not self.UNREACHABLE:
                # The broadcasts numbered up to the release were sent to this node, whose
                # subscription may not have read them yet: it must hold them like the others
                # (below, they go to the shared buffer). The fence comes after them.
                await fence.passed(self.op_timeout)
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
            pipe.publish(self.all_channel, message(b"E", {"k": key, "o": self.node_id}))
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
        found = self.handle(key, orjson.loads(got[0]))  # another call may have made it
        found.receives = found.receives or bool(got[1])
        return found

    def handle(self, key: str, principal: Any) -> Connection:
        """This process's handle of session `key` (made, with `principal`, if it has none)."""
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
            self.scripts.route,
            [self._skey(key), self._bkey(key), self.key("seq")],
            [
                self.node_id,
                entry(packet_id, frame),
                connection.buffer_limit,
                self.channel_prefix,
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
            self.scripts.take,
            [self._bkey(connection.session)],
            ["" if after is None else after, "1" if after is None else "0"],
        )
        return [split_entry(member)[1] for member in got]

    async def pop(self, connection: Connection, count: int) -> list[Numbered]:
        """Take up to `count` packets off the front of the shared buffer (for a replay)."""
        got = await self.call(self.redis.zpopmin, self._bkey(connection.session), count)
        if got is self.UNREACHABLE or not got:
            return []
        return [(int(score), *split_entry(member)) for member, score in got]

    async def push_back(self, connection: Connection, entries: list[Numbered]) -> None:
        """Return packets a replay could not send to the shared buffer, in their places."""
        if entries:
            await self.call(
                self.redis.zadd,
                self._bkey(connection.session),
                {entry(pid, frame): seq or 0 for seq, pid, frame in entries},
            )

    async def start_poll(self, connection: Connection) -> bool:
        """This node long-polls the session now; True if packets are already waiting."""
        key = connection.session
        got = await self.must(self.scripts.poll, [self._skey(key), self._bkey(key)], [self.node_id])
        return bool(got)

    async def end_poll(self, connection: Connection) -> None:
        """This node's long poll of the session is over."""
        await self.call(self.scripts.unpoll, [self._skey(connection.session)], [self.node_id])
