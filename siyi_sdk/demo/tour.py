"""The narrated tour behind ``siyi demo``: the game server and its clients, told in English.

`run_demo()` runs the demo game server (`siyi_sdk.demo.game`) and two clients, alice and bob,
in one process on a free loopback port, and tells in plain English what happens at each step.
It needs no external service and ends by itself within seconds.

The tour is a sequence of step functions (`DEMO_STEPS`) over a shared `DemoContext`, so more
steps (a failover section, say) slot in with ``run_demo(steps=(*DEMO_STEPS[:-1], mine,
DEMO_STEPS[-1]))``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from ..adapters import AdapterManager, HttpAdapter, WebSocketAdapter
from ..client import ProtocolClient
from ..errors import ApiError, SiyiError, error_for_response
from ..packets import Event, Request, Response, StatusCode, encode
from ..server import ProtocolServer
from ..testing import TcpProxy
from .commands import (
    GameApi,
    GameStatus,
    GetPlayerList,
    GetStatus,
    PlayerJoined,
    PlayerUpdate,
    PlayerUpdatedNotification,
    SaveWorld,
)
from .game import CLIENT_NAME_HEADER, UNKNOWN_WORLD, GameState, create_game_server

__all__ = [
    "DEMO_STEPS",
    "DemoClient",
    "DemoContext",
    "DemoFailedError",
    "DemoStep",
    "Narrate",
    "run_demo",
]

logger = logging.getLogger(__name__)

Narrate: TypeAlias = Callable[[str], object]
"""Where the tour's sentences go: ``print``, ``logger.info``, a list's ``append``..."""


class DemoFailedError(SiyiError):
    """A step of the tour did not see what it expected (or not in time)."""


@dataclass
class DemoClient:
    """One of the tour's clients, and everything the server sent it.

    Attributes:
        name: how the tour (and the server) calls it.
        client: its `ProtocolClient`.
        api: the typed `GameApi` over that client.
        players: what it answers to `get_status` (``{"status": "running", "players": N}``).
        received: every event it got, in order.
        asked: every request the server sent it, in order.
    """

    name: str
    client: ProtocolClient
    api: GameApi
    players: int
    received: list[Event] = field(default_factory=list)
    asked: list[Request] = field(default_factory=list)
    _inbox: asyncio.Queue[Event] = field(default_factory=asyncio.Queue, init=False, repr=False)

    @classmethod
    def create(cls, name: str, url: str, *, players: int, request_timeout: float) -> DemoClient:
        """Build the client (not connected), with its handlers registered."""
        client = ProtocolClient(
            url, request_timeout=request_timeout, headers={CLIENT_NAME_HEADER: name}
        )
        demo = cls(name, client, GameApi(client), players)
        client.on_request(demo._answer)
        client.on_event(demo._record)
        return demo

    async def _answer(self, request: Request) -> Response:
        self.asked.append(request)
        if request.command == GetStatus.command_name():
            return Response.success(request.id, GameStatus(status="running", players=self.players))
        return Response.fail(
            request.id,
            f"{self.name} does not know {request.command!r}",
            StatusCode.UNKNOWN_COMMAND,
        )

    async def _record(self, event: Event) -> None:
        self.received.append(event)
        self._inbox.put_nowait(event)

    async def next_event(self, name: str) -> Event:
        """Wait for the next event called `name` (earlier events of other names are passed)."""
        while True:
            event = await self._inbox.get()
            if event.name == name:
                return event

    def got(self, name: str) -> bool:
        """True if it ever received an event called `name`."""
        return any(event.name == name for event in self.received)


@dataclass
class DemoContext:
    """What the tour's steps share.

    Attributes:
        server: the running game server.
        state: its `GameState`.
        url: its WebSocket URL (``ws://127.0.0.1:<port>``).
        http_url: its HTTP base URL (``POST {http_url}/general``).
        narrate: where sentences go.
        stack: closes what the steps open (clients, adapters) when the tour ends.
        clients: the clients by name (``alice`` and ``bob`` once `connect_clients` ran).
        request_timeout: seconds every request of the tour may take.
    """

    server: ProtocolServer
    state: GameState
    url: str
    http_url: str
    narrate: Narrate
    stack: contextlib.AsyncExitStack
    clients: dict[str, DemoClient] = field(default_factory=dict)
    request_timeout: float = 5.0

    @property
    def alice(self) -> DemoClient:
        """The first client."""
        return self.clients["alice"]

    @property
    def bob(self) -> DemoClient:
        """The second client."""
        return self.clients["bob"]


DemoStep: TypeAlias = Callable[[DemoContext], Awaitable[None]]
"""One section of the tour; its docstring's first line is the section's title."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailedError(message)


async def connect_clients(ctx: DemoContext) -> None:
    """Alice and bob connect."""
    for name, players in (("alice", 5), ("bob", 3)):
        demo = DemoClient.create(
            name, ctx.url, players=players, request_timeout=ctx.request_timeout
        )
        await ctx.stack.enter_async_context(demo.client)
        _expect(demo.client.is_connected, f"{name} could not connect to {ctx.url}")
        ctx.clients[name] = demo
        ctx.narrate(f"{name} connected to {ctx.url} (a ProtocolClient, used as `async with`).")
    await ctx.state.wait_until(lambda: len(ctx.state.names) == 2)
    ctx.narrate(f"The server sees {len(ctx.server.connections)} WebSocket connections.")


async def status_on_connect(ctx: DemoContext) -> None:
    """The server asks each new client for its status."""
    await ctx.state.wait_until(lambda: {"alice", "bob"} <= ctx.state.client_status.keys())
    for demo in (ctx.alice, ctx.bob):
        status = ctx.state.client_status[demo.name]
        ctx.narrate(
            f"On connect, the server sent {demo.name} a 'get_status' request; "
            f"{demo.name} answered {status}."
        )


async def player_list(ctx: DemoContext) -> None:
    """Alice asks for the players of a world."""
    request = GetPlayerList(world="overworld").to_request()
    ctx.narrate(f"alice -> server: {encode(request).decode()}")
    response = await ctx.alice.client.send_packet(request)
    ctx.narrate(f"server -> alice: {encode(response).decode()}")
    _expect(response.ok and response.data == ["Steve", "Alex"], f"unexpected answer {response}")
    ctx.narrate(f"So the overworld holds {response.data}.")
    try:
        await ctx.alice.api.get_player_list(world="moon")
    except ApiError as exc:
        _expect(exc.code == UNKNOWN_WORLD, f"expected code {UNKNOWN_WORLD}, got {exc.code}")
        ctx.narrate(
            f"alice asks for world 'moon': the server answers error {exc.code}: {exc.message}"
        )
    else:
        raise DemoFailedError("the server knew a world called 'moon'")


async def player_joined(ctx: DemoContext) -> None:
    """Alice announces a player; bob hears of it."""
    event = PlayerJoined(player_name="Herobrine")
    await ctx.alice.api.send_event(event)
    ctx.narrate(f"alice sends the event player_joined {event.model_dump()}.")
    heard = await ctx.bob.next_event(PlayerJoined.event_name())
    ctx.narrate(f"bob receives player_joined from the server: {heard.data}.")
    players = await ctx.bob.api.get_player_list(world="overworld")
    _expect("Herobrine" in players, f"Herobrine is not in the overworld: {players}")
    ctx.narrate(f"bob asks get_player_list: the overworld now holds {players}.")


async def player_update(ctx: DemoContext) -> None:
    """Bob updates a player; alice is notified, bob is not."""
    update = PlayerUpdate(player="Herobrine", health=95)
    await ctx.bob.api.send_event(update)
    ctx.narrate(f"bob sends the event player_update {update.model_dump()}.")
    notice = await ctx.alice.next_event(PlayerUpdatedNotification.event_name())
    ctx.narrate(f"alice receives player_updated_notification: {notice.data}.")
    # A round trip to bob after the broadcast: anything sent to him before it has arrived.
    await ctx.bob.api.echo({})
    _expect(
        not ctx.bob.got(PlayerUpdatedNotification.event_name()),
        "bob was sent his own update",
    )
    ctx.narrate("bob, who sent the update, is left out of the broadcast: he received nothing.")


async def unknown_command(ctx: DemoContext) -> None:
    """A request for a command nobody handles."""
    response = await ctx.alice.client.send_request("teleport", {"to": "the_end"})
    _expect(response.code == 404, f"expected code 404, got {response}")
    ctx.narrate(
        f"alice sends the unknown command 'teleport': error {response.code}: {response.error} "
        f"(raised as {type(error_for_response(response)).__name__} by the typed API)."
    )


async def broadcast_request(ctx: DemoContext) -> None:
    """The server asks every client at once."""
    answers = await ctx.server.broadcast_request(
        GetStatus.command_name(), timeout=ctx.request_timeout
    )
    ctx.narrate(f"The server broadcasts 'get_status' and collects {len(answers)} answers:")
    for connection, answer in answers.items():
        name = ctx.state.name_of(connection)
        if isinstance(answer, Exception):
            raise DemoFailedError(f"{name} did not answer: {answer!r}")
        _expect(answer.ok, f"{name} answered with an error: {answer}")
        ctx.narrate(f"  {name}: {answer.data}")
    _expect(len(answers) == 2, f"expected 2 answers, got {len(answers)}")


async def failover(ctx: DemoContext) -> None:
    """Failover: WebSocket first, HTTP second, and back."""
    narrate = ctx.narrate
    proxy = await ctx.stack.enter_async_context(TcpProxy(ctx.server.port))
    websocket = WebSocketAdapter(
        proxy.url, priority=10, reconnect_interval=0.05, max_reconnect_interval=0.2
    )
    http = HttpAdapter(ctx.http_url)
    manager = await ctx.stack.enter_async_context(AdapterManager([websocket, http]))
    api = GameApi(manager, timeout=ctx.request_timeout)
    narrate(
        "carol uses an AdapterManager: a WebSocket (priority 10, through a loopback proxy we can "
        "cut) and HTTP POST /general (priority 0), behind one typed Api."
    )
    await websocket.wait_connected()
    players = await api.get_player_list()
    narrate(f"carol: get_player_list() -> {players}, carried by {_carrier(manager)}.")

    narrate(f"carol asks save_world, which takes {ctx.state.save_seconds:g} s on the server...")
    save = asyncio.create_task(api.call(SaveWorld(world="overworld")))
    await ctx.state.wait_until(lambda: ctx.state.saving > 0)
    await proxy.cut()
    narrate("...and while it runs, the WebSocket path is cut (the proxy resets the connection).")
    saves = await save
    narrate(
        f"carol still gets her answer ({saves} save so far), carried by {_carrier(manager)}: the "
        "manager retried the same request id over HTTP, and the server, which runs an id at "
        "most once, waited for the first run instead of saving twice."
    )
    _expect(ctx.state.saves.get("overworld") == 1, f"saved {ctx.state.saves}, expected once")
    _expect(manager.last_adapter is http, "expected the answer to come over HTTP")
    players = await api.get_player_list(world="nether")
    narrate(
        f"With the WebSocket down, the next call goes straight to {_carrier(manager)}: "
        f"get_player_list('nether') -> {players}."
    )
    await proxy.resume()
    await websocket.wait_connected()
    narrate("The path comes back; the WebSocket reconnects by itself.")
    await api.get_status()
    _expect(manager.last_adapter is websocket, "expected traffic back on the WebSocket")
    narrate(f"The next call, get_status(), is carried by {_carrier(manager)} again.")
    await manager.close()


def _carrier(manager: AdapterManager) -> str:
    adapter = manager.last_adapter
    return "nothing" if adapter is None else type(adapter).__name__


async def shutdown(ctx: DemoContext) -> None:
    """Clean shutdown."""
    for demo in ctx.clients.values():
        await demo.client.disconnect()
        ctx.narrate(f"{demo.name} disconnects.")
    await ctx.state.wait_until(lambda: not ctx.state.names)
    await ctx.server.stop()
    ctx.narrate("The server has no connection left and stops: the port is released.")


DEMO_STEPS: Final[tuple[DemoStep, ...]] = (
    connect_clients,
    status_on_connect,
    player_list,
    player_joined,
    player_update,
    unknown_command,
    broadcast_request,
    failover,
    shutdown,
)
"""The tour, in order. `shutdown` should stay last."""


def _title(step: DemoStep) -> str:
    doc = step.__doc__ or str(getattr(step, "__name__", "step"))
    return doc.strip().splitlines()[0].rstrip(".")


async def run_demo(
    *,
    narrate: Narrate = logger.info,
    steps: Sequence[DemoStep] = DEMO_STEPS,
    step_timeout: float = 5.0,
) -> None:
    """Run the game server and two clients in this process, narrating each step.

    The server listens on a free loopback port; everything is closed when the tour ends,
    whether it succeeds or not.

    Args:
        narrate: called with each sentence of the story (default: this module's logger, INFO).
        steps: the sections of the tour, run in order (default `DEMO_STEPS`).
        step_timeout: seconds each step, and each request in it, may take.

    Raises:
        DemoFailedError: a step did not see what it expected, or ran past `step_timeout`.
        OSError: the loopback port could not be bound.
    """
    state = GameState()
    server = create_game_server(
        "127.0.0.1", 0, state=state, request_timeout=step_timeout, shutdown_timeout=step_timeout
    )
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(server)
        ctx = DemoContext(
            server=server,
            state=state,
            url=f"ws://127.0.0.1:{server.port}",
            http_url=f"http://127.0.0.1:{server.port}",
            narrate=narrate,
            stack=stack,
            request_timeout=step_timeout,
        )
        narrate(f"The demo game server listens on {ctx.url} (worlds: {', '.join(state.worlds)}).")
        for number, step in enumerate(steps, 1):
            narrate(f"[{number}/{len(steps)}] {_title(step)}")
            try:
                async with asyncio.timeout(step_timeout):
                    await step(ctx)
            except TimeoutError:
                raise DemoFailedError(
                    f"step {number} ({_title(step)}) did not finish within {step_timeout:g} s"
                ) from None
    narrate("The demo is over.")
