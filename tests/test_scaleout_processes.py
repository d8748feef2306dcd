"""Scale-out with one server process per node: three processes on three ports, one real
redis-server, clients spread over them, and a node killed (SIGKILL) in the middle of traffic.

Each node is `tests.scaleout_node`, a ProtocolServer with a RedisBackplane. A `TcpProxy` in
front of each client stands in for the load balancer: when a node dies, it sends that node's
clients to a live one, as a load balancer's health check would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from siyi_sdk import (
    ProtocolClient,
    Request,
    Response,
    StatusCode,
    TransportError,
)
from siyi_sdk.testing import TcpProxy

from .conftest import WAIT, Inbox, Node, deployment, wait_for, wait_until
from .redis_server import RedisServer


@pytest.fixture
async def nodes(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[list[Node]]:
    async with deployment("tests.scaleout_node", redis_server.url, redis_prefix) as started:
        yield started


async def instant(delay: float) -> None:
    """The clients' reconnect sleep: no waiting, so a test never waits on a clock."""
    await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def spread(
    nodes: list[Node], per_node: int, proxied: bool = False
) -> AsyncIterator[list[tuple[ProtocolClient, Inbox, TcpProxy | None]]]:
    """ProtocolClients spread over the nodes, each answering ``echo`` and ``whoami``."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        index = 0
        for node in nodes:
            for _ in range(per_node):
                proxy = None
                url = node.url
                if proxied:
                    proxy = await stack.enter_async_context(TcpProxy(node.port))
                    url = proxy.url
                client = ProtocolClient(url, request_timeout=WAIT, sleep=instant)
                inbox = Inbox()
                client.on_event(inbox)

                def answer(request: Request, index: int = index) -> Response:
                    if request.command == "whoami":
                        return Response.success(request.id, index)
                    return Response.success(request.id, request.params)

                client.on_request(answer)
                await stack.enter_async_context(client)
                out.append((client, inbox, proxy))
                index += 1
        yield out


async def test_three_processes_serve_as_one(nodes: list[Node]) -> None:
    async with spread(nodes, 3) as clients:
        first, _, _ = clients[0]
        middle, _, _ = clients[4]
        last, _, _ = clients[8]
        # A broadcast from a node reaches every client of every node.
        assert (await first.send_request("broadcast", {"name": "hello", "data": 1})).ok
        for _, inbox, _ in clients:
            await inbox.wait_count(1)
            assert inbox.data == [1]
        # A broadcast request from a node collects the answer of every client of every node.
        answer = await middle.send_request("ask_all", {"timeout": WAIT})
        assert answer.ok
        assert sorted(index for _, index in answer.data) == list(range(9))
        assert {key for key, _ in answer.data} == {c.session.key for c, _, _ in clients}
        # An event and a request to a session attached to another node get there and back.
        assert (
            await last.send_request(
                "notify", {"session": first.session.key, "name": "direct", "data": "to-0"}
            )
        ).data is True
        await clients[0][1].wait_count(2)
        assert clients[0][1].data[-1] == "to-0"
        echoed = await last.send_request(
            "ask", {"session": clients[1][0].session.key, "params": {"x": 1}}
        )
        assert echoed.data == {"x": 1}


async def send_once_at_most(client: ProtocolClient, request: Request) -> Response:
    """What a careful application does: on a dropped link, send the same request (same id)
    again until it gets an answer; the server runs it at most once (PROTOCOL.md §6)."""
    while True:
        try:
            await client.wait_connected(WAIT)
            return await client.send_packet(request)
        except TransportError:
            continue


async def test_killing_a_node_mid_traffic_loses_nothing_acknowledged(
    nodes: list[Node], redis_server: RedisServer, redis_prefix: str
) -> None:
    counters = redis.asyncio.Redis.from_url(redis_server.url)
    async with spread(nodes, 2, proxied=True) as clients:
        driver, _, _ = clients[-1]  # on node 2, which lives
        doomed = [(c, p) for c, _, p in clients[:2]]  # on node 0, which is killed
        keys_before = [c.session.key for c, _ in doomed]
        results: dict[str, Response] = {}
        sent_broadcasts: list[int] = []
        killed = asyncio.Event()
        first_after_kill: list[int] = []

        async def traffic(client: ProtocolClient, name: str) -> None:
            for n in range(30):
                key = f"{name}-{n}"
                request = Request.make("count", {"key": key, "sleep": 0.01})
                results[key] = await send_once_at_most(client, request)

        async def broadcasts() -> None:
            for n in range(60):
                if killed.is_set() and not first_after_kill:
                    first_after_kill.append(n)
                answer = await send_once_at_most(
                    driver, Request.make("broadcast", {"name": "n", "data": n})
                )
                assert answer.ok
                sent_broadcasts.append(n)
                await asyncio.sleep(0.005)  # spread them over the traffic

        work = [asyncio.create_task(traffic(c, f"c{i}")) for i, (c, _, _) in enumerate(clients)]
        fan = asyncio.create_task(broadcasts())
        await wait_until(lambda: len(results) >= 12, timeout=20)
        nodes[0].kill()
        await nodes[0].process.wait()
        killed.set()
        for _, proxy in doomed:  # the load balancer sends them elsewhere
            assert proxy is not None
            proxy.target_port = nodes[1].port
        await wait_for(asyncio.gather(*work, fan), 60)

        # The clients of the dead node resumed their sessions on another node.
        for (client, _), key in zip(doomed, keys_before, strict=True):
            await client.wait_connected(WAIT)
            assert client.session.key == key
        # At most once: no request ran twice, whichever node it was retried on.
        for key, response in results.items():
            runs = int(await counters.get(f"{redis_prefix}:test:runs:{key}") or 0)
            assert runs <= 1, key
            if response.ok:  # acknowledged: it ran, exactly once, and this is its answer
                assert runs == 1, key
                assert response.data == 1
            else:  # only a request the dead node was running may end so
                assert response.code == StatusCode.UNAVAILABLE, response
        # Broadcasts: every client gets each once, in order; every one sent after the kill
        # arrives (one in flight to a socket of the killed node may be lost with it).
        after = first_after_kill[0] if first_after_kill else len(sent_broadcasts)
        for _, inbox, _ in clients:

            def has_the_last(inbox: Inbox = inbox) -> bool:
                return bool(inbox.data) and inbox.data[-1] == sent_broadcasts[-1]

            await wait_until(has_the_last, timeout=20)
            got = inbox.data
            assert got == sorted(set(got)), "duplicated or out of order"
            assert set(range(after, len(sent_broadcasts))) <= set(got)
    await counters.aclose()
