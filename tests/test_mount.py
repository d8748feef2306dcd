"""A server mounted in an aiohttp application of the user's own (issue 12, "Mount anywhere").

The application has its own routes and is served by its own `AppRunner`; the siyi server only
`attach`es its routes and lifecycle under ``/siyi``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from siyi_sdk import (
    AdapterMode,
    Connection,
    HttpAdapter,
    ProtocolClient,
    ProtocolServer,
    RedisBackplane,
    Request,
)
from siyi_sdk.testing import TcpProxy

from .conftest import WAIT, Inbox, greeting_of, wait_for, wait_until
from .redis_server import RedisServer


class Mounted:
    """A user's application with one route of its own and a siyi server under /siyi."""

    def __init__(self, server: ProtocolServer, runner: web.AppRunner, port: int) -> None:
        self.server = server
        self.runner = runner
        self.port = port

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/siyi"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}/siyi"


@contextlib.asynccontextmanager
async def mounted(**kwargs: Any) -> AsyncIterator[Mounted]:
    server = ProtocolServer(heartbeat_interval=None, shutdown_timeout=1.0, **kwargs)

    @server.command("echo")
    def echo(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
        return params

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="the user's own route")

    app = web.Application()
    app.router.add_get("/hello", hello)
    server.attach(app, prefix="/siyi")
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Mounted(server, runner, port)
    finally:
        await runner.cleanup()


async def test_a_mounted_server_serves_every_channel_beside_the_apps_own_routes() -> None:
    async with mounted() as m, aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{m.port}/hello") as reply:
            assert await reply.text() == "the user's own route"
        assert m.server.is_serving

        async with ProtocolClient(m.ws, request_timeout=WAIT) as client:
            answer = await client.send_request("echo", {"x": 1})
            assert answer.data == {"x": 1}
            stored = await client.upload(b"over the websocket", name="ws.txt")
            assert stored.size == len(b"over the websocket")

        adapter = HttpAdapter(m.http, mode=AdapterMode.SEND | AdapterMode.RECEIVE)
        inbox = Inbox()
        adapter.on_event(inbox)
        async with adapter:
            answer = await adapter.send_packet(Request(command="echo", params={"y": 2}))
            assert answer.data == {"y": 2}
            await wait_until(lambda: len(m.server.sessions) >= 1)
            await m.server.broadcast_event("news", {"n": 1})
            await inbox.wait_count(1)
            assert inbox.data == [{"n": 1}]
            stored = await adapter.upload(b"over http", name="http.txt")
            assert stored.name == "http.txt"


async def test_replay_after_a_cut_through_a_mounted_server() -> None:
    async with mounted() as m, TcpProxy(m.port) as proxy:
        inbox = Inbox()
        client = ProtocolClient(f"ws://127.0.0.1:{proxy.port}/siyi", request_timeout=WAIT)
        client.on_event(inbox)
        async with client:
            (session,) = m.server.connections
            await proxy.cut()
            await wait_until(lambda: not session.is_connected)
            await session.send_event("while_away", 1)
            await proxy.resume()
            await inbox.wait_count(1)
            assert inbox.data == [1]


async def test_stopping_the_app_closes_websockets_with_1001_and_stops_the_backplane() -> None:
    async with mounted() as m:
        ws = await connect(m.ws)
        await greeting_of(ws)
        backplane = m.server.backplane
        await m.runner.cleanup()
        with pytest.raises(ConnectionClosed) as closed:
            await wait_for(ws.recv())
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        assert not m.server.is_serving
        assert len(m.server.sessions) == 0
        assert backplane is m.server.backplane


async def test_two_mounted_apps_share_one_redis(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            mounted(backplane=RedisBackplane(redis_server.url, prefix=redis_prefix))
        )
        b = await stack.enter_async_context(
            mounted(backplane=RedisBackplane(redis_server.url, prefix=redis_prefix))
        )
        inbox = Inbox()
        client = ProtocolClient(a.ws, request_timeout=WAIT)
        client.on_event(inbox)
        async with client:
            key = client.session.key
            assert key is not None
            target = await b.server.find_session(key)
            assert target is not None
            await b.server.send_event(target, "from_b", {"ok": True})
            await inbox.wait_count(1)
            assert inbox.data == [{"ok": True}]
        backplane = b.server.backplane
        assert isinstance(backplane, RedisBackplane)
    # Each app's cleanup stopped its backplane.
    await asyncio.sleep(0)
    assert not backplane.connected
