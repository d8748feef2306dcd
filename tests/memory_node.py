"""A server process for the memory tests: ``python -m tests.memory_node '<json options>'``.

A ProtocolServer on a free port with the given constructor options (low bounds, so that an
attack reaches them quickly) and the commands `tests.test_memory_bounds` drives. It prints
``ready <port>`` once it serves, and serves until killed.

Commands (catch-all handler, so each sees its request id):
  ping              -> "pong"
  echo {data}       -> data
  big {size}        -> "x" * size; counts its runs per request id
  runs {id}         -> how many times `big` ran for that id
  release / block   -> let the event handler run, or hold it
  events            -> {"handled": n, "out_of_order": n}
  stats             -> the at-most-once cache's figures, the largest outbox of a connection
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sys
from typing import Any

from siyi_sdk import Connection, Event, ProtocolServer, Request, Response
from siyi_sdk.server.state import MemoryResponseCache


async def main(options: dict[str, Any]) -> None:
    server = ProtocolServer(port=0, heartbeat_interval=None, **options)
    runs: collections.Counter[str] = collections.Counter()
    gate = asyncio.Event()
    gate.set()
    handled = 0
    out_of_order = 0

    @server.on_request
    def handle(connection: Connection, request: Request) -> Response:
        params = request.params or {}
        command = request.command
        data: Any = None
        if command == "ping":
            data = "pong"
        elif command == "echo":
            data = params.get("data")
        elif command == "big":
            runs[request.id] += 1
            data = "x" * int(params["size"])
        elif command == "runs":
            data = runs[str(params["id"])]
        elif command == "release":
            gate.set()
        elif command == "block":
            gate.clear()
        elif command == "events":
            data = {"handled": handled, "out_of_order": out_of_order}
        elif command == "stats":
            cache = server.response_cache
            assert isinstance(cache, MemoryResponseCache)
            data = {
                "cache_bytes": cache.size,
                "cache_answers": cache.answers,
                "cache_markers": cache.markers,
                "max_outbox": max(
                    (c.peer.outbox_bytes for c in server.connections if c.peer is not None),
                    default=0,
                ),
            }
        else:
            return Response.fail(request.id, f"unknown command: {command!r}", 404)
        return Response.success(request.id, data)

    @server.on_event
    async def tick(connection: Connection, event: Event) -> None:
        nonlocal handled, out_of_order
        await gate.wait()
        if not isinstance(event.data, dict) or event.data.get("seq") != handled:
            out_of_order += 1
        handled += 1

    async with server:
        print(f"ready {server.port}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(json.loads(sys.argv[1])))
