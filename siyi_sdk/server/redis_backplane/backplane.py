"""`RedisBackplane`: several server processes serve as one, coordinated through one Redis.

On top of the node's link (`RedisNode`) and the shared sessions (`RedisSessions`), this is
what crosses nodes at a node's request: requests to a client attached elsewhere (and their
answers), broadcasts of events and requests to every node, and the messages other nodes send
this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from ...errors import BackplaneUnavailableError, NotConnectedError
from ...logs import call_extra
from ...outcome import encode_response
from ...packets import TAKEN_OVER, Response, kept, new_id, parse_message
from ..connection import Connection
from ..state import ResponseCache
from .cache import RedisResponseCache
from .connection import SharedConnection
from .messages import Gather, entry, message, principal_json
from .sessions import RedisSessions

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisBackplane"]

logger = logging.getLogger(__name__)


class RedisBackplane(RedisSessions):
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
        super().__init__(
            url,
            prefix=prefix,
            node_ttl=node_ttl,
            op_timeout=op_timeout,
            retry_initial=retry_initial,
            retry_max=retry_max,
            sleep=sleep,
            client=client,
            max_connections=max_connections,
        )
        self._asking: dict[str, Connection] = {}
        self._gathers: dict[str, Gather] = {}

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<RedisBackplane {self.prefix!r} node {self.node_id} {state}>"

    # What the server builds with it ---------------------------------------------------------

    def response_cache(self, ttl: float) -> ResponseCache:
        """See `Backplane.response_cache`."""
        return RedisResponseCache(self, ttl)

    def session_factory(self) -> Callable[..., Connection]:
        """See `Backplane.session_factory`."""
        return partial(SharedConnection, backplane=self)

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
        self.spawn(self._forward(connection.session, response))
        return True

    async def _forward(self, key: str, response: Response) -> None:
        assert response.id is not None
        node = await self.call(self.redis.get, self.key(f"r:{response.id}"))
        if node is self.UNREACHABLE or node is None or node.decode() == self.node_id:
            logger.debug(
                "dropping a response that matches nothing: %r",
                response.id,
                extra=call_extra(request_id=response.id),
            )
            return
        answer = message(b"R", {"k": key}, encode_response(response))
        await self.call(self.redis.publish, self.channel(node.decode()), answer)

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
            self.scripts.broadcast,
            [self.key("away"), self.key("seq"), self.key("nodes")],
            [
                self.all_channel,
                tail,
                entry(packet_id, frame),
                self._host.sessions.buffer_size if self._host else 1000,
                self.prefix + ":",
                self.channel_prefix,
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
        gather = self._gathers[corr] = Gather()
        try:
            header = {
                "c": corr,
                "o": self.node_id,
                "cmd": command,
                "p": params,
                "t": timeout,
                "x": skip,
            }
            nodes = await self.call(self.redis.publish, self.all_channel, message(b"Q", header))
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
            handle = self.handle(key, principal)
            result.setdefault(handle, answer)
        return result

    async def _answer_broadcast_request(self, header: dict[str, Any]) -> None:
        assert self._host is not None
        targets = self._host.local_targets(header["x"])
        answers = await self._host.ask_all(targets, header["cmd"], header["p"], header["t"])
        rows: list[list[Any]] = []
        for target, answer in zip(targets, answers, strict=True):
            principal = orjson.loads(principal_json(target.principal))
            if isinstance(answer, Response):
                rows.append([target.session, principal, "r", encode_response(answer).decode()])
            else:
                rows.append([target.session, principal, type(answer).__name__, str(answer)])
        answers_of_mine = message(b"A", {"c": header["c"], "n": self.node_id}, orjson.dumps(rows))
        await self.call(self.redis.publish, self.channel(header["o"]), answers_of_mine)

    # Messages from other nodes ----------------------------------------------------------------

    async def on_message(self, data: bytes) -> None:
        """See `RedisNode.on_message`."""
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
                    logger.debug(
                        "dropping a forwarded response: %r",
                        response.id,
                        extra=call_extra(request_id=response.id),
                    )
            elif op == b"W":
                if (polled := host.sessions.get(header["k"])) is not None:
                    polled.wake()
            elif op == b"T":
                taken = host.sessions.get(header["k"])
                if taken is not None and taken.peer is not None:
                    logger.info(
                        "%r: a WebSocket on another node takes the session over",
                        taken,
                        extra=call_extra(session=taken),
                    )
                    self.spawn(taken.close(TAKEN_OVER, "session taken over by another connection"))
            elif op == b"E":
                ended = host.sessions.get(header["k"]) if header["o"] != self.node_id else None
                if ended is not None:
                    host.sessions.discard(ended)
                    ended.end()
            elif op == b"Q":
                if header["o"] != self.node_id:
                    self.spawn(self._answer_broadcast_request(header))
            elif op == b"A":
                gather = self._gathers.get(header["c"])
                if gather is not None:
                    gather.add(orjson.loads(payload))
            else:
                logger.warning("unknown backplane message %r", op)
        except self.redis_errors:
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
        handle = session or self.handle(key, None)
        with contextlib.suppress(NotConnectedError, BackplaneUnavailableError):
            await self.route(handle, packet_id, frame, seq)
