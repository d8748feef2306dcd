"""Every node of a cluster on one page: each node publishes its figures on the Redis backplane.

Once a tick, a node with a shared backplane writes its figures to ``<prefix>:admin:n:<node>``
(kept 60 s), names itself in the set ``<prefix>:admin:nodes``, and reads every node's figures
back, with whether each node's liveness key (``<prefix>:n:<node>``, which the backplane's
keep-alive refreshes every ``node_ttl / 3`` s and which expires ``node_ttl`` s after a node dies:
3 s by default) is still there. A node that died is thus marked down within ``node_ttl`` plus
a tick (4 s by default), and disappears from the list a minute later. One pipelined round trip
per tick; no clock is compared between machines.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

__all__ = ["Cluster"]

logger = logging.getLogger(__name__)

KEEP_MS = 60_000
"""How long a node's published figures outlive its last tick, in milliseconds."""


class Cluster:
    """The figures of every node sharing a backplane (see the module).

    Args:
        backplane: a shared backplane with a Redis client (`RedisBackplane`); anything else
            makes a cluster of this node alone.
    """

    def __init__(self, backplane: Any) -> None:
        self.backplane = backplane
        self.shared = bool(getattr(backplane, "shared", False)) and hasattr(backplane, "redis")
        self.nodes: list[dict[str, Any]] = []
        """Every node's figures as of the last tick, this node first, each with ``up``."""

    async def exchange(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        """Publish this node's figures; return every node's (this one's alone if not shared)."""
        if not self.shared:
            self.nodes = [mine]
            return self.nodes
        backplane = self.backplane
        got = await backplane.call(self._round_trip, mine)
        if got is backplane.UNREACHABLE or got is None:
            # Redis is down: what this node knows of the others is stale; say so.
            others = [{**node, "up": False} for node in self.nodes if node["id"] != mine["id"]]
            self.nodes = [mine, *others]
            return self.nodes
        nodes: list[dict[str, Any]] = got
        self.nodes = nodes
        return nodes

    async def _round_trip(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        backplane = self.backplane
        redis = backplane.redis
        me = mine["id"]
        members = backplane.key("admin:nodes")
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set(backplane.key(f"admin:n:{me}"), orjson.dumps(mine), px=KEEP_MS)
            pipe.sadd(members, me)
            pipe.smembers(members)
            _, _, names = await pipe.execute()
        ids = sorted(name.decode() if isinstance(name, bytes) else str(name) for name in names)
        ids = [node for node in ids if node != me]
        if not ids:
            return [mine]
        async with redis.pipeline(transaction=False) as pipe:
            for node in ids:
                pipe.get(backplane.key(f"admin:n:{node}"))
                pipe.exists(backplane.key(f"n:{node}"))
            answers = await pipe.execute()
        nodes = [mine]
        gone = []
        for index, node in enumerate(ids):
            raw, alive = answers[2 * index], answers[2 * index + 1]
            if raw is None:
                gone.append(node)  # its figures expired: it has been down for a minute
                continue
            try:
                figures = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            figures["up"] = bool(alive)
            nodes.append(figures)
        if gone:
            await redis.srem(members, *gone)
        return nodes
