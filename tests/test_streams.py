"""Streamed answers (PROTOCOL.md §10): typed items as they come, flow control, early exits,
errors midway, and the array for a caller that asks for no stream; both directions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from siyi_sdk import (
    AdapterManager,
    Api,
    Command,
    Connection,
    HttpAdapter,
    InternalServerError,
    ProtocolServer,
    Request,
    StatusCode,
    WebSocketAdapter,
)

from .conftest import WAIT, ClientFactory, ServerFactory, http_url, post_packet, ws_url


class LogLine(BaseModel):
    n: int
    text: str


class TailLog(Command[LogLine], stream=True):
    lines: int = 10
    fail_after: int | None = None


class Probe:
    """What the server's generator did: items produced, and whether its finally ran."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = asyncio.Event()
        self.closed_at = 0.0


async def tail_server(make_server: ServerFactory) -> tuple[ProtocolServer, Probe]:
    server = await make_server()
    probe = Probe()

    @server.command(TailLog)
    async def tail(connection: Connection, params: TailLog) -> AsyncIterator[LogLine]:
        try:
            for n in range(params.lines):
                if params.fail_after is not None and n == params.fail_after:
                    raise RuntimeError("the log went away")
                probe.produced += 1
                yield LogLine(n=n, text=f"line {n}")
        finally:
            probe.closed_at = time.monotonic()
            probe.closed.set()

    @server.command("ping")
    def ping(connection: Connection, params: dict[str, Any]) -> str:
        return "pong"

    return server, probe


def api_over(kind: str, server: ProtocolServer) -> Api:
    if kind == "websocket":
        return Api(WebSocketAdapter(ws_url(server), request_timeout=WAIT))
    return Api(HttpAdapter(http_url(server), request_timeout=WAIT))


@pytest.mark.parametrize("kind", ["websocket", "http"])
async def test_ten_thousand_items_arrive_in_order_typed(
    make_server: ServerFactory, kind: str
) -> None:
    server, _ = await tail_server(make_server)
    api = api_over(kind, server)
    async with api.sender:
        if kind == "websocket":
            assert isinstance(api.sender, WebSocketAdapter)
            await api.sender.wait_connected(WAIT)
        got: list[LogLine] = [line async for line in api.stream(TailLog(lines=10_000))]
    assert [line.n for line in got] == list(range(10_000))
    assert all(isinstance(line, LogLine) for line in got)


async def test_the_window_bounds_how_far_the_generator_runs_ahead(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server, probe = await tail_server(make_server)
    client = await make_client(ws_url(server))
    api = Api(client)
    ahead: list[int] = []
    latencies: list[float] = []
    index = 0
    async for _ in api.stream(TailLog(lines=12), window=4):
        ahead.append(probe.produced - index)
        started = time.monotonic()
        assert (await client.send_request("ping")).data == "pong"  # the connection serves on
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.05)  # a slow consumer
        index += 1
    assert index == 12
    assert max(ahead) <= 4
    assert max(latencies) < 0.05


@pytest.mark.parametrize("kind", ["websocket", "http"])
async def test_breaking_out_closes_the_servers_generator(
    make_server: ServerFactory, kind: str
) -> None:
    server, probe = await tail_server(make_server)
    api = api_over(kind, server)
    async with api.sender:
        if isinstance(api.sender, WebSocketAdapter):
            await api.sender.wait_connected(WAIT)
        got = []
        async for line in api.stream(TailLog(lines=1_000_000), window=4):
            got.append(line.n)
            if len(got) == 3:
                break
        left_at = time.monotonic()
        await asyncio.wait_for(probe.closed.wait(), WAIT)
    assert got == [0, 1, 2]
    assert probe.closed_at - left_at < 0.1


@pytest.mark.parametrize("kind", ["websocket", "http"])
async def test_a_handler_that_raises_midway_ends_the_stream_with_its_error(
    make_server: ServerFactory, kind: str
) -> None:
    server, _ = await tail_server(make_server)
    api = api_over(kind, server)
    got: list[int] = []
    async with api.sender:
        if isinstance(api.sender, WebSocketAdapter):
            await api.sender.wait_connected(WAIT)
        with pytest.raises(InternalServerError):  # noqa: PT012 - the loop is the statement
            async for line in api.stream(TailLog(lines=10, fail_after=5)):
                got.append(line.n)
    assert got == [0, 1, 2, 3, 4]


async def test_a_caller_that_asks_for_no_stream_gets_the_array(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server, _ = await tail_server(make_server)
    client = await make_client(ws_url(server))
    lines = await Api(client).collect(TailLog(lines=3))
    with pytest.raises(TypeError, match="streams"):
        await Api(client).call(TailLog(lines=3))
    assert [line.n for line in lines] == [0, 1, 2]
    raw = await client.send_request("tail_log", {"lines": 2})
    assert raw.data == [{"n": 0, "text": "line 0"}, {"n": 1, "text": "line 1"}]
    status, body, _ = await post_packet(
        server, {"id": "s", "type": "request", "command": "tail_log", "params": {"lines": 2}}
    )
    assert (status, body["data"]) == (200, raw.data)


async def test_an_array_over_the_size_limit_gets_413(make_server: ServerFactory) -> None:
    server = await make_server(max_message_size=10_000)

    @server.command("big")
    async def big(connection: Connection, params: dict[str, Any]) -> AsyncIterator[str]:
        for _ in range(100):
            yield "x" * 200

    status, body, _ = await post_packet(server, {"id": "b", "type": "request", "command": "big"})
    assert (status, body["code"]) == (200, StatusCode.TOO_LARGE)


async def test_about_marks_streaming_commands(make_server: ServerFactory) -> None:
    import aiohttp

    server, _ = await tail_server(make_server)

    @server.command("numbers")
    async def numbers(connection: Connection, params: dict[str, Any]) -> AsyncIterator[int]:
        yield 1

    async with aiohttp.ClientSession() as http, http.get(f"{http_url(server)}/about") as reply:
        about = await reply.json()
    commands = {c["name"]: c for c in about["commands"]}
    assert commands["tail_log"]["stream"] is True
    assert commands["numbers"]["stream"] is True
    assert "stream" not in commands["ping"]


async def test_a_streaming_command_needs_an_async_generator(make_server: ServerFactory) -> None:
    server = await make_server()
    with pytest.raises(TypeError, match="async generator"):

        @server.command(TailLog)
        async def not_a_generator(connection: Connection, params: TailLog) -> list[LogLine]:
            return []


async def test_a_manager_streams_through_its_best_adapter(make_server: ServerFactory) -> None:
    server, _ = await tail_server(make_server)
    manager = AdapterManager(
        [WebSocketAdapter(ws_url(server), priority=10), HttpAdapter(http_url(server))]
    )
    async with manager:
        got = [line.n async for line in Api(manager).stream(TailLog(lines=5))]
    assert got == [0, 1, 2, 3, 4]


async def test_a_clients_handler_streams_its_answer_to_the_server(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server()
    client = await make_client(ws_url(server))
    closed = asyncio.Event()

    @client.on_request
    async def count(request: Request) -> AsyncIterator[int]:
        try:
            for n in range(int((request.params or {})["upto"])):
                yield n
        finally:
            closed.set()

    await client.send_request("nothing")  # until the server has the connection
    (connection,) = server.connections
    got = [n async for n in connection.stream_request("count", {"upto": 500}, window=8)]
    assert got == list(range(500))
    # Asked without a stream, the same handler answers the array.
    assert (await connection.send_request("count", {"upto": 3})).data == [0, 1, 2]
    closed.clear()
    async for n in connection.stream_request("count", {"upto": 10**9}, window=2):
        if n == 2:
            break
    await asyncio.wait_for(closed.wait(), WAIT)


async def test_the_demo_game_streams_its_players_and_follows_new_ones() -> None:
    from siyi_sdk.demo.commands import PlayerJoined, PlayerSeen, WatchPlayers
    from siyi_sdk.demo.game import GameState, create_game_server

    game = GameState({"overworld": ["Steve"], "nether": ["Piglin"]})
    server = create_game_server(port=0, state=game, heartbeat_interval=None)
    async with server, WebSocketAdapter(ws_url(server), request_timeout=WAIT) as ws:
        await ws.wait_connected(WAIT)
        api = Api(ws)
        everyone = await api.collect(WatchPlayers())
        assert everyone == [
            PlayerSeen(world="overworld", player_name="Steve"),
            PlayerSeen(world="nether", player_name="Piglin"),
        ]
        followed: list[str] = []
        async for seen in api.stream(WatchPlayers(follow=True)):
            followed.append(seen.player_name)
            if len(followed) == 2:
                await api.send_event(PlayerJoined(player_name="Alex"))
            if len(followed) == 3:
                break
    assert followed == ["Steve", "Piglin", "Alex"]
