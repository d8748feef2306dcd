"""Liveness (PROTOCOL.md §5): dead peers go within ~1.5 heartbeat intervals, live ones stay.

A "dead" peer is a real socket whose other end stops answering pings: an aiohttp client with
``autoping=False`` that never reads, so the server's pings go unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from siyi_sdk import Connection, Request, Response
from tests.conftest import (
    ClientFactory,
    RawServerFactory,
    ServerFactory,
    greet,
    wait_for,
    ws_url,
)

INTERVAL = 0.2
# 1.5 intervals is the contract; the slack only absorbs scheduling noise on a busy machine.
DEADLINE = 1.5 * INTERVAL + 0.25


@contextlib.asynccontextmanager
async def silent_peer(url: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A WebSocket that is open but never answers a ping (it never reads)."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, autoping=False, heartbeat=None) as ws,
    ):
        yield ws


def echo(connection: Connection, request: Request) -> Response:
    return Response.success(request.id, data=request.params)


async def test_a_peer_that_stops_answering_pings_is_dropped(make_server: ServerFactory) -> None:
    server = await make_server(heartbeat_interval=INTERVAL)
    connected: asyncio.Queue[tuple[Connection, float]] = asyncio.Queue()
    disconnected: asyncio.Queue[tuple[Connection, float]] = asyncio.Queue()
    server.on_connect(lambda conn: connected.put_nowait((conn, time.monotonic())))
    server.on_disconnect(lambda conn: disconnected.put_nowait((conn, time.monotonic())))

    async with silent_peer(ws_url(server)):
        conn, opened = await wait_for(connected.get())
        gone, closed = await wait_for(disconnected.get())
        assert gone is conn
        assert not conn.is_connected
        assert closed - opened < DEADLINE
        # It was the heartbeat, not something else, that dropped it: it lived about a ping
        # interval plus the half-interval the server waits for the pong.
        assert closed - opened >= INTERVAL
        assert server.connections == []


async def test_a_live_client_stays_connected_through_many_intervals(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server(heartbeat_interval=INTERVAL)
    server.on_request(echo)
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    disconnected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    server.on_disconnect(disconnected.put_nowait)

    # The client sends no pings of its own: it is kept alive only by answering the server's.
    client = await make_client(ws_url(server), heartbeat_interval=None)
    live = await wait_for(connected.get())
    started = time.monotonic()

    # Three dead peers, one after the other: each is dropped by the heartbeat, so the live
    # client has been through at least 3 x 1.5 intervals of pings when the last one goes.
    for _ in range(3):
        async with silent_peer(ws_url(server)):
            dead = await wait_for(connected.get())
            assert await wait_for(disconnected.get()) is dead

    assert time.monotonic() - started >= 3 * INTERVAL
    assert client.is_connected
    assert live.is_connected
    assert server.connections == [live]  # the same connection: it never dropped and came back
    assert disconnected.empty()
    response = await client.send_request("echo", {"still": "here"})
    assert response.data == {"still": "here"}


async def test_client_heartbeat_drops_a_server_that_stops_answering(
    make_raw_server: RawServerFactory, make_client: ClientFactory
) -> None:
    """The client may ping too: a server that never answers is noticed by the client."""
    accepted = asyncio.Event()
    release = asyncio.Event()

    async def mute(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await greet(ws)
        accepted.set()
        await release.wait()  # never reads, so never answers a ping
        return ws

    url = await make_raw_server(mute)
    lost = asyncio.Event()

    async def no_reconnect(delay: float) -> None:
        lost.set()
        await asyncio.Event().wait()  # park the reconnect loop until the client closes

    try:
        client = await make_client(url, heartbeat_interval=INTERVAL, sleep=no_reconnect)
        assert client.is_connected
        await wait_for(accepted.wait())
        opened = time.monotonic()
        await wait_for(lost.wait())
        assert not client.is_connected
        assert time.monotonic() - opened < DEADLINE
    finally:
        release.set()
