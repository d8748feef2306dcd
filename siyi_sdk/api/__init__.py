"""The typed API: commands as pydantic models, sent through any adapter."""

from .client import Api
from .command import Command, EventModel
from .commands import (
    Echo,
    GameStatus,
    GetPlayerList,
    GetStatus,
    PlayerJoined,
    PlayerUpdate,
    PlayerUpdatedNotification,
    SaveWorld,
)

__all__ = [
    "Api",
    "Command",
    "Echo",
    "EventModel",
    "GameStatus",
    "GetPlayerList",
    "GetStatus",
    "PlayerJoined",
    "PlayerUpdate",
    "PlayerUpdatedNotification",
    "SaveWorld",
]
