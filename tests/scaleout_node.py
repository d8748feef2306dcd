"""One node of a test deployment: ``python -m tests.scaleout_node PORT REDIS_URL PREFIX``.

A ProtocolServer with a RedisBackplane and the commands the multi-process tests drive. It
prints ``ready`` once it serves, and serves until killed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import redis.asyncio

from siyi_sdk import Connection, ProtocolServer, RedisBackplane, Response


async def main(port: int, url: str, prefix: str) -> None:
    backplane = RedisBackplane(url, prefix=prefix, node_ttl=1.0)
    server = ProtocolServer(port=port, backplane=backplane, heartbeat_interval=None)
    counters = redis.asyncio.Redis.from_url(url)

    @server.command("whoami")
    def whoami(connection: Connection, params: dict[str, Any]) -> int:
        return port

    @server.command("count")
    async def count(connection: Connection, params: dict[str, Any]) -> int:
        # A side effect every node can see: how many times each request really ran.
        runs = int(await counters.incr(f"{prefix}:test:runs:{params['key']}"))
        await asyncio.sleep(float(params.get("sleep", 0)))
        return runs

    @server.command("broadcast")
    async def broadcast(connection: Connection, params: dict[str, Any]) -> None:
        await server.broadcast_event(params["name"], params.get("data"))

    @server.command("ask_all")
    async def ask_all(connection: Connection, params: dict[str, Any]) -> list[Any]:
        answers = await server.broadcast_request("whoami", timeout=float(params["timeout"]))
        return sorted(
            [c.session, r.data if isinstance(r, Response) else repr(r)] for c, r in answers.items()
        )

    @server.command("notify")
    async def notify(connection: Connection, params: dict[str, Any]) -> bool:
        target = await server.find_session(params["session"])
        if target is None:
            return False
        await server.send_event(target, params["name"], params.get("data"))
        return True

    @server.command("ask")
    async def ask(connection: Connection, params: dict[str, Any]) -> Any:
        target = await server.find_session(params["session"])
        if target is None:
            return None
        answer = await server.send_request(target, "echo", params.get("params"), timeout=5)
        return answer.data

    async with server:
        await backplane.wait_ready(10)
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
