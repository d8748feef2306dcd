"""Api: typed errors for error Responses, result validation, typed events in and out.

Error mapping and validation are checked against a MockAdapter (the transport is not the
subject) and once end to end against a real server, so the codes are the server's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from siyi_sdk import (
    AdapterManager,
    Api,
    ApiError,
    BadRequestError,
    BusyError,
    Command,
    Connection,
    Event,
    EventModel,
    ForbiddenError,
    HandlerFailedError,
    HandlerTimeoutError,
    HttpAdapter,
    InternalServerError,
    InvalidResultError,
    MockAdapter,
    ProtocolServer,
    RequestPacket,
    RequestTimeoutError,
    Response,
    ResponsePacket,
    TooLargeError,
    UnauthorizedError,
    UnavailableError,
    UnknownCommandError,
    WebSocketAdapter,
)
from siyi_sdk.adapters import Adapter
from siyi_sdk.demo import GameApi, GameStatus, GetPlayerList, GetStatus, PlayerJoined, PlayerUpdate
from tests.proxy import WAIT, running_server, wait_for


def answering(data: Any) -> MockAdapter:
    return MockAdapter(lambda request: Response.success(request.id, data))


def failing(code: int, message: str = "it went wrong") -> MockAdapter:
    return MockAdapter(lambda request: Response.fail(request.id, message, code))


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (1, HandlerFailedError),
        (400, BadRequestError),
        (401, UnauthorizedError),
        (403, ForbiddenError),
        (404, UnknownCommandError),
        (408, HandlerTimeoutError),
        (413, TooLargeError),
        (429, BusyError),
        (500, InternalServerError),
        (503, UnavailableError),
    ],
)
async def test_error_response_raises_its_typed_error(code: int, error_type: type[ApiError]) -> None:
    api = GameApi(failing(code, "details here"))
    with pytest.raises(error_type) as info:
        await api.get_player_list()
    assert type(info.value) is error_type
    assert info.value.code == code
    assert info.value.message == "details here"
    assert info.value.response is not None
    assert info.value.response.code == code
    assert str(info.value) == f"[{code}] details here"


@pytest.mark.parametrize("code", [1000, 1001, 4242])
async def test_application_code_raises_plain_api_error(code: int) -> None:
    api = Api(failing(code, "not your turn"))
    with pytest.raises(ApiError) as info:
        await api.call(GetStatus())
    assert type(info.value) is ApiError
    assert info.value.code == code
    assert info.value.message == "not your turn"


async def test_untyped_request_raises_typed_errors_too() -> None:
    with pytest.raises(UnknownCommandError):
        await Api(failing(404)).request("x")
    with pytest.raises(ApiError) as info:
        await Api(failing(1234)).request("x")
    assert info.value.code == 1234
    assert await Api(answering({"a": 1})).request("x", {"p": 2}) == {"a": 1}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("Steve", id="not-a-list"),
        pytest.param([{"name": "Steve"}], id="wrong-items"),
        pytest.param(None, id="null"),
    ],
)
async def test_result_that_does_not_fit_raises_invalid_result(data: Any) -> None:
    api = GameApi(answering(data))
    with pytest.raises(InvalidResultError, match="get_player_list") as info:
        await api.get_player_list()
    assert info.value.response.data == data
    assert isinstance(info.value, ValueError)


async def test_model_result_is_validated() -> None:
    status = await GameApi(answering({"status": "running", "players": 2, "map": "m"})).get_status()
    assert isinstance(status, GameStatus)
    assert (status.status, status.players) == ("running", 2)
    with pytest.raises(InvalidResultError, match="players"):
        await GameApi(answering({"status": "running"})).get_status()


class Score(BaseModel):
    player: str
    points: int


class GetScore(Command[Score]):
    __command__ = "scores.get"

    player: str
    season: int = 1


class Ping(Command[None]):
    """A command with no params and no result."""


async def test_user_declared_command() -> None:
    seen: list[RequestPacket] = []

    def handler(request: RequestPacket) -> ResponsePacket:
        seen.append(request)
        params = request.params or {}
        if request.command == "ping":
            return Response.success(request.id)
        return Response.success(request.id, {"player": params["player"], "points": 7})

    api = Api(MockAdapter(handler))
    assert await api.call(GetScore(player="Alex")) == Score(player="Alex", points=7)
    await api.call(Ping())
    assert [(r.command, r.params) for r in seen] == [
        ("scores.get", {"player": "Alex", "season": 1}),
        ("ping", {}),
    ]


async def test_call_timeout() -> None:
    never = asyncio.Event()

    async def hangs(request: RequestPacket) -> ResponsePacket:
        await never.wait()
        raise AssertionError("unreachable")

    api = GameApi(MockAdapter(hangs), timeout=0.05)
    with pytest.raises(RequestTimeoutError) as info:
        await api.get_player_list()
    assert isinstance(info.value, asyncio.TimeoutError)
    with pytest.raises(RequestTimeoutError):
        await Api(MockAdapter(hangs)).call(GetStatus(), timeout=0.05)


async def test_typed_events_are_validated_and_invalid_ones_skipped() -> None:
    adapter = answering(None)
    api = Api(adapter)
    joined: list[PlayerJoined] = []
    updates: list[PlayerUpdate] = []

    @api.on_event(PlayerJoined)
    async def on_joined(event: PlayerJoined) -> None:
        joined.append(event)

    api.on_event(PlayerUpdate)(updates.append)  # a sync handler works too

    await adapter.push_event(Event(name="player_joined", data={"player_name": "Herobrine"}))
    await adapter.push_event(Event(name="player_joined", data={"world": "nether"}))  # no name
    await adapter.push_event(Event(name="player_joined", data="not an object"))
    await adapter.push_event(Event(name="player_joined", data=None))
    await adapter.push_event(Event(name="something_else", data={"player_name": "x"}))
    await adapter.push_event(Event(name="player_update", data={"player": "Steve", "hp": 3}))
    await adapter.push_event(
        Event(name="player_joined", data={"player_name": "Alex", "world": "end"})
    )

    assert joined == [
        PlayerJoined(player_name="Herobrine"),
        PlayerJoined(player_name="Alex", world="end"),
    ]
    assert all(type(e) is PlayerJoined for e in joined)
    assert len(updates) == 1
    assert updates[0].player == "Steve"
    assert updates[0].model_dump() == {"player": "Steve", "hp": 3}


async def test_custom_event_model_name() -> None:
    class LevelUp(EventModel):
        __event__: ClassVar[str] = "level.up"
        level: int

    adapter = answering(None)
    api = Api(adapter)
    got: list[LevelUp] = []
    api.on_event(LevelUp)(got.append)
    await adapter.push_event(Event(name="level.up", data={"level": "3"}))
    assert got == [LevelUp(level=3)]
    await api.send_event(LevelUp(level=4))
    assert [(e.name, e.data) for e in adapter.events] == [("level.up", {"level": 4})]


async def test_untyped_send_event() -> None:
    adapter = answering(None)
    await Api(adapter).send_event("raw", [1, 2])
    assert [(e.name, e.data) for e in adapter.events] == [("raw", [1, 2])]


# End to end, against a real server ------------------------------------------------------------


class Refused(ApiError):
    default_code = 1042


@pytest.fixture
async def game() -> AsyncIterator[ProtocolServer]:
    async with running_server() as server:

        @server.command(GetPlayerList)
        async def players(connection: Connection, params: GetPlayerList) -> Any:
            if params.world == "void":
                raise Refused("nobody lives in the void")
            if params.world == "broken":
                return [1, {"not": "a name"}]
            return ["Steve"]

        yield server


def http_to(server: ProtocolServer) -> Adapter:
    return HttpAdapter(f"http://127.0.0.1:{server.port}", request_timeout=WAIT)


def ws_to(server: ProtocolServer) -> Adapter:
    return WebSocketAdapter(f"ws://127.0.0.1:{server.port}", request_timeout=WAIT)


@pytest.mark.parametrize("connect", [http_to, ws_to], ids=["http", "websocket"])
async def test_server_errors_arrive_typed(game: ProtocolServer, connect: Any) -> None:
    async with connect(game) as adapter:
        api = GameApi(adapter)
        assert await api.get_player_list() == ["Steve"]
        with pytest.raises(UnknownCommandError) as unknown:
            await api.request("nope")
        assert unknown.value.code == 404
        with pytest.raises(BadRequestError, match="world") as bad:
            await api.request("get_player_list", {"world": ["not", "a", "string"]})
        assert bad.value.code == 400
        with pytest.raises(ApiError) as refused:
            await api.get_player_list(world="void")
        assert type(refused.value) is ApiError  # the client does not know the server's class
        assert refused.value.code == 1042
        assert refused.value.message == "nobody lives in the void"
        with pytest.raises(InvalidResultError):
            await api.get_player_list(world="broken")


@pytest.mark.parametrize("connect", [http_to, ws_to], ids=["http", "websocket"])
async def test_send_event_reaches_the_server(game: ProtocolServer, connect: Any) -> None:
    seen: list[tuple[str, str, Any]] = []
    arrived = asyncio.Event()

    @game.on_event
    async def record(connection: Connection, event: Event) -> None:
        seen.append((connection.transport, event.name, event.data))
        arrived.set()

    async with connect(game) as adapter:
        await Api(adapter).send_event(PlayerUpdate(player="Steve", hp=3))
        await wait_for(arrived.wait())
    transport = "http" if isinstance(adapter, HttpAdapter) else "websocket"
    assert seen == [(transport, "player_update", {"player": "Steve", "hp": 3})]


async def test_typed_events_from_a_real_server(game: ProtocolServer) -> None:
    async with ws_to(game) as adapter:
        api = GameApi(adapter)
        joined: list[PlayerJoined] = []
        last = asyncio.Event()

        @api.on_event(PlayerJoined)
        def on_joined(event: PlayerJoined) -> None:
            joined.append(event)
            if event.player_name == "last":
                last.set()

        await game.broadcast_event("player_joined", {"player_name": "Herobrine"})
        await game.broadcast_event("player_joined", {"wrong": "shape"})
        await game.broadcast_event("player_joined", {"player_name": "last", "world": "nether"})
        await wait_for(last.wait())  # events arrive in order: the bad one came and went
        assert joined == [
            PlayerJoined(player_name="Herobrine"),
            PlayerJoined(player_name="last", world="nether"),
        ]


async def test_typed_events_through_a_manager_arrive_once() -> None:
    one, two = answering(None), answering(None)
    api = Api(AdapterManager([one, two]))
    got: list[PlayerJoined] = []
    api.on_event(PlayerJoined)(got.append)
    event = Event(name="player_joined", data={"player_name": "Steve"})
    await one.push_event(event)
    await two.push_event(event)  # the same event, carried by a second adapter
    assert got == [PlayerJoined(player_name="Steve")]
