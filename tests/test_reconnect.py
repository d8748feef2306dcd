"""Reconnection: the client notices a lost server, backs off, and comes back to a new one.

The backoff's sleep is injected, so the test controls when each retry happens instead of
waiting for real delays.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from siyi_sdk import Connection, ProtocolClient, ProtocolServer, Request, Response
from tests.conftest import wait_for, ws_url


def echo(connection: Connection, request: Request) -> Response:
    return Response.success(request.id, data=request.params)


class GatedSleep:
    """A fake sleep: records each delay; after `free` quick retries, parks until opened."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.delays: list[float] = []
        self.parked = asyncio.Event()
        self.gate = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) > self.free:
            self.parked.set()
            await self.gate.wait()
        else:
            await asyncio.sleep(0)


async def test_client_reconnects_to_a_new_server_on_the_same_port() -> None:
    first = ProtocolServer(port=0, shutdown_timeout=0.5)
    first.on_request(echo)
    await first.start_serving()
    port = first.port
    sleep = GatedSleep(free=3)
    client = ProtocolClient(
        ws_url(first), reconnect_interval=0.01, max_reconnect_interval=10, sleep=sleep
    )
    second: ProtocolServer | None = None
    try:
        async with client:
            assert client.is_connected
            assert (await client.send_request("echo", {"n": 1})).data == {"n": 1}

            await first.stop()
            # The client noticed: it is retrying against the closed port, and now waits at
            # the gate after three quick retries.
            await wait_for(sleep.parked.wait())
            assert not client.is_connected
            assert len(sleep.delays) == 4

            second = ProtocolServer(port=port, shutdown_timeout=0.5)
            second.on_request(lambda conn, req: Response.success(req.id, data="second"))
            await second.start_serving()
            assert second.port == port
            sleep.gate.set()

            await client.wait_connected(timeout=5)
            assert client.is_connected
            assert (await client.send_request("echo", {"n": 2})).data == "second"
            assert len(second.connections) == 1
    finally:
        await first.stop()
        if second is not None:
            await second.stop()

    # Exponential backoff from reconnect_interval: each wait at least as long as the last.
    assert all(d >= 0.01 for d in sleep.delays)
    assert sleep.delays == sorted(sleep.delays)
    assert sleep.delays[-1] > sleep.delays[0] * 2


async def test_backoff_is_capped_by_max_reconnect_interval() -> None:
    sleep = GatedSleep(free=12)
    # Connect to a port where nothing listens: every attempt is refused at once.
    server = ProtocolServer(port=0)
    await server.start_serving()
    port = server.port
    await server.stop()
    client = ProtocolClient(
        f"ws://127.0.0.1:{port}",
        reconnect_interval=0.01,
        max_reconnect_interval=0.1,
        sleep=sleep,
    )
    async with client:
        await wait_for(sleep.parked.wait())
        assert not client.is_connected
    assert len(sleep.delays) == 13
    # tenacity's exponential wait with jitter: never past the cap plus the jitter.
    assert max(sleep.delays) <= 0.1 + 0.01 / 2
    assert sleep.delays[-1] >= 0.1


async def test_connect_without_auto_reconnect_raises_when_nothing_listens() -> None:
    server = ProtocolServer(port=0)
    await server.start_serving()
    port = server.port
    await server.stop()
    client = ProtocolClient(f"ws://127.0.0.1:{port}", connect_timeout=2)
    with pytest.raises((OSError, aiohttp.ClientError)):
        await wait_for(client.connect(auto_reconnect=False))
    assert not client.is_connected
    await client.disconnect()


async def test_connect_without_auto_reconnect_returns_when_the_server_closes(
    server: ProtocolServer,
) -> None:
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    client = ProtocolClient(ws_url(server))
    task = asyncio.create_task(client.connect(auto_reconnect=False))
    try:
        await client.wait_connected(timeout=5)
        conn = await wait_for(connected.get())
        await conn.close(1000)
        assert await wait_for(task) is None
        assert not client.is_connected
    finally:
        await client.disconnect()


async def test_disconnect_stops_a_running_connect_task_cleanly(server: ProtocolServer) -> None:
    server.on_request(echo)
    disconnected = asyncio.Event()
    server.on_disconnect(lambda conn: disconnected.set())
    client = ProtocolClient(ws_url(server))
    task = asyncio.create_task(client.connect())
    await client.wait_connected(timeout=5)
    assert (await client.send_request("echo", {"ok": True})).data == {"ok": True}

    await client.disconnect()
    assert await wait_for(task) is None  # returned, not cancelled, not raised
    assert not task.cancelled()
    assert not client.is_connected
    await wait_for(disconnected.wait())
    assert server.connections == []
    await client.disconnect()  # idempotent


async def test_disconnect_stops_a_connect_task_that_is_retrying() -> None:
    sleep = GatedSleep(free=0)
    server = ProtocolServer(port=0)
    await server.start_serving()
    port = server.port
    await server.stop()
    client = ProtocolClient(f"ws://127.0.0.1:{port}", reconnect_interval=0.01, sleep=sleep)
    task = asyncio.create_task(client.connect())
    await wait_for(sleep.parked.wait())
    await client.disconnect()
    assert await wait_for(task) is None
    assert not task.cancelled()


async def test_cancelling_the_connect_task_still_cancels_it_and_closes_cleanly(
    server: ProtocolServer,
) -> None:
    """disconnect() ends connect() quietly, but a real cancellation is not swallowed.

    Cancelled, it still closes its WebSocket properly (the server sees a close frame, not a
    dropped socket) and leaves nothing open, without a disconnect() call.
    """
    closed_with: asyncio.Queue[int | None] = asyncio.Queue()
    server.on_disconnect(lambda conn: closed_with.put_nowait(conn.close_code))
    client = ProtocolClient(ws_url(server))
    task = asyncio.create_task(client.connect())
    await client.wait_connected(timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_for(closed_with.get()) == 1000
    assert not client.is_connected
    await client.disconnect()


async def test_stop_closes_the_port_before_telling_clients_to_go_away() -> None:
    """A client that reconnects the moment it sees 1001 must be refused, not left hanging.

    A connection accepted while the server is tearing down is never served nor closed, so a
    client reconnecting into that window would wait for its whole connect timeout.
    """
    server = ProtocolServer(port=0)
    connected = asyncio.Event()
    server.on_connect(lambda conn: connected.set())
    await server.start_serving()
    port = server.port
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(ws_url(server), autoclose=False) as ws,
        ):
            await wait_for(connected.wait())
            stopping = asyncio.create_task(server.stop())
            # The close frame, seen before we answer it: the server is mid-stop right now.
            msg = await ws.receive(timeout=5)
            if msg.type is aiohttp.WSMsgType.TEXT:  # the session event, first on every socket
                msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            await ws.close()
            await wait_for(stopping)
    finally:
        await server.stop()
