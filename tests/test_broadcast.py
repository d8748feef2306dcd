"""Broadcasts to many clients and the server's graceful stop, over real sockets."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from siyi_sdk import (
    Connection,
    Event,
    ProtocolClient,
    ProtocolServer,
    Request,
    RequestTimeoutError,
    Response,
)
from tests.conftest import ClientFactory, recv_json, wait_for, wait_until, ws_url


async def connect_named(
    server: ProtocolServer,
    make_client: ClientFactory,
    connected: asyncio.Queue[Connection],
    name: str,
) -> tuple[ProtocolClient, Connection]:
    """Open a client that names itself in a header; return it with its server-side Connection."""
    client = await make_client(ws_url(server), headers={"X-Client": name})
    conn = await wait_for(connected.get())
    assert conn.headers["X-Client"] == name
    return client, conn


async def test_broadcast_request_collects_every_answer_even_a_silent_one(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    never = asyncio.Event()

    polite, polite_conn = await connect_named(server, make_client, connected, "polite")
    grumpy, grumpy_conn = await connect_named(server, make_client, connected, "grumpy")
    silent, silent_conn = await connect_named(server, make_client, connected, "silent")
    polite.on_request(lambda req: Response.success(req.id, data={"status": "running"}))
    grumpy.on_request(lambda req: Response.fail(req.id, "not telling", 1001))

    async def wait_forever(request: Request) -> Response:
        await never.wait()
        return Response.success(request.id)

    silent.on_request(wait_forever)
    try:
        started = time.monotonic()
        answers = await server.broadcast_request("get_status", {"verbose": True}, timeout=0.3)
        elapsed = time.monotonic() - started
    finally:
        never.set()

    assert set(answers) == {polite_conn, grumpy_conn, silent_conn}
    ok = answers[polite_conn]
    assert isinstance(ok, Response)
    assert (ok.status, ok.code, ok.data) == ("ok", 0, {"status": "running"})
    failed = answers[grumpy_conn]
    assert isinstance(failed, Response)
    assert (failed.status, failed.code, failed.error) == ("error", 1001, "not telling")
    assert isinstance(answers[silent_conn], RequestTimeoutError)
    # Everyone was asked at once: the silent client cost one timeout, not one per client.
    assert 0.29 <= elapsed < 0.3 + 0.7  # 0.29: the loop may fire a timer a hair early


async def test_broadcast_request_with_exclude_and_no_clients(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    assert await server.broadcast_request("get_status", timeout=1) == {}
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    asked: list[str] = []

    def answer(name: str) -> object:
        def handler(request: Request) -> Response:
            asked.append(name)
            return Response.success(request.id, data=name)

        return handler

    a, a_conn = await connect_named(server, make_client, connected, "a")
    b, b_conn = await connect_named(server, make_client, connected, "b")
    a.on_request(answer("a"))  # type: ignore[arg-type]
    b.on_request(answer("b"))  # type: ignore[arg-type]
    answers = await server.broadcast_request("get_status", timeout=5, exclude={a_conn})
    assert list(answers) == [b_conn]
    assert asked == ["b"]


async def test_broadcast_event_with_exclude_reaches_all_but_the_excluded(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    received: dict[str, list[Event]] = {}
    marker_seen: dict[str, asyncio.Event] = {}
    conns: dict[str, Connection] = {}

    for name in ("alice", "bob", "carol"):
        client, conns[name] = await connect_named(server, make_client, connected, name)
        received[name] = []
        marker_seen[name] = asyncio.Event()

        def on_event(event: Event, name: str = name) -> None:
            received[name].append(event)
            if event.name == "marker":
                marker_seen[name].set()

        client.on_event(on_event)

    await server.broadcast_event(
        "player_updated_notification", {"player": "Steve"}, exclude={conns["bob"]}
    )
    # Events from one sender arrive in order: once each client has the marker, anything the
    # first broadcast was going to deliver has been delivered.
    await server.broadcast_event("marker")
    for name in marker_seen:
        await wait_for(marker_seen[name].wait())

    for name in ("alice", "carol"):
        assert [e.name for e in received[name]] == ["player_updated_notification", "marker"]
        assert received[name][0].data == {"player": "Steve"}
    assert [e.name for e in received["bob"]] == ["marker"]
    # One encoding for everyone: the same event id reached every client.
    assert received["alice"][0].id == received["carol"][0].id


async def test_seed_pattern_relay_an_event_to_everyone_but_its_sender(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    """The seed's server: on `player_update`, broadcast to the others with exclude={sender}."""

    async def handle_event(connection: Connection, event: Event) -> None:
        if event.name == "player_update":
            await server.broadcast_event(
                "player_updated_notification", event.data, exclude={connection}
            )

    server.on_event(handle_event)
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    sender, _ = await connect_named(server, make_client, connected, "sender")
    other, _ = await connect_named(server, make_client, connected, "other")
    sender_got: asyncio.Queue[Event] = asyncio.Queue()
    other_got: asyncio.Queue[Event] = asyncio.Queue()
    sender.on_event(sender_got.put_nowait)
    other.on_event(other_got.put_nowait)

    await sender.send_event("player_update", {"player": "Steve", "health": 95})
    event = await wait_for(other_got.get())
    assert event.name == "player_updated_notification"
    assert event.data == {"player": "Steve", "health": 95}
    await server.broadcast_event("marker")
    assert (await wait_for(other_got.get())).name == "marker"
    # The sender's first event is the marker: the relay skipped it.
    assert (await wait_for(sender_got.get())).name == "marker"
    assert sender_got.empty()


def frame(rid: str, command: str) -> str:
    return json.dumps({"id": rid, "type": "request", "command": command})


async def test_stop_lets_a_running_handler_finish_refuses_new_work_and_closes_with_1001() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def handler(connection: Connection, request: Request) -> Response:
        if request.command == "slow":
            entered.set()
            await release.wait()
        return Response.success(request.id, data=request.command)

    server = ProtocolServer(port=0, shutdown_timeout=5.0)
    server.on_request(handler)
    await server.start_serving()
    url = ws_url(server)
    try:
        async with connect(url) as ws:
            await ws.send(frame("slow-1", "slow"))
            await wait_for(entered.wait())

            started = time.monotonic()
            stopping = asyncio.create_task(server.stop())
            await wait_until(lambda: not server.is_serving)

            # A request arriving during stop gets 503 at once, on the still-open connection.
            await ws.send(frame("late-1", "echo"))
            late = await recv_json(ws)
            assert (late["id"], late["status"], late["code"]) == ("late-1", "error", 503)
            # A new connection is refused meanwhile.
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == 503
            assert not stopping.done()

            # The running handler finishes and its Response is delivered before the close.
            release.set()
            done = await recv_json(ws)
            assert done == {
                "id": "slow-1",
                "type": "response",
                "status": "ok",
                "code": 0,
                "data": "slow",
            }
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
            await wait_for(stopping)
            assert time.monotonic() - started < 5.0  # did not wait for the whole grace period
    finally:
        release.set()
        await server.stop()


async def test_stop_closes_every_client_with_1001() -> None:
    server = ProtocolServer(port=0)
    await server.start_serving()
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    disconnected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    server.on_disconnect(disconnected.put_nowait)
    try:
        async with connect(ws_url(server)) as one, connect(ws_url(server)) as two:
            for _ in range(2):
                await wait_for(connected.get())
            await server.stop()
            for ws in (one, two):
                with pytest.raises(ConnectionClosed) as closed:
                    await recv_json(ws)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1001
            for _ in range(2):
                await wait_for(disconnected.get())
            assert server.connections == []
    finally:
        await server.stop()


async def test_stop_does_not_wait_past_the_grace_period_for_a_stuck_handler() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def stuck(connection: Connection, request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response.success(request.id)

    server = ProtocolServer(port=0, shutdown_timeout=0.2)
    server.on_request(stuck)
    await server.start_serving()
    try:
        async with connect(ws_url(server)) as ws:
            await ws.send(frame("stuck-1", "stuck"))
            await wait_for(entered.wait())
            started = time.monotonic()
            await wait_for(server.stop())
            assert 0.19 <= time.monotonic() - started < 0.2 + 1.0
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
    finally:
        release.set()
        await server.stop()


async def test_stop_lets_our_client_get_its_answer(make_client: ClientFactory) -> None:
    """The same grace, seen from ProtocolClient: its request in flight still gets its Response."""
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(connection: Connection, request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response.success(request.id, data="finished")

    server = ProtocolServer(port=0, shutdown_timeout=5.0)
    server.on_request(slow)
    await server.start_serving()
    try:
        client = await make_client(ws_url(server))
        call = asyncio.create_task(client.send_request("slow"))
        await wait_for(entered.wait())
        stopping = asyncio.create_task(server.stop())
        await wait_until(lambda: not server.is_serving)
        release.set()
        assert (await wait_for(call)).data == "finished"
        await wait_for(stopping)
    finally:
        release.set()
        await server.stop()


async def test_a_client_that_does_not_read_holds_up_nobody(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    """A peer whose socket is full gets its events queued, in order; the rest flow on."""
    payload = "x" * 200_000  # big events fill a socket nobody reads within a few dozen
    count = 60  # 12 MB: within the default outbox bound (16 MiB, see test_memory_bounds)
    reader = await make_client(ws_url(server))
    got: asyncio.Queue[int] = asyncio.Queue()
    reader.on_event(lambda event: got.put_nowait(event.data["i"]))
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as stuck:
        await wait_until(lambda: len(server.connections) == 2)
        started = time.perf_counter()
        for i in range(count):
            # Each broadcast returns at once: nothing waits for the peer that does not read.
            await wait_for(server.broadcast_event("big", {"i": i, "p": payload}), 1.0)
        assert [await wait_for(got.get()) for _ in range(count)] == list(range(count))
        assert time.perf_counter() - started < 5.0
        [stuck_connection] = [
            c
            for c in server.connections
            if c.headers.get("User-Agent", "") and c is not _connection_of(server, reader)
        ]
        assert stuck_connection.peer is not None
        assert not stuck_connection.peer.can_send_at_once(1)  # it really was backed up
        # Once it reads, it gets every event, in order, after the session event.
        first = await stuck.receive(timeout=5)
        assert json.loads(first.data)["name"] == "session"
        for i in range(count):
            msg = await stuck.receive(timeout=5)
            assert json.loads(msg.data)["data"]["i"] == i


def _connection_of(server: ProtocolServer, client: ProtocolClient) -> Connection | None:
    for connection in server.connections:
        if connection.session == client.session.key:
            return connection
    return None
