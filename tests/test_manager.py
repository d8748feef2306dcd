"""AdapterManager: choosing by mode and priority, failing over, and receiving through adapters.

Sending is checked with small in-process adapters where only the manager's choices matter, and
with real sockets where a transport's own failure is what the manager must react to.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from siyi_sdk import (
    Adapter,
    AdapterManager,
    AdapterMode,
    AllAdaptersFailedError,
    Api,
    Connection,
    Event,
    HttpAdapter,
    MockAdapter,
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
from siyi_sdk.demo import GameApi, GetPlayerList
from tests.conftest import OneShotHttp, wait_until
from tests.proxy import WAIT, Gate, running_server, wait_for


class Named(MockAdapter):
    """A MockAdapter with a name of its own, so errors and orders can be told apart."""

    def __init__(self, label: str, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.label = label

    @property
    def name(self) -> str:
        return self.label


def answers(value: Any) -> Callable[[RequestPacket], ResponsePacket]:
    return lambda request: Response.success(request.id, value)


def fails(message: str, log: list[str] | None = None) -> Callable[[RequestPacket], ResponsePacket]:
    def handler(request: RequestPacket) -> ResponsePacket:
        if log is not None:
            log.append(message)
        raise ConnectionError(message)

    return handler


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def parked(delay: float) -> None:
    """A reconnect sleep that never ends: the adapter stays down until closed."""
    await asyncio.Event().wait()


@pytest.fixture
async def game() -> AsyncIterator[ProtocolServer]:
    async with running_server() as server:

        @server.command(GetPlayerList)
        async def players(connection: Connection, params: GetPlayerList) -> list[str]:
            return [params.world, connection.transport]

        yield server


# Choosing -------------------------------------------------------------------------------------


async def test_ten_line_custom_adapter_through_the_manager(game: ProtocolServer) -> None:
    mine = OneShotHttp()
    mine.url = f"http://127.0.0.1:{game.port}/general"
    down = WebSocketAdapter(f"ws://127.0.0.1:{free_port()}", priority=10, sleep=parked)
    async with AdapterManager([down, mine]) as manager:
        api = GameApi(manager)
        assert await api.get_player_list(world="nether") == ["nether", "http"]
        assert manager.last_adapter is mine
        with pytest.raises(UnknownCommandError):
            await api.request("nope")


async def test_receive_only_adapter_is_never_asked_to_send() -> None:
    class Listener(Adapter):
        mode = AdapterMode.RECEIVE
        priority = 100
        asked = 0

        async def send_packet(self, packet: RequestPacket) -> ResponsePacket:
            self.asked += 1
            raise AssertionError("a RECEIVE-only adapter was asked to send")

        async def send_event(self, event: Event) -> None:
            self.asked += 1
            raise AssertionError("a RECEIVE-only adapter was asked to send")

    listener = Listener()
    sender = Named("sender", answers("ok"), mode=AdapterMode.SEND)
    manager = AdapterManager([listener, sender])
    assert (await manager.send_packet(Request(command="x"))).data == "ok"
    await manager.send_event(Event(name="e"))
    assert listener.asked == 0
    assert len(sender.requests) == 1
    assert len(sender.events) == 1
    assert manager.last_adapter is sender

    # It still receives: what it hands up reaches the manager's handlers.
    got: list[str] = []
    manager.on_event(lambda event: got.append(event.name))
    await listener.handle_event(Event(name="from-listener"))
    assert got == ["from-listener"]

    only_listening = AdapterManager([Listener()])
    assert not only_listening.is_available
    with pytest.raises(AllAdaptersFailedError, match="no adapter can send") as info:
        await only_listening.send_packet(Request(command="x"))
    assert info.value.errors == []


async def test_priority_higher_first_ties_in_order_added() -> None:
    tried: list[str] = []
    manager = AdapterManager()
    for label, priority in [("a", 0), ("b", 5), ("c", 5), ("d", 10), ("e", 5), ("f", -3)]:
        manager.add(Named(label, fails(label, tried), priority=priority))
    assert [a.name for a in manager.adapters] == ["a", "b", "c", "d", "e", "f"]

    with pytest.raises(AllAdaptersFailedError) as info:
        await manager.send_packet(Request(command="x"))
    assert tried == ["d", "b", "c", "e", "a", "f"]
    assert [name for name, _ in info.value.errors] == tried


async def test_best_working_adapter_answers() -> None:
    low = Named("low", answers("low"), priority=0)
    tie_first = Named("tie-first", answers("tie-first"), priority=5)
    tie_second = Named("tie-second", answers("tie-second"), priority=5)
    manager = AdapterManager([low, tie_first, tie_second])
    for _ in range(3):
        assert (await manager.send_packet(Request(command="x"))).data == "tie-first"
    assert manager.last_adapter is tie_first
    assert tie_second.requests == []
    assert low.requests == []


async def test_traffic_returns_to_the_preferred_adapter() -> None:
    broken = True

    def flaky(request: RequestPacket) -> ResponsePacket:
        if broken:
            raise ConnectionError("down for now")
        return Response.success(request.id, "preferred")

    preferred = Named("preferred", flaky, priority=1)
    backup = Named("backup", answers("backup"))
    manager = AdapterManager([preferred, backup])
    request = Request(command="x")
    assert (await manager.send_packet(request)).data == "backup"
    # The retry carried the very same packet, same id.
    assert [r.id for r in preferred.requests] == [request.id]
    assert [r.id for r in backup.requests] == [request.id]
    assert manager.last_adapter is backup
    broken = False
    assert (await manager.send_packet(Request(command="x"))).data == "preferred"
    assert manager.last_adapter is preferred


async def test_all_down_fails_promptly_naming_every_cause() -> None:
    port = free_port()
    ws = WebSocketAdapter(f"ws://127.0.0.1:{port}", priority=4, sleep=parked)
    http = HttpAdapter(f"http://127.0.0.1:{port}", priority=3)
    mine = OneShotHttp()
    mine.url = f"http://127.0.0.1:{port}/general"
    mine.priority = 2
    mock = Named("cable", fails("the cable is cut"), priority=1)
    async with AdapterManager([mock, mine, http, ws]) as manager:
        assert not ws.is_connected  # its first attempt was refused
        started = time.perf_counter()
        with pytest.raises(AllAdaptersFailedError) as info:
            await manager.send_packet(Request(command="x"))
        assert time.perf_counter() - started < 1.0

    error = info.value
    assert isinstance(error, TransportError)
    assert isinstance(error, ConnectionError)
    names = [name for name, _ in error.errors]
    assert names == [ws.name, http.name, mine.name, "cable"]
    causes = dict(error.errors)
    # A WebSocket known to be down is skipped, reported with the error of its last attempt.
    assert isinstance(causes[ws.name], aiohttp.ClientConnectionError)
    assert isinstance(causes[http.name], TransportError)
    assert isinstance(causes[mine.name], aiohttp.ClientConnectionError)
    assert str(causes["cable"]) == "the cable is cut"
    message = str(error)
    for name in names:
        assert name in message
    assert "Cannot connect" in message
    assert "the cable is cut" in message
    assert str(port) in message
    assert manager.last_adapter is None


async def test_error_response_is_returned_never_failed_over(game: ProtocolServer) -> None:
    backup = Named("backup", answers("should not be used"))
    http = HttpAdapter(f"http://127.0.0.1:{game.port}", priority=10)
    async with AdapterManager([backup, http]) as manager:
        response = await manager.send_packet(Request(command="nope"))
        assert not response.ok
        assert response.code == 404
        assert manager.last_adapter is http

        with pytest.raises(UnknownCommandError):
            await Api(manager).request("nope")
        # Bad params are an answer too.
        bad = await manager.send_packet(Request(command="get_player_list", params={"world": 1}))
        assert bad.code == 400
    assert backup.requests == []


async def test_handler_failure_from_a_mock_is_not_failed_over() -> None:
    first = Named("first", lambda r: Response.fail(r.id, "no such player", 1001), priority=1)
    second = Named("second", answers("never"))
    manager = AdapterManager([first, second])
    response = await manager.send_packet(Request(command="x"))
    assert (response.status, response.code, response.error) == ("error", 1001, "no such player")
    assert second.requests == []


async def test_request_timeout_is_not_failed_over() -> None:
    def too_slow(request: RequestPacket) -> ResponsePacket:
        raise RequestTimeoutError("no answer in time")

    first = Named("first", too_slow, priority=1)
    second = Named("second", answers("never"))
    manager = AdapterManager([first, second])
    with pytest.raises(RequestTimeoutError, match="no answer in time"):
        await manager.send_packet(Request(command="x"))
    assert second.requests == []


async def test_request_timeout_on_a_real_socket_is_not_failed_over(game: ProtocolServer) -> None:
    gate = Gate()

    @game.command("slow")
    async def slow(connection: Connection, params: dict[str, Any]) -> None:
        await gate.pass_through(None)

    ws = WebSocketAdapter(f"ws://127.0.0.1:{game.port}", priority=1, request_timeout=0.05)
    backup = Named("backup", answers("never"))
    async with AdapterManager([ws, backup]) as manager:
        with pytest.raises(RequestTimeoutError):
            await manager.send_packet(Request(command="slow"))
        gate.open()
    assert backup.requests == []


async def test_overall_timeout_across_adapters() -> None:
    never = asyncio.Event()

    async def hangs(request: RequestPacket) -> ResponsePacket:
        await never.wait()
        raise AssertionError("unreachable")

    first = Named("first", hangs, priority=1)
    second = Named("second", answers("never"))
    manager = AdapterManager([first, second])
    with pytest.raises(RequestTimeoutError):
        await manager.send_packet(Request(command="x"), timeout=0.05)
    with pytest.raises(RequestTimeoutError):
        await Api(manager, timeout=0.05).request("x")
    assert second.requests == []


async def test_events_fail_over_like_requests() -> None:
    first = Named("first", answers(None), priority=1)

    async def refuse(event: Event) -> None:
        raise ConnectionError("no route")

    first.send_event = refuse  # type: ignore[method-assign]
    second = Named("second", answers(None))
    manager = AdapterManager([first, second])
    await manager.send_event(Event(name="e", data=1))
    assert [(e.name, e.data) for e in second.events] == [("e", 1)]
    assert manager.last_adapter is second


async def test_adapter_added_after_start_is_started(game: ProtocolServer) -> None:
    async with AdapterManager() as manager:
        ws = manager.add(WebSocketAdapter(f"ws://127.0.0.1:{game.port}"))
        assert isinstance(ws, WebSocketAdapter)
        await ws.wait_connected(WAIT)
        assert await GameApi(manager).get_player_list() == ["overworld", "websocket"]
    assert not ws.is_connected  # closed with the manager


# Receiving ------------------------------------------------------------------------------------


async def test_same_event_on_two_mock_adapters_reaches_the_manager_once() -> None:
    one = Named("one", answers(None))
    two = Named("two", answers(None))
    manager = AdapterManager([one, two])
    got: list[str] = []
    manager.on_event(lambda event: got.append(event.id))

    event = Event(name="tick", data=1)
    await one.push_event(event)
    await two.push_event(event)
    await two.push_event(Event(name="tick", data=2, id="other"))
    assert got == [event.id, "other"]


async def test_dedupe_window_is_bounded() -> None:
    one = Named("one", answers(None))
    manager = AdapterManager([one], dedupe_window=2)
    got: list[str] = []
    manager.on_event(lambda event: got.append(event.id))
    for event_id in ["a", "b", "c", "a"]:
        await one.push_event(Event(id=event_id, name="tick"))
    # "a" fell out of the two-id window, so its repeat is new again.
    assert got == ["a", "b", "c", "a"]


class CountingWebSocket(WebSocketAdapter):
    """A WebSocketAdapter that tells the test each time it has handed an event on."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.delivered: list[str] = []
        self.changed = asyncio.Event()

    async def handle_event(self, event: Event) -> None:
        try:
            await super().handle_event(event)
        finally:
            self.delivered.append(event.id)
            self.changed.set()


async def wait_delivered(adapters: list[CountingWebSocket], count: int) -> None:
    async def all_there() -> None:
        for adapter in adapters:
            while len(adapter.delivered) < count:
                adapter.changed.clear()
                await adapter.changed.wait()

    await wait_for(all_there())


async def test_two_websockets_in_one_manager_are_one_peer(game: ProtocolServer) -> None:
    """A manager presents one session: a second WebSocket takes it over (PROTOCOL.md §7).

    The older socket is closed with 4001 and does not fight back; events reach the manager's
    handler once, through the socket that holds the session.
    """
    url = f"ws://127.0.0.1:{game.port}"
    one, two = CountingWebSocket(url, priority=1), CountingWebSocket(url)
    async with AdapterManager([one, two]) as manager:
        got: list[Event] = []
        manager.on_event(got.append)
        assert len(game.sessions) == 1
        assert one.session.key == two.session.key
        await wait_until(lambda: not one.is_connected)
        assert "took this session over" in str(one.last_error)
        assert two.is_connected
        assert len(game.connections) == 1

        await game.broadcast_event("tick", {"n": 1})
        await wait_delivered([two], 1)
        assert [(e.name, e.data) for e in got] == [("tick", {"n": 1})]
        assert one.delivered == []


async def test_handlers_on_an_adapter_win_over_the_managers(game: ProtocolServer) -> None:
    url = f"ws://127.0.0.1:{game.port}"
    own = CountingWebSocket(url, headers={"X-Adapter": "own"})
    plain = CountingWebSocket(url, headers={"X-Adapter": "plain"})
    own_events: list[str] = []
    manager_events: list[str] = []

    @own.on_event
    def own_event(event: Event) -> None:
        own_events.append(event.name)

    @own.on_request
    def own_request(request: Request) -> Response:
        return Response.success(request.id, "answered by the adapter")

    # Two clients (two managers, two sessions), each manager with the same handlers.
    async with AdapterManager([own]) as first, AdapterManager([plain]) as second:
        for manager in (first, second):

            @manager.on_event
            def manager_event(event: Event) -> None:
                manager_events.append(event.name)

            @manager.on_request
            async def manager_request(request: Request) -> Response:
                return Response.success(request.id, "answered by the manager")

        by_adapter = {c.headers["X-Adapter"]: c for c in game.connections}
        replies = await wait_for(game.broadcast_request("who"))
        data = {}
        for connection, reply in replies.items():
            assert isinstance(reply, Response)
            data[connection.headers["X-Adapter"]] = reply.data
        assert data == {"own": "answered by the adapter", "plain": "answered by the manager"}

        await game.send_event(by_adapter["own"], "to-own")
        await game.send_event(by_adapter["plain"], "to-plain")
        await wait_delivered([own, plain], 1)
        assert own_events == ["to-own"]
        assert manager_events == ["to-plain"]


async def test_server_request_with_no_handler_anywhere_gets_404(game: ProtocolServer) -> None:
    async with AdapterManager([WebSocketAdapter(f"ws://127.0.0.1:{game.port}")]):
        [connection] = game.connections
        response = await wait_for(game.send_request(connection, "anything"))
        assert response.code == 404


async def test_receive_only_websocket_beside_an_http_sender(game: ProtocolServer) -> None:
    # A common shape: requests over HTTP, pushes from the server over a listening WebSocket.
    url = f"127.0.0.1:{game.port}"
    listener = CountingWebSocket(f"ws://{url}", mode=AdapterMode.RECEIVE, priority=100)
    http = HttpAdapter(f"http://{url}")
    async with AdapterManager([listener, http]) as manager:
        got: list[str] = []
        manager.on_event(lambda event: got.append(event.name))
        assert listener.is_connected
        # The call travels over HTTP; the server sees one peer, reachable over its WebSocket.
        assert await GameApi(manager).get_player_list() == ["overworld", "websocket"]
        assert manager.last_adapter is http
        await game.broadcast_event("pushed")
        await wait_delivered([listener], 1)
        assert got == ["pushed"]
