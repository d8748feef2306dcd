"""The demo game's commands and events, typed: the built-in `Api` methods use them.

Declare your own the same way: a `Command[ResultType]` subclass whose fields are the params,
and an `EventModel` subclass whose fields are the event's data.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from .command import Command, EventModel

__all__ = [
    "Echo",
    "GameStatus",
    "GetPlayerList",
    "GetStatus",
    "PlayerJoined",
    "PlayerUpdate",
    "PlayerUpdatedNotification",
    "SaveWorld",
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
