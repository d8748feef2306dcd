"""The demo game server behind ``siyi serve``: players in worlds, an echo, a status, events.

`create_game_server()` builds a `ProtocolServer` whose typed routes answer the commands of
`siyi_sdk.demo.commands` and whose event handler relays player events between clients;
`GameState` is what it knows, with `wait_until` for tests and the tour to wait on a change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Final

from pydantic import ValidationError

from ..errors import ApiError, TransportError
from ..packets import Event
from ..server import Connection, ProtocolServer
from .commands import (
    Echo,
    GameStatus,
    GetPlayerList,
    GetStatus,
    PlayerJoined,
    PlayerSeen,
    PlayerUpdate,
    PlayerUpdatedNotification,
    SaveWorld,
    WatchPlayers,
)

__all__ = [
    "CLIENT_NAME_HEADER",
    "DEFAULT_WORLDS",
    "UNKNOWN_WORLD",
    "GameState",
    "create_game_server",
]

logger = logging.getLogger(__name__)

UNKNOWN_WORLD: Final = 1004
"""The application code `get_player_list` answers for a world the game does not have."""


CLIENT_NAME_HEADER: Final = "X-Demo-Client"
"""The upgrade header a client may name itself with; the server logs and reports that name."""

DEFAULT_WORLDS: Final[Mapping[str, tuple[str, ...]]] = {
    "overworld": ("Steve", "Alex"),
    "nether": ("Piglin",),
    "the_end": (),
}


class GameState:
    """What the game server knows: players per world, and its clients.

    Handlers change it; `wait_until` lets a caller (the demo, a test) wait for a change.

    Args:
        worlds: the worlds and their players at the start (default `DEFAULT_WORLDS`).

    Attributes:
        worlds: the players in each world.
        names: the name of each connected WebSocket client.
        client_status: what each connected client answered to `get_status`, by name.
        saves: how many times each world was saved.
        saving: how many `save_world` runs are under way.
        save_seconds: how long one `save_world` takes.
    """

    def __init__(self, worlds: Mapping[str, Iterable[str]] | None = None) -> None:
        source = DEFAULT_WORLDS if worlds is None else worlds
        self.worlds: dict[str, list[str]] = {name: list(ps) for name, ps in source.items()}
        self.names: dict[Connection, str] = {}
        self.client_status: dict[str, Any] = {}
        self.saves: dict[str, int] = {}
        self.saving = 0
        self.save_seconds = 0.5
        self._changed = asyncio.Condition()

    @property
    def player_count(self) -> int:
        """How many players are in all the worlds together."""
        return sum(len(players) for players in self.worlds.values())

    def name_of(self, connection: Connection) -> str:
        """The client's name: its `CLIENT_NAME_HEADER`, else its address."""
        name = self.names.get(connection)
        if name is not None:
            return name
        header = connection.headers.get(CLIENT_NAME_HEADER)
        if header:
            return header
        if connection.remote_address is not None:
            host, port = connection.remote_address
            return f"{host}:{port}"
        return f"connection #{connection.id}"

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` is true; it is checked after every change."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def notify(self) -> None:
        """Wake everyone in `wait_until`: call after changing the state."""
        async with self._changed:
            self._changed.notify_all()


def create_game_server(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    state: GameState | None = None,
    **server_kwargs: Any,
) -> ProtocolServer:
    """Build the demo game server (not started).

    Commands: ``echo`` (answers its params), ``get_status`` (`GameStatus`), ``get_player_list``
    (``{"world": "overworld"}`` -> ``list[str]``; an unknown world gets code `UNKNOWN_WORLD`),
    ``save_world`` (slow), ``watch_players`` (streams `PlayerSeen` items; with ``{"follow":
    true}`` it goes on with each player who joins). Events: ``player_joined`` adds the player
    and is relayed to the other clients; ``player_update`` is relayed to the other clients as
    ``player_updated_notification``. On connect, the server asks the client for its
    ``get_status`` (as the seed's server does) and keeps the answer in
    `GameState.client_status`.

    Args:
        host: the interface to bind.
        port: the TCP port; 0 picks a free one (read `server.port` once started).
        state: the game's state (a fresh `GameState` by default); pass one to watch it.
        **server_kwargs: passed on to `ProtocolServer` (``heartbeat_interval``, ...).

    Returns:
        The server, ready for ``await server.start()`` or ``async with server:``.
    """
    game = GameState() if state is None else state
    server = ProtocolServer(host, port, **server_kwargs)
    # What the game sends its clients, so that /about and /asyncapi.json list both directions.
    server.declare_event(PlayerJoined)
    server.declare_event(PlayerUpdatedNotification)
    server.declare_command(GetStatus)

    @server.command(Echo)
    async def echo(connection: Connection, params: Echo) -> dict[str, Any]:
        return params.params()

    @server.command(GetStatus)
    async def get_status(connection: Connection, params: GetStatus) -> GameStatus:
        return GameStatus(status="running", players=game.player_count)

    @server.command(GetPlayerList)
    async def get_player_list(connection: Connection, params: GetPlayerList) -> list[str]:
        players = game.worlds.get(params.world)
        if players is None:
            known = ", ".join(sorted(game.worlds))
            raise ApiError(
                f"unknown world: {params.world!r} (known worlds: {known})", code=UNKNOWN_WORLD
            )
        return list(players)

    @server.command(SaveWorld)
    async def save_world(connection: Connection, params: SaveWorld) -> int:
        if params.world not in game.worlds:
            raise ApiError(f"unknown world: {params.world!r}", code=UNKNOWN_WORLD)
        game.saving += 1
        await game.notify()
        try:
            await asyncio.sleep(game.save_seconds)  # the slow part: writing to disk
        finally:
            game.saving -= 1
        game.saves[params.world] = game.saves.get(params.world, 0) + 1
        await game.notify()
        return game.saves[params.world]

    @server.command(WatchPlayers)
    async def watch_players(
        connection: Connection, params: WatchPlayers
    ) -> AsyncIterator[PlayerSeen]:
        seen: set[tuple[str, str]] = set()

        def unseen() -> list[tuple[str, str]]:
            return [
                (w, p) for w, players in game.worlds.items() for p in players if (w, p) not in seen
            ]

        while True:
            for world, player in unseen():
                seen.add((world, player))
                yield PlayerSeen(world=world, player_name=player)
            if not params.follow:
                return
            await game.wait_until(lambda: bool(unseen()))

    @server.on_event
    async def on_event(connection: Connection, event: Event) -> None:
        name = game.name_of(connection)
        if event.name == PlayerJoined.event_name():
            try:
                joined = PlayerJoined.model_validate(event.data)
            except ValidationError as exc:
                logger.warning("game: %s sent an invalid %s: %s", name, event.name, exc)
                return
            players = game.worlds.setdefault(joined.world, [])
            if joined.player_name not in players:
                players.append(joined.player_name)
            logger.info("game: %s joined %s (via %s)", joined.player_name, joined.world, name)
            await game.notify()
            await server.broadcast_event(
                PlayerJoined.event_name(), joined.model_dump(mode="json"), exclude={connection}
            )
        elif event.name == PlayerUpdate.event_name():
            try:
                update = PlayerUpdate.model_validate(event.data)
            except ValidationError as exc:
                logger.warning("game: %s sent an invalid %s: %s", name, event.name, exc)
                return
            logger.info("game: %s updated %s; telling the others", name, update.player)
            await server.broadcast_event(
                PlayerUpdatedNotification.event_name(),
                update.model_dump(mode="json"),
                exclude={connection},
            )
        else:
            logger.info("game: %s sent event %r (ignored)", name, event.name)

    @server.on_connect
    async def on_connect(connection: Connection) -> None:
        if not connection.is_connected:  # gone already: on_disconnect ran first
            return
        name = game.names[connection] = game.name_of(connection)
        logger.info("game: %s connected; asking for its status", name)
        await game.notify()
        try:
            response = await connection.send_request(GetStatus.command_name())
        except (TransportError, TimeoutError) as exc:
            logger.warning("game: %s did not answer get_status: %s", name, exc)
            return
        if response.ok:
            logger.info("game: %s reports %s", name, response.data)
            if connection in game.names:  # it may have left meanwhile
                game.client_status[name] = response.data
                await game.notify()
        else:
            logger.info(
                "game: %s answered get_status with [%d] %s", name, response.code, response.error
            )

    @server.on_disconnect
    async def on_disconnect(connection: Connection) -> None:
        name = game.names.pop(connection, None)
        if name is not None:
            game.client_status.pop(name, None)
            logger.info("game: %s disconnected", name)
            await game.notify()

    return server
