"""ProtocolClient against a real ProtocolServer: the seed's client API and §6 guarantees."""

from __future__ import annotations

import asyncio
import time

import pytest

from siyi_sdk import (
    Connection,
    ConnectionClosedError,
    Event,
    NotConnectedError,
    ProtocolClient,
    ProtocolServer,
    Request,
    RequestTimeoutError,
    Response,
    TransportError,
)
from tests.conftest import ClientFactory, free_port, wait_for, ws_url


def echo(connection: Connection, request: Request) -> Response:
    return Response.success(request.id, data=request.params)


async def test_async_with_connects_and_closes(server: ProtocolServer) -> None:
    server.on_request(echo)
    disconnected = asyncio.Event()
    server.on_disconnect(lambda conn: disconnected.set())
    client = ProtocolClient(ws_url(server), request_timeout=10)
    async with client:
        assert client.is_connected
        await client.wait_connected(timeout=1)  # already connected: returns at once
        response = await client.send_request("echo", {"message": "Hello, World!"})
        assert response.status == "ok"
        assert response.code == 0
        assert response.data == {"message": "Hello, World!"}
    assert not client.is_connected
    await wait_for(disconnected.wait())
    assert server.connections == []


async def test_async_with_returns_even_when_no_server_listens() -> None:
    # The seed's client checks `is_connected` inside the block: entering must not hang or raise.
    client = ProtocolClient(f"ws://127.0.0.1:{free_port()}", connect_timeout=2)
    async with client:
        assert not client.is_connected
    assert not client.is_connected


async def test_wait_connected_times_out_when_no_server_listens() -> None:
    async with ProtocolClient(f"ws://127.0.0.1:{free_port()}", connect_timeout=2) as client:
        with pytest.raises(asyncio.TimeoutError):
            await client.wait_connected(timeout=0.1)


async def test_send_while_not_connected_fails_at_once() -> None:
    async with ProtocolClient(
        f"ws://127.0.0.1:{free_port()}", connect_timeout=2, request_timeout=30
    ) as client:
        started = time.monotonic()
        with pytest.raises(NotConnectedError):
            await client.send_request("echo")
        with pytest.raises(NotConnectedError):
            await client.send_event("player_update", {"player": "Steve"})
        assert time.monotonic() - started < 1.0  # not after the 30 s request timeout
    # A client that was never started is not connected either.
    with pytest.raises(NotConnectedError):
        await ProtocolClient("ws://127.0.0.1:1").send_request("echo")
    # NotConnectedError is a transport error, and a ConnectionError for generic code.
    assert issubclass(NotConnectedError, TransportError)
    assert issubclass(NotConnectedError, ConnectionError)


async def test_request_timeout_is_an_asyncio_timeout_error(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    release = asyncio.Event()

    async def stuck(connection: Connection, request: Request) -> Response:
        await release.wait()
        return Response.success(request.id)

    server.on_request(stuck)
    client = await make_client(ws_url(server), request_timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError) as info:  # the seed's `except` clause
            await client.send_request("echo")
        assert isinstance(info.value, RequestTimeoutError)
        assert 0.19 <= time.monotonic() - started < 2.0
        # A per-call timeout overrides the client's default.
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            await client.send_request("echo", timeout=0.05)
        assert time.monotonic() - started < 0.2 + 1.0
        # The connection is still fine afterwards.
        release.set()
        server.on_request(echo)
        assert (await client.send_request("echo", {"a": 1})).data == {"a": 1}
    finally:
        release.set()


async def test_request_in_flight_fails_at_once_when_the_connection_drops(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    release = asyncio.Event()
    arrived: asyncio.Queue[Connection] = asyncio.Queue()

    async def stuck(connection: Connection, request: Request) -> Response:
        arrived.put_nowait(connection)
        await release.wait()
        return Response.success(request.id)

    server.on_request(stuck)
    client = await make_client(ws_url(server), request_timeout=30)
    try:
        call = asyncio.create_task(client.send_request("slow"))
        conn = await wait_for(arrived.get())
        started = time.monotonic()
        await conn.close(1011, "going down hard")
        with pytest.raises(ConnectionClosedError):
            await wait_for(call)
        assert time.monotonic() - started < 1.0  # at once, not after the 30 s timeout
    finally:
        release.set()


async def test_request_in_flight_fails_at_once_when_the_server_stops(
    make_client: ClientFactory,
) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def stuck(connection: Connection, request: Request) -> Response:
        arrived.set()
        await release.wait()
        return Response.success(request.id)

    # A server outside the fixtures: this test stops it itself, with a short grace period.
    server = ProtocolServer(port=0, shutdown_timeout=0.1)
    server.on_request(stuck)
    await server.start_serving()
    try:
        client = await make_client(ws_url(server), request_timeout=30)
        call = asyncio.create_task(client.send_request("slow"))
        await wait_for(arrived.wait())
        started = time.monotonic()
        await server.stop()
        with pytest.raises(ConnectionClosedError):
            await wait_for(call)
        assert time.monotonic() - started < 2.0
    finally:
        release.set()
        await server.stop()


async def test_server_request_is_answered_by_on_request(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    answers: asyncio.Queue[Response] = asyncio.Queue()

    async def on_connect(conn: Connection) -> None:
        answers.put_nowait(await server.send_request(conn, "get_status"))
        answers.put_nowait(await server.send_request(conn, "self_destruct"))

    server.on_connect(on_connect)

    async def handle_server_request(request: Request) -> Response:
        if request.command == "get_status":
            return Response.success(request.id, data={"status": "running", "players": 5})
        return Response.fail(request.id, "unknown server command")

    client = ProtocolClient(ws_url(server), request_timeout=10)
    client.on_request(handle_server_request)
    async with client:
        status = await wait_for(answers.get())
        refused = await wait_for(answers.get())
    assert (status.status, status.code, status.data) == (
        "ok",
        0,
        {"status": "running", "players": 5},
    )
    assert (refused.status, refused.code, refused.error) == (
        "error",
        1,
        "unknown server command",
    )


async def test_sync_on_request_handler_works(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    client = ProtocolClient(ws_url(server))
    client.on_request(lambda request: Response.success(request.id, data=request.command))
    async with client:
        conn = await wait_for(connected.get())
        assert (await server.send_request(conn, "whoami")).data == "whoami"


async def test_client_without_on_request_answers_404(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    await make_client(ws_url(server))
    conn = await wait_for(connected.get())
    response = await server.send_request(conn, "get_status", timeout=5)
    assert (response.status, response.code) == ("error", 404)
    assert "unknown command" in (response.error or "")


async def test_client_handler_that_raises_answers_500(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)

    def broken(request: Request) -> Response:
        raise RuntimeError("client-side secret")

    client = await make_client(ws_url(server))
    client.on_request(broken)
    conn = await wait_for(connected.get())
    response = await server.send_request(conn, "get_status", timeout=5)
    assert response.code == 500
    assert "secret" not in (response.error or "")


async def test_events_reach_the_client_in_order(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    got: list[Event] = []
    all_in = asyncio.Event()
    count = 200

    async def on_event(event: Event) -> None:
        await asyncio.sleep(0)  # yield, so that out-of-order delivery would show
        got.append(event)
        if len(got) == count:
            all_in.set()

    client = await make_client(ws_url(server))
    client.on_event(on_event)
    conn = await wait_for(connected.get())
    for i in range(count):
        if i % 2:
            await server.send_event(conn, "tick", i)
        else:
            await server.broadcast_event("tick", i)
    await wait_for(all_in.wait())
    assert [e.data for e in got] == list(range(count))
    assert all(e.name == "tick" for e in got)


async def test_event_handlers_never_overlap_while_requests_run_concurrently(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    n = 20

    # Events: each handler yields several times; a second one running meanwhile would show.
    active = 0
    max_active = 0
    seen: list[int] = []
    events_done = asyncio.Event()

    async def on_event(event: Event) -> None:
        nonlocal active, max_active
        active += 1
        max_active = max(max_active, active)
        for _ in range(5):
            await asyncio.sleep(0)
        seen.append(event.data)
        active -= 1
        if len(seen) == n:
            events_done.set()

    # Requests: each handler waits until all n have started, which only concurrent handling
    # can reach (one at a time would never get there).
    started = 0
    all_started = asyncio.Event()

    async def on_request(request: Request) -> Response:
        nonlocal started
        started += 1
        if started == n:
            all_started.set()
        await all_started.wait()
        return Response.success(request.id, data=request.params)

    client = await make_client(ws_url(server))
    client.on_event(on_event)
    client.on_request(on_request)
    conn = await wait_for(connected.get())

    for i in range(n):
        await server.send_event(conn, "burst", i)
    responses = await wait_for(
        asyncio.gather(*(server.send_request(conn, "work", {"i": i}) for i in range(n)))
    )
    await wait_for(events_done.wait())
    assert max_active == 1
    assert seen == list(range(n))
    assert [r.data for r in responses] == [{"i": i} for i in range(n)]


async def test_server_side_events_from_one_client_are_ordered_and_never_overlap(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    n = 50
    active = 0
    max_active = 0
    seen: list[int] = []
    done = asyncio.Event()

    async def on_event(conn: Connection, event: Event) -> None:
        nonlocal active, max_active
        active += 1
        max_active = max(max_active, active)
        for _ in range(3):
            await asyncio.sleep(0)
        seen.append(event.data)
        active -= 1
        if len(seen) == n:
            done.set()

    server.on_event(on_event)
    client = await make_client(ws_url(server))
    for i in range(n):
        await client.send_event("player_update", i)
    await wait_for(done.wait())
    assert seen == list(range(n))
    assert max_active == 1


async def test_a_slow_event_handler_does_not_hold_up_requests(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    """Events are ordered, but the reader never blocks on them: requests still get answered."""
    release = asyncio.Event()
    entered = asyncio.Event()

    async def on_event(conn: Connection, event: Event) -> None:
        entered.set()
        await release.wait()

    server.on_event(on_event)
    server.on_request(echo)
    client = await make_client(ws_url(server))
    try:
        await client.send_event("slow", None)
        await wait_for(entered.wait())
        assert (await client.send_request("echo", {"x": 1}, timeout=2)).data == {"x": 1}
    finally:
        release.set()


async def test_send_event_accepts_a_ready_event(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    got: asyncio.Queue[Event] = asyncio.Queue()
    server.on_event(lambda conn, event: got.put_nowait(event))
    client = await make_client(ws_url(server))
    await client.send_event(Event(id="mine", name="player_update", data={"hp": 95}))
    event = await wait_for(got.get())
    assert (event.id, event.name, event.data) == ("mine", "player_update", {"hp": 95})
