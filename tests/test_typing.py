"""Static types of the typed Api, checked by mypy --strict and run for real.

`typing.assert_type` does nothing at run time; mypy (which covers tests/) fails the check when
the inferred type differs. Each assertion also runs here against a MockAdapter, so the values
have the types the annotations promise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import assert_type

from pydantic import BaseModel

from siyi_sdk import (
    AdapterManager,
    Api,
    Command,
    Connection,
    Event,
    MockAdapter,
    ProtocolServer,
    RequestPacket,
    Response,
    ResponsePacket,
)
from siyi_sdk.demo import GameApi, GameStatus, GetPlayerList, GetStatus, PlayerJoined


class Inventory(BaseModel):
    items: dict[str, int]


class GetInventory(Command[Inventory]):
    """A user's own command: params are fields, the result a model."""

    player: str


class CountPlayers(Command[int]):
    world: str = "overworld"


def game(request: RequestPacket) -> ResponsePacket:
    params = request.params or {}
    match request.command:
        case "get_player_list":
            return Response.success(request.id, ["Steve", "Alex"])
        case "get_status":
            return Response.success(request.id, {"status": "running", "players": 2})
        case "get_inventory":
            return Response.success(request.id, {"items": {params["player"]: 1}})
        case "count_players":
            return Response.success(request.id, 2)
    return Response.fail(request.id, "unknown command", 404)


async def test_api_results_are_typed() -> None:
    api = GameApi(MockAdapter(game))

    players = assert_type(await api.get_player_list(), list[str])
    assert players == ["Steve", "Alex"]
    players = assert_type(await api.call(GetPlayerList()), list[str])
    assert players == ["Steve", "Alex"]
    players = assert_type(await api.call(GetPlayerList(world="nether")), list[str])
    assert all(isinstance(p, str) for p in players)

    status = assert_type(await api.get_status(), GameStatus)
    assert status.players == 2
    status = assert_type(await api.call(GetStatus()), GameStatus)
    assert isinstance(status, GameStatus)

    inventory = assert_type(await api.call(GetInventory(player="Steve")), Inventory)
    assert inventory == Inventory(items={"Steve": 1})
    count = assert_type(await api.call(CountPlayers()), int)
    assert count == 2


async def test_api_over_a_manager_is_typed_the_same() -> None:
    api = Api(AdapterManager([MockAdapter(game)]))
    players = assert_type(await api.call(GetPlayerList()), list[str])
    assert players == ["Steve", "Alex"]
    inventory = assert_type(await api.call(GetInventory(player="Alex")), Inventory)
    assert inventory.items == {"Alex": 1}


async def test_typed_event_handler_keeps_its_type() -> None:
    adapter = MockAdapter(game)
    api = Api(adapter)
    got: list[PlayerJoined] = []

    @api.on_event(PlayerJoined)
    async def joined(event: PlayerJoined) -> None:
        name = assert_type(event.player_name, str)
        got.append(event)
        assert name

    await adapter.push_event(Event(name="player_joined", data={"player_name": "H"}))
    assert got == [PlayerJoined(player_name="H")]


async def test_server_route_decorator_keeps_the_handler() -> None:
    server = ProtocolServer(port=0)

    @server.command(GetInventory)
    async def inventory(connection: Connection, params: GetInventory) -> Inventory:
        return Inventory(items={params.player: 1})

    # The decorator returns the handler unchanged: calling it directly keeps its types.
    caller = Connection(
        session="s", principal=None, remote_address=None, headers={}, request_timeout=None
    )
    result = assert_type(await inventory(caller, GetInventory(player="Steve")), Inventory)
    assert result == Inventory(items={"Steve": 1})


class LogLine(BaseModel):
    n: int


class TailLog(Command[LogLine], stream=True):
    """A streaming command: `LogLine` is the type of one item."""

    lines: int = 3


def tail(request: RequestPacket) -> ResponsePacket:
    # A MockAdapter implements send_packet only: a stream comes as one array (§10).
    lines = (request.params or {}).get("lines", 3)
    return Response.success(request.id, [{"n": n} for n in range(lines)])


async def test_streams_are_typed_as_async_iterators_of_their_item() -> None:
    api = Api(MockAdapter(tail))
    stream = assert_type(api.stream(TailLog()), AsyncIterator[LogLine])
    got = [assert_type(line, LogLine) async for line in stream]
    assert got == [LogLine(n=0), LogLine(n=1), LogLine(n=2)]
    lines = assert_type(await api.collect(TailLog(lines=2)), list[LogLine])
    assert lines == [LogLine(n=0), LogLine(n=1)]
