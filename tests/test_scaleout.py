"""Scale-out over Redis, in one process: several ProtocolServers on their own ports sharing one
real redis-server through `RedisBackplane` (PROTOCOL.md §6–§7 across nodes).

The same behaviours with one server process per node, and a node killed mid-traffic, are in
`test_scaleout_processes.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio
from websockets.asyncio.client import ClientConnection, connect

from siyi_sdk import (
    BackplaneUnavailableError,
    Connection,
    ProtocolClient,
    ProtocolServer,
    RedisBackplane,
    Request,
    Response,
)
from siyi_sdk.packets import SESSION_HEADER

from .conftest import (
    WAIT,
    Inbox,
    ServerFactory,
    drop_raw,
    greeting_of,
    http_url,
    open_http_session,
    post_packet,
    recv_frame,
    session_headers,
    wait_for,
    wait_until,
    ws_url,
)
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
                client = ProtocolClient(ws_url(server), request_timeout=WAIT, **kwargs)
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


class Releases:
    """Counts the WebSockets of `server` that dropped and that the node let go of in Redis.

    The disconnect handlers run after the release: from then on the session is away on
    every node, and a broadcast is buffered for it. `server.connections` empties sooner,
    as soon as the socket closes, while the node may still get broadcasts for the session
    (it holds them, and buffers them once Redis answered).
    """

    def __init__(self, server: ProtocolServer) -> None:
        self.count = 0
        self._changed = asyncio.Event()
        server.on_disconnect(self._disconnected)

    def _disconnected(self, connection: Connection) -> None:
        self.count += 1
        self._changed.set()

    async def wait(self, count: int = 1) -> None:
        async def reached() -> None:
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()

        await wait_for(reached())


async def poll(
    http: aiohttp.ClientSession, server: ProtocolServer, key: str, wait: float = 0, after: str = ""
) -> list[dict[str, Any]]:
    async with http.get(
        f"{http_url(server)}/events",
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
    released = Releases(a)
    ws = await connect(ws_url(a))
    greeting = orjson.loads(await ws.recv())
    key = greeting["data"]["session"]
    await drop_raw(ws)  # a drop leaves the session resumable (a clean close would end it)
    await released.wait()
    for n in range(3):
        await b.broadcast_event("while_away", n)
    async with aiohttp.ClientSession() as http:
        got = await poll(http, b, key)
        assert [p["data"] for p in got] == [0, 1, 2]
        # acknowledged: gone from the buffer
        assert await poll(http, a, key, after=got[-1]["id"]) == []


async def test_a_websocket_resumes_on_another_node_with_the_buffer_replayed_in_order(
    make_cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    a, b = await make_cluster(2)
    released = Releases(a)
    ws = await connect(ws_url(a))
    key = (await greeting_of(ws))["session"]
    await drop_raw(ws)
    await released.wait()  # before it, a broadcast could still go down the dead socket
    for n in range(3):
        await a.broadcast_event("while_away", n)
    handle = await b.find_session(key)
    assert handle is not None
    await b.send_event(handle, "direct", "d")
    ws = await connect(ws_url(b), additional_headers={SESSION_HEADER: key})
    data = await greeting_of(ws)
    assert data["session"] == key
    assert data["resumed"] is True
    assert data["dropped"] == 0
    got = [(await recv_frame(ws))["data"] for _ in range(4)]
    assert got == [0, 1, 2, "d"]
    await a.broadcast_event("now", "new")
    assert (await recv_frame(ws))["data"] == "new"
    await ws.close()


async def test_a_client_hopping_between_nodes_gets_every_broadcast_exactly_once_in_order(
    make_cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    """Broadcasts keep coming from every node while one client drops and resumes on the next
    node, again and again: while it attaches, while it is away, while its old node lets go.
    Each arrives once, in order (PROTOCOL.md §7).

    Before each drop the client has read everything sent so far: a WebSocket has no
    acknowledgements, so what is in flight when a cable is cut is lost on any server.
    """
    cluster = await make_cluster(3)
    received: list[int] = []
    sent = 0

    async def burst(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            await cluster[sent % 3].broadcast_event("n", sent)
            sent += 1

    async def reader(ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            async for raw in ws:
                received.append(orjson.loads(raw)["data"])

    key: str | None = None
    for hop in range(9):
        node = cluster[hop % 3]
        headers = {SESSION_HEADER: key} if key else {}
        # Broadcasts race the attach: some land in the buffer, some go down the new socket.
        racing = asyncio.create_task(burst(10 if key else 0))
        ws = await connect(ws_url(node), additional_headers=headers)
        data = await greeting_of(ws)
        assert data["resumed"] is (key is not None)
        key = data["session"]
        task = asyncio.create_task(reader(ws))
        await racing
        await burst(5)
        await wait_until(lambda: len(received) >= sent)
        await drop_raw(ws)
        await task
        await wait_until(lambda: not node.connections)  # noqa: B023 - awaited at once
        await burst(10)  # while away, and while the old node is still letting go
    assert key is not None
    ws = await connect(ws_url(cluster[0]), additional_headers={SESSION_HEADER: key})
    await greeting_of(ws)
    task = asyncio.create_task(reader(ws))
    await wait_until(lambda: len(received) >= sent)
    await ws.close()
    await task
    assert received == list(range(sent))


async def test_a_second_websocket_on_another_node_takes_the_session_over(
    make_cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    a, b = await make_cluster(2)
    first = await connect(ws_url(a))
    key = (await greeting_of(first))["session"]
    second = await connect(ws_url(b), additional_headers={SESSION_HEADER: key})
    assert (await greeting_of(second))["resumed"] is True
    await wait_for(first.wait_closed())
    assert first.close_code == 4001
    handle = await a.find_session(key)
    assert handle is not None
    await a.send_event(handle, "to", "second")
    assert (await recv_frame(second))["data"] == "second"
    await second.close()


async def test_a_clean_close_ends_the_session_on_every_node(
    make_cluster: Callable[..., Awaitable[Cluster]], redis_server: RedisServer, redis_prefix: str
) -> None:
    a, b = await make_cluster(2)
    ended: list[Connection] = []
    a.on_session_end(ended.append)
    ws = await connect(ws_url(a))
    key = (await greeting_of(ws))["session"]
    assert await b.find_session(key) is not None
    await ws.close()
    await wait_until(lambda: bool(ended))
    r = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        async with asyncio.timeout(WAIT):
            # Redis has no event to wait on here: look again until the keys are gone.
            while await r.exists(f"{redis_prefix}:s:{key}"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await r.aclose()
    assert await b.find_session(key) is None


class Counter:
    def __init__(self) -> None:
        self.runs = 0
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, connection: Connection, params: dict[str, Any]) -> int:
        self.runs += 1
        self.started.set()
        await self.gate.wait()
        return self.runs


async def test_a_retried_request_on_another_node_is_not_run_twice(
    make_cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    a, b = await make_cluster(2)
    counter = Counter()
    for server in (a, b):
        server.command("charge")(counter)
    key = await open_http_session(a)
    packet = {"id": "charge-1", "type": "request", "command": "charge"}
    first = asyncio.create_task(post_packet(a, packet, key))
    await wait_for(counter.started.wait())
    # The same request reaches node b while node a still runs it: it waits for a's answer.
    second = asyncio.create_task(post_packet(b, packet, key))
    await asyncio.sleep(0.05)  # give node b time to (wrongly) run it
    assert counter.runs == 1
    counter.gate.set()
    (_, one, _), (_, two, _) = await asyncio.gather(first, second)
    assert one == two
    assert one["data"] == 1
    # And after it finished, a third try on b gets the remembered answer.
    _, three, _ = await post_packet(b, packet, key)
    assert three == one
    assert counter.runs == 1
    # Another session's id namespace is its own (§6).
    _, other, _ = await post_packet(b, packet)
    assert other["data"] == 2


async def test_redis_keys_expire_with_the_sessions(
    make_cluster: Callable[..., Awaitable[Cluster]], redis_server: RedisServer, redis_prefix: str
) -> None:
    """Nothing grows without bound: sessions, buffers, answers and node marks all expire."""
    a, b = await make_cluster(2, session_ttl=0.5, response_cache_ttl=0.5)
    a.command("echo")(lambda connection, params: params)
    for _ in range(5):
        await post_packet(a, {"id": "r1", "type": "request", "command": "echo"})
    released = Releases(b)
    for _ in range(3):
        ws = await connect(ws_url(b))
        await greeting_of(ws)
        await drop_raw(ws)
    await released.wait(3)
    await a.broadcast_event("buffered", 1)  # into the away sessions' buffers
    r = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        assert await r.keys(f"{redis_prefix}:s:*")
        assert await r.keys(f"{redis_prefix}:b:*")
        # What may stay: the broadcast counter, the set of live nodes and their marks.
        expected = {f"{redis_prefix}:seq".encode(), f"{redis_prefix}:nodes".encode()} | {
            f"{redis_prefix}:n:{s.backplane.node_id}".encode() for s in (a, b)
        }
        async with asyncio.timeout(10):
            # Expiry happens inside Redis: look again until only those are left.
            while set(await r.keys(f"{redis_prefix}:*")) - expected:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await r.aclose()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may kill and start again."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


async def test_with_redis_down_local_clients_keep_working_and_the_nodes_reconnect(
    make_server: ServerFactory,
    own_redis: RedisServer,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    delays: list[float] = []
    back = asyncio.Event()

    async def sleep(delay: float) -> None:  # tenacity's sleep: wait for Redis to come back
        delays.append(delay)
        await back.wait()

    cluster = [
        await make_server(backplane=RedisBackplane(own_redis.url, prefix=redis_prefix, sleep=sleep))
        for _ in range(2)
    ]
    for server in cluster:
        server.command("echo")(lambda connection, params: params)
    async with clients_on(cluster, 1) as [(a_client, a_inbox), (b_client, b_inbox)]:
        assert b_client.session.key is not None
        remote = await cluster[0].find_session(b_client.session.key)
        assert remote is not None
        own_redis.stop()
        # Local traffic goes on: requests, and broadcasts to this node's own clients.
        answer = await a_client.send_request("echo", {"n": 1})
        assert answer.data == {"n": 1}
        await wait_until(lambda: not cluster[0].backplane.connected)  # type: ignore[attr-defined]
        await cluster[0].broadcast_event("local", 1)
        await a_inbox.wait_count(1)
        # What must cross processes fails clearly, at once.
        with pytest.raises(BackplaneUnavailableError, match="unreachable"):
            await cluster[0].send_event(remote, "far", 1)
        await wait_until(lambda: bool(delays))
        assert "unreachable" in caplog.text
        assert "retrying" in caplog.text
        # Redis comes back: the nodes reconnect by themselves and cross traffic flows again.
        own_redis.start()
        back.set()
        for server in cluster:
            await wait_for(server.backplane.wait_ready())  # type: ignore[attr-defined]
        await cluster[0].broadcast_event("everywhere", 2)
        await b_inbox.wait_count(1)
        assert b_inbox.data == [2]
        answer = await b_client.send_request("echo", {"n": 2})
        assert answer.data == {"n": 2}


async def test_a_burst_of_drops_does_not_look_like_redis_going_down(
    make_cluster: Callable[..., Awaitable[Cluster]], caplog: pytest.LogCaptureFixture
) -> None:
    """150 clients dropping at once make more concurrent Redis calls than the pool holds:
    they wait for a connection, and the node stays connected."""
    a, b = await make_cluster(2)
    released = Releases(a)
    sockets = [await connect(ws_url(a)) for _ in range(150)]
    keys = [(await greeting_of(ws))["session"] for ws in sockets]
    await asyncio.gather(*(drop_raw(ws) for ws in sockets))
    await released.wait(150)
    await a.broadcast_event("after", 1)
    assert a.backplane.connected  # type: ignore[attr-defined]
    assert "lost" not in caplog.text
    async with aiohttp.ClientSession() as http:
        got = await poll(http, b, keys[-1])
    assert [p["data"] for p in got] == [1]


async def test_after_a_clean_close_is_answered_no_node_has_the_session(
    make_cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    """The close is answered once the session's end reached Redis: a client that comes
    straight back with its key, on the other node, starts a new session."""
    a, b = await make_cluster(2)
    for _ in range(5):
        async with connect(ws_url(a)) as ws:
            key = (await greeting_of(ws))["session"]
        # `async with` returned: the close was answered.
        assert await b.find_session(key) is None
        async with connect(ws_url(b), additional_headers=session_headers(key)) as ws:
            data = await greeting_of(ws)
            assert data["resumed"] is False
            assert data["session"] != key
