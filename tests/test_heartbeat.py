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
    wait_until,
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


async def test_the_server_answers_a_peers_ping_and_a_busy_peer_is_kept(
    make_server: ServerFactory,
) -> None:
    """The server answers pings itself (no aiohttp autoping), and traffic counts as an answer."""
    server = await make_server(heartbeat_interval=INTERVAL)
    server.on_request(echo)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(ws_url(server), autoping=False, heartbeat=None) as ws,
    ):
        greeting = await wait_for(ws.receive())
        assert greeting.type is aiohttp.WSMsgType.TEXT
        await ws.ping(b"are you there")
        seen_pong = False
        deadline = time.monotonic() + 3 * INTERVAL
        # Never answering the server's pings, but busy: each request read proves it alive.
        while time.monotonic() < deadline:
            await ws.send_str(Request(command="echo", params={"n": 1}).model_dump_json())
            while True:
                msg = await wait_for(ws.receive())
                if msg.type is aiohttp.WSMsgType.PONG:
                    assert msg.data == b"are you there"
                    seen_pong = True
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    break
                else:
                    assert msg.type is aiohttp.WSMsgType.PING, msg
        assert seen_pong
        assert not ws.closed
        assert len(server.connections) == 1


async def test_the_client_answers_a_servers_ping_and_reports_1006_when_cut(
    make_raw_server: RawServerFactory, make_client: ClientFactory
) -> None:
    """The client answers pings itself; one the heartbeat cuts is logged as code 1006."""
    pongs: asyncio.Queue[bytes] = asyncio.Queue()
    release = asyncio.Event()

    async def pinging(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"before the greeting")  # read by the client's greeting reader
        await greet(ws)
        await ws.ping(b"after")
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.PONG:
                pongs.put_nowait(msg.data)
                if pongs.qsize() == 2:
                    break
        await release.wait()  # then never reads again: the client's pings go unanswered
        return ws

    url = await make_raw_server(pinging)
    lost = asyncio.Event()

    async def no_reconnect(delay: float) -> None:
        lost.set()
        await asyncio.Event().wait()

    try:
        client = await make_client(url, heartbeat_interval=INTERVAL, sleep=no_reconnect)
        assert await wait_for(pongs.get()) == b"before the greeting"
        assert await wait_for(pongs.get()) == b"after"
        await wait_for(lost.wait())
        assert not client.is_connected
        assert "code 1006" in str(client.last_error)
    finally:
        release.set()


async def test_a_peer_held_back_by_the_servers_own_event_handler_is_not_taken_for_dead(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    """§4 pauses reading while events wait for a slow handler; the pongs wait unread too."""
    server = await make_server(heartbeat_interval=INTERVAL, max_pending_events=2)
    server.on_request(echo)
    release = asyncio.Event()
    handled: list[object] = []
    disconnected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_disconnect(disconnected.put_nowait)

    async def slow(connection: Connection, event: object) -> None:
        await release.wait()
        handled.append(event)

    server.on_event(slow)
    client = await make_client(ws_url(server), heartbeat_interval=None)
    for n in range(6):
        await client.send_event("tick", {"n": n})
    # Well past 1.5 intervals with the reader paused: the heartbeat must not cut it. (A
    # sleep, as nothing is to happen: the test is that no disconnect comes meanwhile.)
    await asyncio.sleep(4 * INTERVAL)
    assert disconnected.empty()
    assert client.is_connected
    release.set()
    response = await client.send_request("echo", {"after": "the pause"})
    assert response.data == {"after": "the pause"}
    await wait_until(lambda: len(handled) == 6)
    assert disconnected.empty()
