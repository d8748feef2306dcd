"""Client middleware (issue 12): one chain for every call of an adapter, a manager or an Api.

Everything runs against a real ProtocolServer on loopback; the failover test cuts the
WebSocket path with `TcpProxy`. What is shown:

- a manager's middleware sees which adapter carried each call and each failover;
- the first middleware added is the outermost, and one may answer without sending;
- an outgoing middleware's `meta` reaches the server;
- events and requests from the server pass the chain of a client and of a manager, once;
- a user's adapter with nothing but `send_packet` has a chain, and an override calling
  ``super().send_packet`` runs it once;
- `Api.use` adds to its sender's chain;
- transport errors and timeouts reach the middleware through `call_next`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from siyi_sdk import (
    Adapter,
    AdapterManager,
    AdapterMode,
    Api,
    CallNext,
    ClientCall,
    ConnectionClosedError,
    Event,
    ForbiddenError,
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
    WebSocketAdapter,
)
from tests.conftest import (
    ClientFactory,
    Inbox,
    OneShotHttp,
    free_port,
    http_url,
    wait_until,
    ws_url,
)
from tests.proxy import WAIT, Gate, TcpProxy, running_server, sleep_until_accepting, wait_for


@dataclass
class Seen:
    """One call as a middleware saw it, after `call_next` returned or raised."""

    name: str
    direction: str
    transport: str | None
    carrier: Any
    failovers: list[tuple[Any, BaseException]]
    outcome: Response | BaseException | None
    duration: float | None


@dataclass
class Recorder:
    """A middleware that records every call it sees, and lets the outcome through."""

    calls: list[Seen] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, call: ClientCall, call_next: CallNext[ClientCall]) -> Response | None:
        outcome: Response | BaseException | None = None
        try:
            outcome = result = await call_next(call)
        except Exception as exc:
            outcome = exc
            raise
        finally:
            self.calls.append(
                Seen(
                    call.name,
                    call.direction,
                    call.transport,
                    call.carrier,
                    list(call.failovers),
                    outcome,
                    call.duration,
                )
            )
            self.changed.set()
        return result

    def named(self, name: str) -> list[Seen]:
        return [seen for seen in self.calls if seen.name == name]

    async def wait_count(self, count: int) -> None:
        async def reached() -> None:
            while len(self.calls) < count:
                self.changed.clear()
                await self.changed.wait()

        await wait_for(reached())


def echo(connection: Any, request: Request) -> Response:
    return Response.success(request.id, data=request.params)


# 1. A manager's middleware: the carrier and the failover during a cut --------------------------


@dataclass
class Rig:
    server: ProtocolServer
    proxy: TcpProxy
    gate: Gate
    ws: WebSocketAdapter
    http: HttpAdapter
    manager: AdapterManager
    seen: Recorder
    ws_seen: Recorder


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    gate = Gate()
    async with running_server() as server, TcpProxy(server.port) as proxy:

        @server.command("slow")
        async def slow(connection: Any, params: dict[str, Any]) -> str:
            return await gate.pass_through("slow done")

        @server.command("where")
        async def where(connection: Any, params: dict[str, Any]) -> str:
            return str(connection.transport)

        ws = WebSocketAdapter(
            proxy.url,
            priority=10,
            reconnect_interval=0.01,
            request_timeout=WAIT,
            sleep=sleep_until_accepting(proxy),
        )
        http = HttpAdapter(http_url(server), request_timeout=WAIT)
        seen, ws_seen = Recorder(), Recorder()
        ws.use(ws_seen)  # the adapter's own chain, beside the manager's
        async with AdapterManager([ws, http]) as manager:
            manager.use(seen)
            yield Rig(server, proxy, gate, ws, http, manager, seen, ws_seen)
            gate.open()


async def test_a_manager_middleware_sees_the_carrier_and_the_failover_of_a_cut(rig: Rig) -> None:
    assert (await rig.manager.send_packet(Request(command="where"))).data == "websocket"
    [first] = rig.seen.calls
    assert (first.carrier, first.transport, first.failovers) == (rig.ws, "websocket", [])
    assert isinstance(first.outcome, Response)
    assert first.outcome.ok
    assert first.duration is not None
    assert first.duration >= 0

    # Cut mid-request: the WebSocket fails, the same packet goes over HTTP.
    call = asyncio.create_task(rig.manager.send_packet(Request(command="slow")))
    await wait_for(rig.gate.started.wait())
    await rig.proxy.cut()
    await rig.ws_seen.wait_count(2)  # the WebSocket's attempt has failed
    rig.gate.open()
    assert (await wait_for(call)).data == "slow done"

    [slow] = rig.seen.named("slow")
    assert slow.carrier is rig.http
    assert slow.transport == "http"
    [(failed, error)] = slow.failovers
    assert failed is rig.ws
    assert isinstance(error, ConnectionClosedError)
    # The WebSocket's own chain ran for its attempt and saw the error.
    [ws_slow] = rig.ws_seen.named("slow")
    assert ws_slow.outcome is error
    assert ws_slow.carrier is rig.ws

    # While the WebSocket is down it is skipped; the failover names it with why it is down.
    await wait_until(lambda: not rig.ws.is_connected)
    assert (await rig.manager.send_packet(Request(command="where"))).data == "http"
    down = rig.seen.calls[-1]
    assert down.carrier is rig.http
    assert [adapter for adapter, _ in down.failovers] == [rig.ws]
    assert isinstance(down.failovers[0][1], TransportError)
    assert len(rig.ws_seen.named("where")) == 1  # not tried: its chain saw nothing

    # Back on the WebSocket: no failover.
    await rig.proxy.resume()
    await rig.ws.wait_connected(WAIT)
    assert (await rig.manager.send_packet(Request(command="where"))).data == "websocket"
    back = rig.seen.calls[-1]
    assert (back.carrier, back.transport, back.failovers) == (rig.ws, "websocket", [])


async def test_a_manager_middleware_sees_events_fail_over(rig: Rig) -> None:
    await rig.proxy.cut()
    await rig.manager.send_event(Event(name="ping", data=1))
    [ping] = rig.seen.named("ping")
    assert ping.carrier is rig.http
    assert ping.outcome is None
    assert [adapter for adapter, _ in ping.failovers] == [rig.ws]


async def test_every_adapter_failing_leaves_no_carrier() -> None:
    def down(request: Request) -> Response:
        raise ConnectionError("unplugged")

    one, two = MockAdapter(down), MockAdapter(down)
    manager = AdapterManager([one, two])
    seen = Recorder()
    manager.use(seen)
    with pytest.raises(TransportError):
        await manager.send_packet(Request(command="x"))
    [call] = seen.calls
    assert call.carrier is None
    assert [adapter for adapter, _ in call.failovers] == [one, two]
    assert all(isinstance(exc, ConnectionError) for _, exc in call.failovers)


# 2. Order, and answering without sending -------------------------------------------------------


async def test_the_first_added_is_outermost_and_a_middleware_may_answer_alone(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    runs: Counter[str] = Counter()

    @server.on_request
    def handler(connection: Any, request: Request) -> Response:
        runs[request.command] += 1
        return Response.success(request.id, "from the server")

    client = await make_client(ws_url(server))
    order: list[str] = []

    def named(label: str) -> Any:
        async def middleware(call: ClientCall, call_next: CallNext[ClientCall]) -> Any:
            order.append(f"{label} before")
            result = await call_next(call)
            order.append(f"{label} after")
            return result

        return middleware

    async def answer_alone(call: ClientCall, call_next: CallNext[ClientCall]) -> Any:
        if call.name == "cached":
            return Response.success(call.packet.id, "from the middleware")
        return await call_next(call)

    client.use(named("a"))
    client.use(named("b"))
    client.use(answer_alone)

    assert (await client.send_request("hello")).data == "from the server"
    assert order == ["a before", "b before", "b after", "a after"]

    order.clear()
    answer = await client.send_request("cached")
    assert answer.data == "from the middleware"
    assert order == ["a before", "b before", "b after", "a after"]
    assert runs == Counter({"hello": 1})  # "cached" never reached the server

    # An event may be kept from the server as well: a middleware returns without call_next.
    got: list[str] = []
    server.on_event(lambda connection, event: got.append(event.name))

    async def drop_noise(call: ClientCall, call_next: CallNext[ClientCall]) -> Any:
        return None if call.name == "noise" else await call_next(call)

    client.use(drop_noise)
    await client.send_event("noise")
    await client.send_event("signal")
    await wait_until(lambda: got == ["signal"])


async def test_a_middleware_that_returns_nothing_for_a_request_is_a_type_error() -> None:
    adapter = MockAdapter(lambda request: Response.success(request.id))

    @adapter.use
    async def forgetful(call: ClientCall, call_next: CallNext[ClientCall]) -> Any:
        await call_next(call)  # no return

    with pytest.raises(TypeError, match="not a Response"):
        await adapter.send_packet(Request(command="x"))


# 3. Stamping meta on the way out ---------------------------------------------------------------


async def stamp(call: ClientCall, call_next: CallNext[ClientCall]) -> Response | None:
    call.meta["x"] = 1
    return await call_next(call)


@pytest.mark.parametrize("transport", ["websocket", "http"])
async def test_meta_stamped_by_a_middleware_reaches_the_server(
    server: ProtocolServer, transport: str
) -> None:
    metas: list[tuple[str, Any]] = []

    @server.on_request
    def handler(connection: Any, request: Request) -> Response:
        metas.append((connection.transport, request.meta))
        return Response.success(request.id)

    adapter: Adapter = (
        WebSocketAdapter(ws_url(server), request_timeout=WAIT)
        if transport == "websocket"
        else HttpAdapter(http_url(server), request_timeout=WAIT)
    )
    async with adapter:
        adapter.use(stamp)
        assert (await adapter.send_packet(Request(command="stamped"))).ok
    # The middleware's stamp, beside the budget every request carries (§9).
    assert metas == [(transport, {"x": 1, "timeout": WAIT})]


# 4. What the server sends passes the chain -----------------------------------------------------


async def test_server_events_and_requests_pass_a_client_chain_once(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    client = await make_client(ws_url(server))
    seen = Recorder()
    client.use(seen)
    inbox = Inbox()
    client.on_event(inbox)
    answered: list[str] = []

    @client.on_request
    def answer(request: Request) -> Response:
        answered.append(request.command)
        assert request.params is not None
        return Response.success(request.id, {"n": request.params["n"] + 1})

    async def intercept(call: ClientCall, call_next: CallNext[ClientCall]) -> Any:
        if call.direction == "in" and call.name == "status":
            return Response.success(call.packet.id, "answered by a middleware")
        return await call_next(call)

    client.use(intercept)
    [connection] = server.connections

    await server.send_event(connection, "tick", 1)
    await inbox.wait_count(1)
    assert (await server.send_request(connection, "add_one", {"n": 1})).data == {"n": 2}
    assert (await server.send_request(connection, "status")).data == "answered by a middleware"
    assert answered == ["add_one"]

    incoming = [s for s in seen.calls if s.direction == "in"]
    assert [(s.name, s.transport, s.carrier) for s in incoming] == [
        ("tick", "websocket", client),
        ("add_one", "websocket", client),
        ("status", "websocket", client),
    ]
    assert incoming[0].outcome is None
    assert isinstance(incoming[1].outcome, Response)
    assert incoming[1].outcome.data == {"n": 2}


async def test_an_incoming_middleware_error_is_the_answer(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    client = await make_client(ws_url(server))
    client.on_request(lambda request: Response.success(request.id))

    @client.use
    async def refuse(call: ClientCall, call_next: CallNext[ClientCall]) -> Any:
        if call.direction == "in":
            raise ForbiddenError("not from you")
        return await call_next(call)

    [connection] = server.connections
    answer = await server.send_request(connection, "anything")
    assert (answer.ok, answer.code) == (False, 403)


@pytest.mark.parametrize("transport", ["websocket", "http"])
async def test_server_packets_pass_a_manager_chain_once(
    server: ProtocolServer, transport: str
) -> None:
    inner: Adapter = (
        WebSocketAdapter(ws_url(server), request_timeout=WAIT)
        if transport == "websocket"
        else HttpAdapter(
            http_url(server),
            mode=AdapterMode.SEND | AdapterMode.RECEIVE,
            poll_wait=0.5,
            request_timeout=WAIT,
        )
    )
    inner_seen, seen = Recorder(), Recorder()
    inner.use(inner_seen)
    async with AdapterManager([inner]) as manager:
        manager.use(seen)
        inbox = Inbox()
        manager.on_event(inbox)
        manager.on_request(lambda request: Response.success(request.id, request.command))
        await wait_until(lambda: bool(server.sessions))
        [connection] = server.sessions
        if transport == "http":
            await wait_until(lambda: connection.polls > 0)

        await server.send_event(connection, "tick", 1)
        await inbox.wait_count(1)
        assert (await server.send_request(connection, "ask")).data == "ask"

    expected = [("tick", transport, inner), ("ask", transport, inner)]
    assert [(s.name, s.transport, s.carrier) for s in seen.calls] == expected
    # The adapter's own chain saw them too, once each, before handing them on.
    assert [(s.name, s.transport, s.carrier) for s in inner_seen.calls] == expected


async def test_an_event_carried_twice_passes_a_manager_chain_once() -> None:
    one = MockAdapter(lambda request: Response.success(request.id))
    two = MockAdapter(lambda request: Response.success(request.id))
    manager = AdapterManager([one, two])
    seen = Recorder()
    manager.use(seen)
    manager.on_event(lambda event: None)
    event = Event(name="tick", data=1)
    await one.push_event(event)
    await two.push_event(event.model_copy())
    assert [(s.name, s.direction, s.carrier) for s in seen.calls] == [("tick", "in", one)]


# 5. A user's own adapter -----------------------------------------------------------------------


async def test_a_users_minimal_adapter_has_a_chain(server: ProtocolServer) -> None:
    server.on_request(echo)
    adapter = OneShotHttp()
    adapter.url = f"{http_url(server)}/general"
    seen = Recorder()
    adapter.use(seen)
    adapter.use(stamp)
    assert (await adapter.send_packet(Request(command="echo", params={"a": 1}))).data == {"a": 1}
    [call] = seen.calls
    assert (call.name, call.direction, call.carrier) == ("echo", "out", adapter)
    assert call.transport is None  # an adapter of the user's own

    # The default send_event refuses, through the chain.
    with pytest.raises(TransportError, match="cannot send events"):
        await adapter.send_event(Event(name="e"))
    assert isinstance(seen.calls[-1].outcome, TransportError)


class StampingHttp(HttpAdapter):
    """An override that calls super(): the chain must still run once per call."""

    async def send_packet(
        self, packet: RequestPacket, *, timeout: float | None = None
    ) -> ResponsePacket:
        packet = packet.model_copy(update={"meta": {"by": "override"}})
        return await super().send_packet(packet, timeout=timeout)

    async def send_event(self, event: Event) -> None:
        await super().send_event(event)


async def test_an_override_calling_super_runs_the_chain_once(server: ProtocolServer) -> None:
    metas: list[Any] = []

    @server.on_request
    def handler(connection: Any, request: Request) -> Response:
        metas.append(request.meta)
        return Response.success(request.id)

    async with StampingHttp(http_url(server), request_timeout=WAIT) as adapter:
        seen = Recorder()
        adapter.use(seen)
        await adapter.send_packet(Request(command="one"))
        await adapter.send_packet(Request(command="two"), timeout=WAIT)
        await adapter.send_event(Event(name="three"))
    assert [(s.name, s.transport) for s in seen.calls] == [
        ("one", "http"),
        ("two", "http"),
        ("three", "http"),
    ]
    assert metas == [{"by": "override", "timeout": WAIT}] * 2  # the budget, stamped after


async def test_no_middleware_builds_no_call() -> None:
    adapter = MockAdapter(lambda request: Response.success(request.id))
    assert not adapter._middleware
    assert (await adapter.send_packet(Request(command="x"))).ok
    assert type(adapter).send_packet.__wrapped__ is not None  # type: ignore[attr-defined]


# 6. Api.use ------------------------------------------------------------------------------------


async def test_api_use_adds_to_its_senders_chain(server: ProtocolServer) -> None:
    server.on_request(echo)
    async with WebSocketAdapter(ws_url(server), request_timeout=WAIT) as adapter:
        api = Api(adapter)
        seen = Recorder()
        assert api.use(seen) is seen
        assert await api.request("echo", {"a": 1}) == {"a": 1}
        await api.send_event("hello", 2)
        assert (await adapter.send_packet(Request(command="direct"))).ok
    assert [(s.name, s.transport, s.carrier) for s in seen.calls] == [
        ("echo", "websocket", adapter),
        ("hello", "websocket", adapter),
        ("direct", "websocket", adapter),
    ]


# 7. Errors pass through the chain --------------------------------------------------------------


async def test_a_timeout_reaches_the_middleware(server: ProtocolServer) -> None:
    never = asyncio.Event()

    @server.command("stuck")
    async def stuck(connection: Any, params: dict[str, Any]) -> None:
        await never.wait()

    async with WebSocketAdapter(ws_url(server), request_timeout=0.1) as adapter:
        seen = Recorder()
        adapter.use(seen)
        with pytest.raises(RequestTimeoutError):
            await adapter.send_packet(Request(command="stuck"))
    [call] = seen.calls
    assert isinstance(call.outcome, RequestTimeoutError)
    assert call.duration is not None
    assert call.duration >= 0.1
    never.set()


async def test_a_manager_timeout_reaches_its_middleware_with_the_carrier(
    server: ProtocolServer,
) -> None:
    never = asyncio.Event()

    @server.command("stuck")
    async def stuck(connection: Any, params: dict[str, Any]) -> None:
        await never.wait()

    ws = WebSocketAdapter(ws_url(server), request_timeout=WAIT)
    async with AdapterManager([ws]) as manager:
        seen = Recorder()
        manager.use(seen)
        with pytest.raises(RequestTimeoutError):
            await manager.send_packet(Request(command="stuck"), timeout=0.1)
    [call] = seen.calls
    assert isinstance(call.outcome, RequestTimeoutError)
    assert call.carrier is ws
    never.set()


async def test_transport_errors_reach_the_middleware() -> None:
    nowhere = free_port()
    seen = Recorder()
    async with HttpAdapter(f"http://127.0.0.1:{nowhere}", request_timeout=WAIT) as http:
        http.use(seen)
        with pytest.raises(TransportError):
            await http.send_packet(Request(command="x"))
    ws = WebSocketAdapter(f"ws://127.0.0.1:{nowhere}")  # never started: not connected
    ws.use(seen)
    with pytest.raises(NotConnectedError):
        await ws.send_packet(Request(command="y"))
    assert [type(s.outcome) for s in seen.calls] == [TransportError, NotConnectedError]
    assert [s.carrier for s in seen.calls] == [http, ws]


async def test_a_middleware_may_turn_an_error_into_an_answer() -> None:
    def down(request: Request) -> Response:
        raise ConnectionError("unplugged")

    adapter = MockAdapter(down)

    @adapter.use
    async def fallback(call: ClientCall, call_next: CallNext[ClientCall]) -> Any:
        try:
            return await call_next(call)
        except ConnectionError:
            return Response.success(call.packet.id, "offline default")

    assert (await adapter.send_packet(Request(command="x"))).data == "offline default"
