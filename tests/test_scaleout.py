"""Scale-out over Redis, in one process: several ProtocolServers on their own ports sharing one
real redis-server through `RedisBackplane` (PROTOCOL.md §6–§7 across nodes).

The same behaviours with one server process per node, and a node killed mid-traffic, are in
`test_scaleout_processes.py`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from siyi_sdk import (
    ProtocolClient,
    ProtocolServer,
    RedisBackplane,
    Request,
    Response,
)
from siyi_sdk.packets import SESSION_HEADER

from .conftest import WAIT, Inbox, ServerFactory, wait_until
from .redis_server import RedisServer

Cluster = list[ProtocolServer]


@pytest.fixture
async def make_cluster(
    make_server: ServerFactory, redis_server: RedisServer, redis_prefix: str
) -> Callable[..., Awaitable[Cluster]]:
    async def factory(nodes: int = 3, url: str | None = None, **kwargs: Any) -> Cluster:
        cluster = []
        for _ in range(nodes):
            backplane = RedisBackplane(url or redis_server.url, prefix=redis_prefix)
            cluster.append(await make_server(backplane=backplane, **kwargs))
        return cluster

    return factory


def url_of(server: ProtocolServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def http_of(server: ProtocolServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@contextlib.asynccontextmanager
async def clients_on(
    cluster: Cluster, per_node: int, **kwargs: Any
) -> AsyncIterator[list[tuple[ProtocolClient, Inbox]]]:
    """`per_node` ProtocolClients on each node, each with an Inbox for its events."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for server in cluster:
            for _ in range(per_node):
                inbox = Inbox()
                client = ProtocolClient(url_of(server), request_timeout=WAIT, **kwargs)
                client.on_event(inbox)
                await stack.enter_async_context(client)
                out.append((client, inbox))
        yield out


async def test_a_broadcast_from_one_node_reaches_every_client_of_every_node_once(
    make_cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    cluster = await make_cluster(3)
    async with clients_on(cluster, 4) as clients:
        await cluster[1].broadcast_event("tick", 1)
        await cluster[2].broadcast_event("tick", 2)
        for _, inbox in clients:
            await inbox.wait_count(2)
        assert all(inbox.data == [1, 2] for _, inbox in clients)


async def test_broadcast_exclude_works_across_nodes(
    make_cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    cluster = await make_cluster(2)
    async with clients_on(cluster, 1) as clients:
        (_, a_inbox), (b, b_inbox) = clients
        assert b.session.key is not None
        excluded = await cluster[0].find_session(b.session.key)
        assert excluded is not None
        await cluster[0].broadcast_event("first", 1, exclude=[excluded])
        await cluster[0].broadcast_event("second", 2)
        await b_inbox.wait_count(1)
        await a_inbox.wait_count(2)
        assert b_inbox.data == [2]


async def test_broadcast_request_collects_every_answer_of_every_node(
    make_cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    cluster = await make_cluster(3)
    async with clients_on(cluster, 3) as clients:
        for index, (client, _) in enumerate(clients):

            def answer(request: Request, index: int = index) -> Response:
                return Response.success(request.id, {"me": index})

            client.on_request(answer)
        answers = await cluster[0].broadcast_request("whoami", timeout=WAIT)
        assert len(answers) == 9
        got = sorted(r.data["me"] for r in answers.values() if isinstance(r, Response))
        assert got == list(range(9))
        keys = {c.session for c in answers}
        assert keys == {client.session.key for client, _ in clients}


async def test_send_event_and_request_reach_a_session_attached_to_another_node(
    make_cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    a, b = await make_cluster(2)
    async with clients_on([a], 1) as [(client, inbox)]:
        client.on_request(lambda request: Response.success(request.id, request.params))
        assert client.session.key is not None
        handle = await b.find_session(client.session.key)
        assert handle is not None
        assert not handle.is_connected  # its WebSocket is on node a
        await b.send_event(handle, "hello", {"from": "b"})
        await inbox.wait_count(1)
        assert inbox.data == [{"from": "b"}]
        answer = await b.send_request(handle, "echo", {"x": 1}, timeout=WAIT)
        assert answer.ok
        assert answer.data == {"x": 1}


async def test_unknown_session_key_is_not_found(
    make_cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    (a,) = await make_cluster(1)
    assert await a.find_session("no-such-key") is None


async def post(
    http: aiohttp.ClientSession, server: ProtocolServer, packet: dict[str, Any], key: str | None
) -> tuple[dict[str, Any], str]:
    headers = {SESSION_HEADER: key} if key else {}
    async with http.post(f"{http_of(server)}/general", json=packet, headers=headers) as resp:
        return await resp.json(), resp.headers[SESSION_HEADER]


async def poll(
    http: aiohttp.ClientSession, server: ProtocolServer, key: str, wait: float = 0, after: str = ""
) -> list[dict[str, Any]]:
    async with http.get(
        f"{http_of(server)}/events",
        params={"wait": str(wait), "after": after},
        headers={SESSION_HEADER: key},
    ) as resp:
        assert resp.status == 200
        assert resp.headers[SESSION_HEADER] == key
        got = await resp.json()
        assert isinstance(got, list)
        return got


async def test_moving_from_websocket_on_one_node_to_http_on_another_keeps_the_session(
    make_cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    a, b = await make_cluster(2)
    ws = await connect(url_of(a))
    greeting = orjson.loads(await ws.recv())
    key = greeting["data"]["session"]
    await drop(ws)  # a drop leaves the session resumable (a clean close would end it)
    await wait_until(lambda: not a.connections)
    for n in range(3):
        await b.broadcast_event("while_away", n)
    async with aiohttp.ClientSession() as http:
        got = await poll(http, b, key)
        assert [p["data"] for p in got] == [0, 1, 2]
        # acknowledged: gone from the buffer
        assert await poll(http, a, key, after=got[-1]["id"]) == []


async def drop(ws: ClientConnection) -> None:
    """Cut a raw client's TCP connection without a close frame (the session stays)."""
    ws.transport.abort()
    with contextlib.suppress(Exception):
        await ws.wait_closed()
