"""Both ends on uvloop: its transports have asyncio's API without its classes.

The peers write their own frames and read through the frame tap wherever the transport can be
written to directly (`siyi_sdk.frames.writable`); checked by what the transport does, not by
its class, so uvloop gets the same hot path as asyncio's own loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

from siyi_sdk import Connection, Event, ProtocolClient, ProtocolServer
from siyi_sdk.peer import Peer

from .conftest import wait_for


def hot(peer: Peer | None) -> bool:
    """The peer writes its own frames and reads plain ones through the tap."""
    assert peer is not None
    tap = peer._ws.frame_tap  # type: ignore[attr-defined]
    return peer._coalesce and tap is not None and tap.taker is peer and tap.taken > 0


async def round_trips() -> None:
    server = ProtocolServer(port=0, heartbeat_interval=None, shutdown_timeout=1.0)

    @server.command("echo")
    def echo(connection: Connection, params: dict[str, Any]) -> Any:
        return params

    @server.command("later")
    async def later(connection: Connection, params: dict[str, Any]) -> Any:
        await asyncio.sleep(0)
        return params["n"]

    got: list[Any] = []
    arrived = asyncio.Event()

    def on_event(event: Event) -> None:
        got.append(event.data)
        if len(got) == 100:
            arrived.set()

    async with server, ProtocolClient(f"ws://127.0.0.1:{server.port}") as client:
        client.on_event(on_event)
        for i in range(20):  # one after another: each frame written at once
            assert (await client.send_request("echo", {"i": i})).data == {"i": i}
        # A burst in one turn of the loop: batched writes, several frames per read.
        burst = await wait_for(
            asyncio.gather(*(client.send_request("later", {"n": n}) for n in range(200)))
        )
        assert [r.data for r in burst] == list(range(200))
        [connection] = server.connections
        for n in range(100):
            await connection.send_event("tick", n)
        await wait_for(arrived.wait())
        assert got == list(range(100))  # in order
        assert hot(client._peer)
        assert hot(connection.peer)


def test_uvloop_gets_the_same_hot_path_as_asyncio() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert type(runner.get_loop()).__module__.startswith("uvloop")
        runner.run(round_trips())
