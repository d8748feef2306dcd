"""The demo game's commands and events, typed, and `GameApi`: the `Api` with the game's methods.

They are the demo's, not the SDK's: declare your own the same way, a `Command[ResultType]`
subclass whose fields are the params, an `EventModel` subclass whose fields are the event's
data, and, if you like, methods on a subclass of `Api` that build and send them::

    api = GameApi(WebSocketAdapter("ws://127.0.0.1:8765"))
    players = await api.get_player_list(world="overworld")   # list[str], validated
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from ..api import Api, Command, EventModel

__all__ = [
    "Echo",
    "GameApi",
    "GameStatus",
    "GetPlayerList",
    "GetStatus",
    "PlayerJoined",
    "PlayerSeen",
    "PlayerUpdate",
    "PlayerUpdatedNotification",
    "SaveWorld",
    "WatchPlayers",
]


class Echo(Command[Any]):
    """``echo``: answers with its params (any JSON object)."""

    model_config = ConfigDict(extra="allow")


class GameStatus(BaseModel):
    """The result of ``get_status``."""

    model_config = ConfigDict(extra="allow")

    status: str
    players: int


class GetStatus(Command[GameStatus]):
    """``get_status``: the game's status."""


class GetPlayerList(Command[list[str]]):
    """``get_player_list``: the names of the players in a world."""

    world: str = "overworld"


class SaveWorld(Command[int]):
    """``save_world``: write a world to disk (slow); the result counts the saves done so far."""

    world: str = "overworld"


class PlayerSeen(BaseModel):
    """One item of `WatchPlayers`: a player, and the world they are in."""

    world: str
    player_name: str


class WatchPlayers(Command[PlayerSeen], stream=True):
    """``watch_players``, a streaming command: every player in every world, one by one.

    With `follow`, it goes on with each player who joins, as they join, until the caller stops.
    """

    follow: bool = False


class PlayerJoined(EventModel):
    """``player_joined``: a player entered the game."""

    player_name: str
    world: str = "overworld"


class PlayerUpdate(EventModel):
    """``player_update``: a client reports a change to a player."""

    model_config = ConfigDict(extra="allow")

    player: str


class PlayerUpdatedNotification(EventModel):
    """``player_updated_notification``: the server relays a `PlayerUpdate` to other clients."""

    model_config = ConfigDict(extra="allow")

    player: str


class GameApi(Api):
    """The typed `Api` with a method per command of the demo game.

    A subclass of your own looks the same: each method builds its `Command` and awaits
    `call`, which sends it, raises the typed `ApiError` for an error answer and returns the
    validated result.
    """

    async def echo(self, data: dict[str, Any]) -> Any:
        """``echo``: the server answers with `data`."""
        return await self.call(Echo.model_validate(data))

    async def get_status(self) -> GameStatus:
        """``get_status``: the game's status."""
        return await self.call(GetStatus())

    async def get_player_list(self, world: str = "overworld") -> list[str]:
        """``get_player_list``: the players in `world`."""
        return await self.call(GetPlayerList(world=world))

    async def save_world(self, world: str = "overworld") -> int:
        """``save_world``: save `world` (slow); returns how many saves of it were done."""
        return await self.call(SaveWorld(world=world))
