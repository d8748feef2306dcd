"""One node of a dashboard test cluster: ``python -m tests.admin_node PORT REDIS_URL PREFIX``.

A ProtocolServer with a RedisBackplane (its default ``node_ttl`` of 3 s) and both dashboard
keys; it prints ``ready`` once it serves, and serves until killed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from siyi_sdk import Connection, ProtocolServer, RedisBackplane

from .admin_support import OPERATOR_KEY, READ_KEY


async def main(port: int, url: str, prefix: str) -> None:
    backplane = RedisBackplane(url, prefix=prefix)
    server = ProtocolServer(
        port=port,
        backplane=backplane,
        heartbeat_interval=None,
        admin_key=READ_KEY,
        admin_operator_key=OPERATOR_KEY,
    )

    @server.command("whoami")
    def whoami(connection: Connection, params: dict[str, Any]) -> int:
        return port

    async with server:
        await backplane.wait_ready(10)
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
