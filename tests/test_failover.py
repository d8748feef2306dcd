"""Failover between a WebSocket and HTTP, on real sockets, with the link cut mid-request.

The WebSocketAdapter reaches the server through `TcpProxy`, which the test cuts and resumes;
the HttpAdapter reaches the server directly. The server's at-most-once cache is what makes
the retry safe: the retry carries the same id and waits for the first run's result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from siyi_sdk import (
    Adapter,
    AdapterManager,
    Connection,
    HttpAdapter,
    ProtocolServer,
    Request,
    StatusCode,
    WebSocketAdapter,
)
from siyi_sdk.demo import GameApi, GetPlayerList
from tests.proxy import (
    WAIT,
    Gate,
    TcpProxy,
    WatchedCache,
    running_server,
    sleep_until_accepting,
    wait_for,
)


@dataclass
class Rig:
    server: ProtocolServer
    cache: WatchedCache
    proxy: TcpProxy
    gate: Gate
    ws: WebSocketAdapter
    http: HttpAdapter
    manager: AdapterManager
    api: GameApi


def carrier(rig: Rig) -> Adapter | None:
    """The adapter that carried the last packet (read through a call, so mypy does not narrow)."""
    return rig.manager.last_adapter


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    cache = WatchedCache()
    gate = Gate()
    async with running_server(response_cache=cache) as server, TcpProxy(server.port) as proxy:

        @server.command("slow")
        async def slow(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
            return await gate.pass_through({"ran_over": connection.transport})

        @server.command(GetPlayerList)
        async def players(connection: Connection, params: GetPlayerList) -> list[str]:
            # Which transport carried the call, as the server saw it.
            return [connection.transport]

        ws = WebSocketAdapter(
            proxy.url,
            priority=10,
            reconnect_interval=0.01,
            request_timeout=WAIT,
            sleep=sleep_until_accepting(proxy),
        )
        http = HttpAdapter(f"http://127.0.0.1:{server.port}", priority=0, request_timeout=WAIT)
        # Added lowest priority first: the order added must not matter, only priority.
        async with AdapterManager([http, ws]) as manager:
            yield Rig(server, cache, proxy, gate, ws, http, manager, GameApi(manager))
            gate.open()


async def test_cut_mid_request_fails_over_to_http_and_runs_once(rig: Rig) -> None:
    assert rig.ws.is_connected
    assert await rig.api.get_player_list() == ["websocket"]
    assert carrier(rig) is rig.ws

    request = Request(command="slow")
    call = asyncio.create_task(rig.manager.send_packet(request))
    await wait_for(rig.gate.started.wait())

    await rig.proxy.cut()
    # The retry, same id, has reached the server over HTTP and waits for the first run.
    await wait_for(rig.cache.repeated.wait())
    assert not call.done()
    assert not rig.ws.is_connected
    rig.gate.open()

    response = await wait_for(call)
    assert response.ok
    assert response.id == request.id
    assert response.data == {"ran_over": "websocket"}  # the first run's result
    assert rig.gate.runs == 1
    assert rig.cache.arrivals[request.id] == 2
    assert carrier(rig) is rig.http

    # While the WebSocket is down, calls go straight over HTTP: no waiting on the dead link.
    for _ in range(3):
        started = time.perf_counter()
        assert await rig.api.get_player_list() == ["http"]
        assert time.perf_counter() - started < 0.5
        assert carrier(rig) is rig.http

    await rig.proxy.resume()
    await rig.ws.wait_connected(WAIT)
    assert await rig.api.get_player_list() == ["websocket"]
    assert carrier(rig) is rig.ws
    assert rig.proxy.accepted == 2  # the first connection and the reconnection


async def test_cut_between_requests_goes_straight_to_http(rig: Rig) -> None:
    assert await rig.api.get_player_list() == ["websocket"]
    await rig.proxy.cut()
    started = time.perf_counter()
    assert await rig.api.get_player_list() == ["http"]
    assert time.perf_counter() - started < 0.5
    assert carrier(rig) is rig.http

    await rig.proxy.resume()
    await rig.ws.wait_connected(WAIT)
    assert await rig.api.get_player_list() == ["websocket"]
    assert carrier(rig) is rig.ws


async def test_events_fail_over_too(rig: Rig) -> None:
    seen: list[tuple[str, str, Any]] = []
    arrived = asyncio.Event()

    @rig.server.on_event
    async def record(connection: Connection, event: Any) -> None:
        seen.append((connection.transport, event.name, event.data))
        arrived.set()

    await rig.api.send_event("ping", 1)
    await wait_for(arrived.wait())
    arrived.clear()
    await rig.proxy.cut()
    await rig.api.send_event("ping", 2)  # acknowledged by HTTP: delivered before it returns
    assert seen == [("websocket", "ping", 1), ("http", "ping", 2)]
    assert carrier(rig) is rig.http


async def test_a_request_failed_over_is_cancelled_on_the_adapter_that_carries_it(
    rig: Rig,
) -> None:
    # Issue 13: cancelling the caller withdraws the request on whichever adapter carries it
    # now (here HTTP, after the WebSocket path was cut mid-request): the handler is cancelled.
    started, cancelled = asyncio.Event(), asyncio.Event()

    @rig.server.command("blocked")
    async def blocked(connection: Connection, params: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    assert await rig.api.get_player_list() == ["websocket"]
    request = Request(command="blocked")
    call = asyncio.create_task(rig.manager.send_packet(request))
    await wait_for(started.wait())
    await rig.proxy.cut()
    await wait_for(rig.cache.repeated.wait())  # the same id now waits over HTTP
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_for(cancelled.wait())
    again = await rig.http.send_packet(Request(id=request.id, command="blocked"))
    assert again.code == StatusCode.CANCELLED
