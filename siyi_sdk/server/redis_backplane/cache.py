"""`RedisResponseCache`: at most once across nodes (PROTOCOL.md §6), kept in Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

from ...outcome import encode_response
from ...packets import Response, StatusCode, kept, parse_message
from ..state import CacheKey, MemoryResponseCache, ResponseCache
from .node import RedisNode

__all__ = ["RedisResponseCache"]


class RedisResponseCache(ResponseCache):
    """At most once across nodes (PROTOCOL.md §6): each request id runs on one node only.

    Repeats in this process wait on the local entry (no Redis round trip); a repeat reaching
    another node finds the entry in Redis: the Response when the first run finished, or a
    "running on node X" marker, and then waits for it. If node X dies before it answers, the
    repeat gets 503: the request may or may not have run, and running it again could run it
    twice. While Redis is down, at most once holds within each node.
    """

    def __init__(self, backplane: RedisNode, ttl: float) -> None:
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
        found = await bp.call(bp.scripts.run_once, [ckey], [b"R" + bp.node_id.encode(), ttl_ms])
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
