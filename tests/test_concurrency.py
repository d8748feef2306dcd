"""Requests are handled concurrently (PROTOCOL.md §6): a slow handler never holds up the others."""

from __future__ import annotations

import asyncio
import time

from siyi_sdk import Connection, ProtocolServer, Request, Response
from tests.conftest import ClientFactory, wait_for, ws_url


async def slow_echo(connection: Connection, request: Request) -> Response:
    await asyncio.sleep(0.3)
    return Response.success(request.id, data=request.params)


async def test_hundred_slow_requests_run_concurrently(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    server.on_request(slow_echo)
    client = await make_client(ws_url(server))
    started = time.monotonic()
    responses = await wait_for(
        asyncio.gather(*(client.send_request("echo", {"i": i}) for i in range(100)))
    )
    elapsed = time.monotonic() - started
    # One at a time would take 30 s; concurrently it is one handler's 0.3 s plus overhead.
    assert elapsed < 1.0
    # Each caller got its own answer, matched by id.
    assert [r.data for r in responses] == [{"i": i} for i in range(100)]
    assert all(r.ok for r in responses)


async def test_a_stuck_request_does_not_hold_up_the_next_one(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    release = asyncio.Event()

    async def handler(connection: Connection, request: Request) -> Response:
        if request.command == "stuck":
            await release.wait()
        return Response.success(request.id, data=request.command)

    server.on_request(handler)
    client = await make_client(ws_url(server))
    stuck = asyncio.create_task(client.send_request("stuck"))
    try:
        assert (await client.send_request("quick", timeout=2)).data == "quick"
        assert not stuck.done()
        release.set()
        assert (await wait_for(stuck)).data == "stuck"
    finally:
        release.set()


async def test_server_requests_to_one_client_run_concurrently(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)

    async def client_handler(request: Request) -> Response:
        await asyncio.sleep(0.3)
        return Response.success(request.id, data=request.params)

    client = await make_client(ws_url(server))
    client.on_request(client_handler)
    conn = await wait_for(connected.get())
    started = time.monotonic()
    responses = await wait_for(
        asyncio.gather(*(server.send_request(conn, "work", {"i": i}) for i in range(100)))
    )
    assert time.monotonic() - started < 1.0
    assert [r.data for r in responses] == [{"i": i} for i in range(100)]
