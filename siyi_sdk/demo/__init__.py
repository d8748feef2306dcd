"""The demo game: its typed commands, the server behind ``siyi serve``, the tour of ``siyi demo``.

- `siyi_sdk.demo.commands`: the game's commands and events (`GetPlayerList`, `PlayerJoined`,
  ...) and `GameApi`, the `Api` subclass with a method per command. A user's own commands and
  Api subclass look the same.
- `siyi_sdk.demo.game`: `create_game_server()` and its `GameState`.
- `siyi_sdk.demo.tour`: `run_demo()`, the narrated run of a server and two clients.

The SDK itself never imports this package (only the ``siyi`` command does).
"""

from .commands import (
    Echo,
    GameApi,
    GameStatus,
    GetPlayerList,
    GetStatus,
    PlayerJoined,
    PlayerUpdate,
    PlayerUpdatedNotification,
    SaveWorld,
)
from .game import CLIENT_NAME_HEADER, DEFAULT_WORLDS, UNKNOWN_WORLD, GameState, create_game_server
from .tour import (
    DEMO_STEPS,
    DemoClient,
    DemoContext,
    DemoFailedError,
    DemoStep,
    Narrate,
    run_demo,
)

__all__ = [
    "CLIENT_NAME_HEADER",
    "DEFAULT_WORLDS",
    "DEMO_STEPS",
    "UNKNOWN_WORLD",
    "DemoClient",
    "DemoContext",
    "DemoFailedError",
    "DemoStep",
    "Echo",
    "GameApi",
    "GameState",
    "GameStatus",
    "GetPlayerList",
    "GetStatus",
    "Narrate",
    "PlayerJoined",
    "PlayerUpdate",
    "PlayerUpdatedNotification",
    "SaveWorld",
    "create_game_server",
    "run_demo",
]
