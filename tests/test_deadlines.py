"""Deadlines and cancellation (PROTOCOL.md §9, §10), both directions, over WebSocket and HTTP.

Every "the handler was cancelled" below is an `asyncio.Event` the handler sets in its own
``except asyncio.CancelledError`` (or ``finally``): observed, not inferred from a sleep.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from siyi_sdk import (
    AdapterMode,
    Connection,
    HttpAdapter,
    ProtocolClient,
    ProtocolServer,
    Request,
    RequestTimeoutError,
    StatusCode,
)

from .conftest import (
    WAIT,
    ClientFactory,
    ServerFactory,
    http_url,
    post_packet,
    wait_until,
    ws_url,
)


class Blocker:
    """A handler that blocks until cancelled, and tells when it started and was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.cancelled_at = 0.0
        self.runs = 0

    async def block(self, seconds: float = 30.0) -> str:
        self.runs += 1
        self.started.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled_at = time.monotonic()
            self.cancelled.set()
            raise
        return "finished"


async def blocking_server(
    make_server: ServerFactory, **kwargs: Any
) -> tuple[ProtocolServer, Blocker]:
    server = await make_server(**kwargs)
    blocker = Blocker()

    @server.command("block")
    async def block(connection: Connection, params: dict[str, Any]) -> str:
        return await blocker.block(float(params.get("seconds", 30.0)))

    return server, blocker


async def cancel_and_time(task: asyncio.Task[Any], blocker: Blocker) -> float:
    """Cancel `task` once `blocker`'s handler runs: CancelledError at once, then the seconds
    until the handler on the other side observed its own cancellation."""
    await asyncio.wait_for(blocker.started.wait(), WAIT)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - cancelled_at < 0.05  # at once, locally
    await asyncio.wait_for(blocker.cancelled.wait(), WAIT)
    return blocker.cancelled_at - cancelled_at


# Deadlines -------------------------------------------------------------------------------------


async def test_the_callers_timeout_travels_and_cancels_the_handler_at_its_deadline(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server, blocker = await blocking_server(make_server)
    client = await make_client(ws_url(server))
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        await client.send_request("block", {"seconds": 5}, timeout=0.2)
    gave_up = time.monotonic() - started
    assert 0.19 <= gave_up < 0.6
    await asyncio.wait_for(blocker.cancelled.wait(), WAIT)
    # Cancelled on the server at the deadline the request carried, not after 5 s.
    assert blocker.cancelled_at - started < 0.6


async def test_a_handler_with_a_1s_budget_passes_what_is_left_to_its_own_requests(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server(handler_timeout=1.0)
    napper = Blocker()

    @server.command("ask_back")
    async def ask_back(connection: Connection, params: dict[str, Any]) -> Any:
        # No timeout given: the request gets at most what is left of this handler's 1 s.
        answer = await connection.send_request("nap", timeout=30)
        return answer.data

    asker = await make_client(ws_url(server), request_timeout=10)

    @asker.on_request
    async def nap(request: Request) -> Any:
        from siyi_sdk import Response

        assert request.meta is not None
        assert 0 < request.meta["timeout"] <= 1.0
        return Response.success(request.id, await napper.block(5))

    started = time.monotonic()
    answer = await asker.send_request("ask_back", timeout=10)
    took = time.monotonic() - started
    assert answer.code == StatusCode.TIMEOUT
    assert 0.9 <= took < 1.8
    # The client's handler was cancelled too: by its own deadline or the server's cancel.
    await asyncio.wait_for(napper.cancelled.wait(), WAIT)


async def test_a_raw_meta_timeout_gets_408_over_http(make_server: ServerFactory) -> None:
    server, blocker = await blocking_server(make_server)
    started = time.monotonic()
    status, body, _ = await post_packet(
        server,
        {"id": "d1", "type": "request", "command": "block", "meta": {"timeout": 0.1}},
    )
    assert (status, body["code"]) == (200, 408)
    assert time.monotonic() - started < 1.0
    assert blocker.cancelled.is_set()


# Cancellation: client -> server ----------------------------------------------------------------


async def test_cancelling_a_websocket_request_cancels_the_handler_and_a_repeat_gets_499(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server, blocker = await blocking_server(make_server)
    client = await make_client(ws_url(server))
    request = Request.make("block")
    task = asyncio.create_task(client.send_packet(request))
    assert await cancel_and_time(task, blocker) < 0.1
    again = await client.send_packet(Request(id=request.id, command="block"))
    assert again.code == StatusCode.CANCELLED
    assert blocker.runs == 1
    # The connection serves on.
    assert (await client.send_request("block", {"seconds": 0})).data == "finished"


async def test_cancelling_an_http_request_cancels_the_handler_and_a_repeat_gets_499(
    make_server: ServerFactory,
) -> None:
    server, blocker = await blocking_server(make_server)
    async with HttpAdapter(http_url(server), request_timeout=WAIT) as http:
        await http.send_packet(Request.make("block", {"seconds": 0}))  # opens the session
        blocker.started.clear()
        request = Request.make("block")
        task = asyncio.create_task(http.send_packet(request))
        assert await cancel_and_time(task, blocker) < 0.1
        again = await http.send_packet(Request(id=request.id, command="block"))
        assert again.code == StatusCode.CANCELLED
        assert blocker.runs == 2


async def test_a_cancel_for_an_unknown_or_answered_id_changes_nothing(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server, blocker = await blocking_server(make_server)
    client = await make_client(ws_url(server))
    done = await client.send_request("block", {"seconds": 0})
    await client.send_event("siyi.cancel", {"id": "no-such-request"})
    await client.send_event("siyi.cancel", {"id": done.id})
    await client.send_event("siyi.cancel", "not even an object")
    assert (await client.send_request("block", {"seconds": 0})).data == "finished"
    again = await client.send_packet(Request(id=done.id, command="block"))
    assert again.data == "finished"  # the first answer, kept (§6)
    assert blocker.runs == 2


async def test_reserved_events_never_reach_user_handlers(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server()
    seen: list[str] = []
    server.on_event(lambda connection, event: seen.append(event.name))
    client = await make_client(ws_url(server))
    await client.send_event("siyi.cancel", {"id": "x"})
    await client.send_event("siyi.whatever", {})
    await client.send_event("mine", {})
    await post_packet(server, {"id": "e", "type": "event", "name": "siyi.ack"})
    await post_packet(server, {"id": "f", "type": "event", "name": "mine"})
    await wait_until(lambda: len(seen) == 2)
    assert seen == ["mine", "mine"]


# Cancellation: server -> client ----------------------------------------------------------------


async def test_the_server_cancelling_its_request_cancels_the_clients_handler(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server()
    blocker = Blocker()
    client = await make_client(ws_url(server))

    @client.on_request
    async def handler(request: Request) -> Any:
        from siyi_sdk import Response

        return Response.success(request.id, await blocker.block())

    await client.send_request("ping_nothing")  # until the server has the connection
    (connection,) = server.connections
    task = asyncio.create_task(connection.send_request("block"))
    assert await cancel_and_time(task, blocker) < 0.1


async def test_the_server_cancelling_a_request_to_a_polling_client(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    blocker = Blocker()
    async with HttpAdapter(
        http_url(server), mode=AdapterMode.SEND | AdapterMode.RECEIVE, poll_wait=1.0
    ) as http:

        @http.on_request
        async def handler(request: Request) -> Any:
            from siyi_sdk import Response

            return Response.success(request.id, await blocker.block())

        await wait_until(lambda: any(c.polls for c in server.sessions))
        [connection] = server.sessions
        task = asyncio.create_task(connection.send_request("block", timeout=WAIT))
        # Delivered by the next poll, which is waiting already: no poll interval in between.
        assert await cancel_and_time(task, blocker) < 0.1


async def test_a_broadcast_request_cancelled_cancels_every_clients_handler(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server()
    blockers = [Blocker(), Blocker()]
    for blocker in blockers:
        client: ProtocolClient = await make_client(ws_url(server))

        async def handler(request: Request, blocker: Blocker = blocker) -> Any:
            from siyi_sdk import Response

            return Response.success(request.id, await blocker.block())

        client.on_request(handler)
        await client.send_request("ping_nothing")
    task = asyncio.create_task(server.broadcast_request("block", timeout=WAIT))
    for blocker in blockers:
        await asyncio.wait_for(blocker.started.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for blocker in blockers:
        await asyncio.wait_for(blocker.cancelled.wait(), WAIT)


async def test_a_handler_can_read_what_is_left_of_its_budget(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    from siyi_sdk.calls import remaining

    server = await make_server(handler_timeout=1.0)

    @server.command("left")
    async def left(connection: Connection, params: dict[str, Any]) -> float | None:
        return remaining()

    client = await make_client(ws_url(server))
    assert remaining() is None  # outside a handler: unbounded
    budget = (await client.send_request("left", timeout=0.5)).data
    assert 0 < budget <= 0.5  # the smaller of the caller's 0.5 s and the server's 1 s
