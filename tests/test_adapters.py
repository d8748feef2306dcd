"""The adapters: the same typed calls over WebSocket, HTTP and a MockAdapter, and each one's edges.

WebSocketAdapter and HttpAdapter talk to a real server on a loopback port; the MockAdapter's
handler answers the same data, so one test body runs unchanged over all three.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from siyi_sdk import (
    Adapter,
    AdapterMode,
    Connection,
    ConnectionClosedError,
    Event,
    HttpAdapter,
    MockAdapter,
    NotConnectedError,
    ProtocolServer,
    Request,
    RequestPacket,
    RequestTimeoutError,
    Response,
    ResponsePacket,
    TransportError,
    UnknownCommandError,
    WebSocketAdapter,
)
from siyi_sdk.demo import Echo, GameApi, GameStatus, GetPlayerList, GetStatus, PlayerJoined
from tests.proxy import WAIT, Gate, running_server, wait_for

WORLDS = {"overworld": ["Player1", "Steve", "Alex"], "nether": ["Herobrine"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def game_server(server: ProtocolServer) -> None:
    """The demo game's typed routes."""

    @server.command(GetPlayerList)
    async def players(connection: Connection, params: GetPlayerList) -> list[str]:
        return WORLDS[params.world]

    @server.command(GetStatus)
    async def status(connection: Connection, params: GetStatus) -> GameStatus:
        return GameStatus(status="running", players=len(WORLDS["overworld"]))

    @server.command(Echo)
    async def echo(connection: Connection, params: Echo) -> dict[str, Any]:
        return params.model_dump()


def game_mock(request: RequestPacket) -> ResponsePacket:
    """The same game, answered in-process."""
    params = request.params or {}
    if request.command == "get_player_list":
        return Response.success(request.id, WORLDS[params.get("world", "overworld")])
    if request.command == "get_status":
        return Response.success(request.id, {"status": "running", "players": 3})
    if request.command == "echo":
        return Response.success(request.id, params)
    return Response.fail(request.id, f"unknown command: {request.command!r}", 404)


AdapterFactory = Callable[[ProtocolServer], Adapter]

TRANSPORTS: dict[str, AdapterFactory] = {
    "websocket": lambda s: WebSocketAdapter(f"ws://127.0.0.1:{s.port}", request_timeout=WAIT),
    "http": lambda s: HttpAdapter(f"http://127.0.0.1:{s.port}", request_timeout=WAIT),
    "mock": lambda s: MockAdapter(game_mock),
}


@pytest.fixture
async def game() -> AsyncIterator[ProtocolServer]:
    async with running_server() as server:
        game_server(server)
        yield server


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_same_typed_calls_over_every_adapter(game: ProtocolServer, transport: str) -> None:
    async with TRANSPORTS[transport](game) as adapter:
        api = GameApi(adapter)
        assert await api.get_player_list() == ["Player1", "Steve", "Alex"]
        assert await api.get_player_list(world="nether") == ["Herobrine"]
        assert await api.call(GetPlayerList(world="nether")) == ["Herobrine"]
        status = await api.get_status()
        assert status == GameStatus(status="running", players=3)
        assert await api.echo({"message": "hi", "n": [1, 2]}) == {"message": "hi", "n": [1, 2]}
        assert await api.request("get_player_list", {"world": "nether"}) == ["Herobrine"]
        with pytest.raises(UnknownCommandError) as info:
            await api.request("no_such_command")
        assert info.value.code == 404
        assert "no_such_command" in info.value.message


# WebSocketAdapter -----------------------------------------------------------------------------


async def test_websocket_adapter_down_fails_at_once() -> None:
    adapter = WebSocketAdapter(f"ws://127.0.0.1:{free_port()}")
    assert not adapter.is_connected
    assert not adapter.is_available
    with pytest.raises(NotConnectedError):
        await adapter.send_packet(Request(command="x"))
    with pytest.raises(NotConnectedError):
        await adapter.send_event(Event(name="x"))


async def test_websocket_adapter_start_returns_after_a_failed_first_attempt() -> None:
    attempts: list[float] = []
    parked = asyncio.Event()

    async def sleep(delay: float) -> None:
        attempts.append(delay)
        await parked.wait()  # never set: the adapter waits here until closed

    async with WebSocketAdapter(
        f"ws://127.0.0.1:{free_port()}", sleep=sleep, connect_timeout=WAIT
    ) as adapter:
        assert not adapter.is_connected
        assert len(attempts) == 1  # it tried once, and backs off before the next try
        with pytest.raises(TimeoutError):
            await adapter.wait_connected(0.01)


async def test_websocket_adapter_request_in_flight_fails_when_server_drops(
    game: ProtocolServer,
) -> None:
    gate = Gate()

    @game.command("slow")
    async def slow(connection: Connection, params: dict[str, Any]) -> None:
        await gate.pass_through(None)

    parked = asyncio.Event()

    async def sleep(delay: float) -> None:
        await parked.wait()

    async with WebSocketAdapter(f"ws://127.0.0.1:{game.port}", sleep=sleep) as adapter:
        call = asyncio.create_task(adapter.send_packet(Request(command="slow")))
        await wait_for(gate.started.wait())
        [connection] = game.connections
        await connection.close(4000, "bye")
        with pytest.raises(ConnectionClosedError):
            await wait_for(call)  # at once, not after request_timeout
        gate.open()


async def test_websocket_adapter_request_timeout(game: ProtocolServer) -> None:
    gate = Gate()

    @game.command("slow")
    async def slow(connection: Connection, params: dict[str, Any]) -> None:
        await gate.pass_through(None)

    async with WebSocketAdapter(f"ws://127.0.0.1:{game.port}", request_timeout=WAIT) as adapter:
        with pytest.raises(RequestTimeoutError):
            await adapter.send_packet(Request(command="slow"), timeout=0.05)
        assert adapter.is_connected  # a timeout is not a dead connection
        gate.open()
        assert (await adapter.send_packet(Request(command="get_player_list"))).ok


async def test_websocket_adapter_receives_events_and_requests(game: ProtocolServer) -> None:
    events: list[Event] = []
    arrived = asyncio.Event()
    async with WebSocketAdapter(f"ws://127.0.0.1:{game.port}") as adapter:

        @adapter.on_event
        def on_event(event: Event) -> None:
            events.append(event)
            arrived.set()

        @adapter.on_request
        async def on_request(request: Request) -> Response:
            return Response.success(request.id, {"asked": request.command})

        await game.broadcast_event("player_joined", {"player_name": "H"})
        await wait_for(arrived.wait())
        assert [(e.name, e.data) for e in events] == [("player_joined", {"player_name": "H"})]

        [connection] = game.connections
        answer = await wait_for(game.send_request(connection, "get_status"))
        assert answer.data == {"asked": "get_status"}


async def test_websocket_adapter_without_handler_answers_404(game: ProtocolServer) -> None:
    async with WebSocketAdapter(f"ws://127.0.0.1:{game.port}") as adapter:
        assert adapter.is_connected
        [connection] = game.connections
        answer = await wait_for(game.send_request(connection, "get_status"))
        assert answer.code == 404


# HttpAdapter ----------------------------------------------------------------------------------


async def test_http_adapter_unreachable_is_a_transport_error() -> None:
    async with HttpAdapter(f"http://127.0.0.1:{free_port()}") as adapter:
        with pytest.raises(TransportError):
            await adapter.send_packet(Request(command="x"))


async def test_http_adapter_non_protocol_answer_is_a_transport_error() -> None:
    # Some other web server (a proxy's error page, a wrong URL): not an answer to the packet.
    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="Bad Gateway")

    app = web.Application()
    app.router.add_post("/general", bad_gateway)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with HttpAdapter(f"http://127.0.0.1:{port}") as adapter:
            with pytest.raises(TransportError, match="502"):
                await adapter.send_packet(Request(command="x"))
    finally:
        await runner.cleanup()


async def test_http_adapter_timeout(game: ProtocolServer) -> None:
    gate = Gate()

    @game.command("slow")
    async def slow(connection: Connection, params: dict[str, Any]) -> None:
        await gate.pass_through(None)

    async with HttpAdapter(f"http://127.0.0.1:{game.port}", request_timeout=0.05) as adapter:
        with pytest.raises(RequestTimeoutError):
            await adapter.send_packet(Request(command="slow"))
        gate.open()


async def test_http_adapter_sends_events(game: ProtocolServer) -> None:
    seen: list[tuple[str, str, Any]] = []

    @game.on_event
    async def record(connection: Connection, event: Event) -> None:
        seen.append((connection.transport, event.name, event.data))

    async with HttpAdapter(f"http://127.0.0.1:{game.port}/") as adapter:
        await adapter.send_event(Event(name="hello", data=[1, 2]))
    assert seen == [("http", "hello", [1, 2])]  # delivered before the acknowledgement


async def test_http_adapter_opens_its_session_on_first_use(game: ProtocolServer) -> None:
    adapter = HttpAdapter(f"http://127.0.0.1:{game.port}")
    try:
        assert (await adapter.send_packet(Request(command="get_player_list"))).ok
    finally:
        await adapter.close()


async def test_http_adapter_sends_its_headers(game: ProtocolServer) -> None:
    seen: list[str | None] = []

    @game.command("whoami")
    async def whoami(connection: Connection, params: dict[str, Any]) -> None:
        seen.append(connection.headers.get("X-Client"))

    headers = {"X-Client": "tests"}
    async with HttpAdapter(f"http://127.0.0.1:{game.port}", headers=headers) as adapter:
        assert (await adapter.send_packet(Request(command="whoami"))).ok
    assert seen == ["tests"]


# MockAdapter and adapter defaults -------------------------------------------------------------


async def test_mock_adapter_records_and_pushes() -> None:
    adapter = MockAdapter(game_mock)
    got: list[PlayerJoined] = []
    api = GameApi(adapter)
    api.on_event(PlayerJoined)(got.append)

    await api.get_player_list()
    await api.send_event(PlayerJoined(player_name="H"))
    await adapter.push_event(Event(name="player_joined", data={"player_name": "S"}))
    assert [r.command for r in adapter.requests] == ["get_player_list"]
    assert [(e.name, e.data) for e in adapter.events] == [
        ("player_joined", {"player_name": "H", "world": "overworld"})
    ]
    assert got == [PlayerJoined(player_name="S")]


async def test_mock_adapter_async_handler_and_failures() -> None:
    async def handler(request: RequestPacket) -> ResponsePacket:
        if request.command == "down":
            raise ConnectionError("simulated")
        return Response.success(request.id, request.command)

    adapter = MockAdapter(handler)
    assert (await adapter.send_packet(Request(command="up"))).data == "up"
    with pytest.raises(ConnectionError):
        await adapter.send_packet(Request(command="down"))

    bad = MockAdapter(lambda request: "not a response")  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError):
        await bad.send_packet(Request(command="x"))


def test_mode_and_priority_are_class_attributes_and_keywords() -> None:
    class Minimal(Adapter):
        async def send_packet(self, packet: RequestPacket) -> ResponsePacket:
            return Response.success(packet.id)

    class Preferred(Minimal):
        priority = 7
        mode = AdapterMode.SEND | AdapterMode.RECEIVE

    assert (Minimal().mode, Minimal().priority) == (AdapterMode.SEND, 0)
    assert (Preferred().mode, Preferred().priority) == (AdapterMode.SEND | AdapterMode.RECEIVE, 7)
    assert Minimal().name == "Minimal"

    ws = WebSocketAdapter("ws://127.0.0.1:1", priority=3, mode=AdapterMode.RECEIVE)
    http = HttpAdapter("http://127.0.0.1:1", priority=-1)
    mock = MockAdapter(game_mock, priority=2, mode=AdapterMode.SEND)
    assert (ws.priority, ws.mode) == (3, AdapterMode.RECEIVE)
    assert (http.priority, http.mode) == (-1, AdapterMode.SEND)
    assert (mock.priority, mock.mode) == (2, AdapterMode.SEND)
    # Defaults stay per class: the keywords did not leak into other instances.
    assert WebSocketAdapter("ws://x").mode == AdapterMode.SEND | AdapterMode.RECEIVE
    assert HttpAdapter("http://x").priority == 0


async def test_adapter_without_send_event_refuses_events() -> None:
    class RequestsOnly(Adapter):
        async def send_packet(self, packet: RequestPacket) -> ResponsePacket:
            return Response.success(packet.id)

    with pytest.raises(TransportError):
        await RequestsOnly().send_event(Event(name="x"))
    async with RequestsOnly() as adapter:  # start/close default to no-ops
        assert adapter.is_available


async def test_websocket_adapter_close_is_idempotent(game: ProtocolServer) -> None:
    adapter = WebSocketAdapter(f"ws://127.0.0.1:{game.port}")
    await adapter.start()
    assert adapter.is_connected
    await adapter.close()
    await adapter.close()
    assert not adapter.is_connected
    with pytest.raises(NotConnectedError):
        await adapter.send_packet(Request(command="x"))
