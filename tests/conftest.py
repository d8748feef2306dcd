"""Shared fixtures: real servers on port 0, real clients, and helpers for raw WebSocket peers.

Nothing here mocks the code under test: every server is aiohttp's real server on a loopback
port and every client speaks to it over a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection

from siyi_sdk import (
    Adapter,
    Event,
    ProtocolClient,
    ProtocolServer,
    RequestPacket,
    Response,
    ResponsePacket,
    encode,
    parse_message,
)
from siyi_sdk.packets import SESSION_HEADER

if TYPE_CHECKING:
    from .redis_server import RedisServer

WAIT = 5.0
"""The bound on every wait for something that must happen: it only matters when a test fails."""


def ws_url(server: ProtocolServer) -> str:
    """The server's WebSocket URL, with no path (as in the seed's client)."""
    return f"ws://127.0.0.1:{server.port}"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerFactory(Protocol):
    def __call__(self, **kwargs: Any) -> Awaitable[ProtocolServer]: ...


class ClientFactory(Protocol):
    def __call__(self, url: str, **kwargs: Any) -> Awaitable[ProtocolClient]: ...


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start servers (``port=0`` unless given); each is stopped at the end of the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def factory(**kwargs: Any) -> ProtocolServer:
            kwargs.setdefault("port", 0)
            kwargs.setdefault("shutdown_timeout", 1.0)
            return await stack.enter_async_context(ProtocolServer(**kwargs))

        yield factory


@pytest.fixture
async def server(make_server: ServerFactory) -> ProtocolServer:
    """A started server with default settings on a free port."""
    return await make_server()


@pytest.fixture
async def make_client(make_server: ServerFactory) -> AsyncIterator[ClientFactory]:
    """Open clients (``async with``); each is closed at the end of the test, before the servers.

    Depends on `make_server` only so that clients are torn down first.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def factory(url: str, **kwargs: Any) -> ProtocolClient:
            kwargs.setdefault("request_timeout", WAIT)
            return await stack.enter_async_context(ProtocolClient(url, **kwargs))

        yield factory


RawHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RawServerFactory(Protocol):
    def __call__(self, handler: RawHandler) -> Awaitable[str]: ...


@pytest.fixture
async def make_raw_server() -> AsyncIterator[RawServerFactory]:
    """Serve a hand-written aiohttp WebSocket handler at "/" on a free port; returns its URL.

    For what ProtocolServer would never do: a server that sends garbage or never answers pings.
    """
    runners: list[web.AppRunner] = []

    async def factory(handler: RawHandler) -> str:
        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"ws://127.0.0.1:{runner.addresses[0][1]}"

    try:
        yield factory
    finally:
        for runner in runners:
            await runner.cleanup()


async def greet(ws: web.WebSocketResponse, session: str = "raw-session") -> None:
    """Send what every v1 server sends first on a packet WebSocket: the `session` event (§7)."""
    await ws.send_str(
        json.dumps(
            {
                "id": "greeting",
                "type": "event",
                "name": "session",
                "data": {
                    "session": session,
                    "protocol": 1,
                    "heartbeat_interval": None,
                    "resumed": False,
                    "dropped": 0,
                },
            }
        )
    )


async def wait_for(awaitable: Awaitable[Any], timeout: float = WAIT) -> Any:
    """Await something that must happen, failing the test instead of hanging."""
    async with asyncio.timeout(timeout):
        return await awaitable


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Yield to the loop until `predicate()` holds, for state the library exposes no event for.

    It never sleeps for a time: `sleep(0)` only lets the tasks that make `predicate` true run.
    """
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - no event to wait on; yields, never sleeps
            await asyncio.sleep(0)


# Raw session peers (PROTOCOL.md §7) -----------------------------------------------------


def http_url(server: ProtocolServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def recv_frame(ws: ClientConnection) -> dict[str, Any]:
    raw = await wait_for(ws.recv())
    assert isinstance(raw, str)
    frame = json.loads(raw)
    assert isinstance(frame, dict)
    return frame


async def greeting_of(ws: ClientConnection) -> dict[str, Any]:
    """The `session` event's data: it must be the first frame."""
    frame = await recv_frame(ws)
    assert (frame["type"], frame["name"]) == ("event", "session")
    data = frame["data"]
    assert isinstance(data, dict)
    return data


def session_headers(key: str | None) -> dict[str, str]:
    return {SESSION_HEADER: key} if key is not None else {}


async def post_packet(
    server: ProtocolServer, packet: dict[str, Any], key: str | None = None
) -> tuple[int, dict[str, Any], str | None]:
    """One raw ``POST /general``: status, Response body, the session key the server returned."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{http_url(server)}/general", data=json.dumps(packet), headers=session_headers(key)
        ) as reply,
    ):
        return reply.status, json.loads(await reply.read()), reply.headers.get(SESSION_HEADER)


async def open_http_session(server: ProtocolServer) -> str:
    """Open a session with one HTTP call (no session header) and return its key."""
    status, _, key = await post_packet(server, {"id": "hello", "type": "event", "name": "hello"})
    assert status == 200
    assert key is not None
    return key


async def drop_raw(ws: ClientConnection) -> None:
    """Drop a raw WebSocket without a close frame (a clean close would end its session)."""
    ws.transport.abort()
    await ws.wait_closed()


class RawSocket(Protocol):
    """What the tests use of a `websockets` client connection."""

    async def send(self, message: str | bytes) -> None: ...

    async def recv(self) -> str | bytes: ...


async def recv_json(ws: RawSocket, timeout: float = WAIT) -> dict[str, Any]:
    """Receive one text frame from a raw `websockets` peer and decode it as a JSON object.

    A ``session`` event (PROTOCOL.md §7), which a server may send first, is skipped like a
    peer that does not care about it would.
    """
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.recv()
            assert isinstance(raw, str), "packets travel in text frames"
            obj = json.loads(raw)
            assert isinstance(obj, dict)
            if obj.get("type") == "event" and obj.get("name") == "session":
                continue
            return obj


class Inbox:
    """A client-side event handler that records what arrives, with event-driven waits."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    @property
    def data(self) -> list[Any]:
        return [event.data for event in self.events]

    async def wait_count(self, count: int) -> None:
        async def reached() -> None:
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()

        await wait_for(reached())


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole run; each test keeps to its own key prefix."""
    from .redis_server import RedisServer  # it uses free_port from here

    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own, so tests sharing the redis-server never meet."""
    return f"t{abs(hash(request.node.nodeid)) % 10**8}-{uuid.uuid4().hex[:8]}"


ROOT = Path(__file__).resolve().parent.parent


# A server process and its memory ----------------------------------------------------------


class Node:
    """A server process: of the memory tests (`tests.memory_node`) or of a deployment."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients, to Redis, to anyone."""
        self.process.send_signal(signal.SIGKILL)

    def rss(self) -> int:
        """The process's resident memory, in bytes."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")


NodeFactory = Callable[..., Awaitable[Node]]


async def spawn_node(module: str, url: str, prefix: str) -> Node:
    """Start ``python -m <module> PORT URL PREFIX`` (a node of a deployment over Redis) on a free
    port and wait for its ``ready`` line."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        str(port),
        url,
        prefix,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    line = await wait_for(process.stdout.readline(), 20)
    assert line.strip() == b"ready", f"the node did not start: {line!r}"
    return Node(process, port)


@contextlib.asynccontextmanager
async def deployment(
    module: str, url: str, prefix: str, count: int = 3
) -> AsyncIterator[list[Node]]:
    """`count` nodes of `module` sharing the Redis at `url`; every one killed at the end."""
    started = await asyncio.gather(*(spawn_node(module, url, prefix) for _ in range(count)))
    try:
        yield list(started)
    finally:
        for node in started:
            with contextlib.suppress(ProcessLookupError):
                node.kill()
            await node.process.wait()


@pytest.fixture
async def start_node() -> AsyncIterator[NodeFactory]:
    """Start `tests.memory_node` processes with ProtocolServer options; killed at the end."""
    nodes: list[Node] = []

    async def factory(**options: Any) -> Node:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.memory_node",
            json.dumps(options),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert process.stdout is not None
        line = await wait_for(process.stdout.readline(), 20)
        word, _, port = line.decode().partition(" ")
        assert word == "ready", f"the server did not start: {line!r}"
        node = Node(process, int(port))
        nodes.append(node)
        return node

    try:
        yield factory
    finally:
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                node.kill()
            await node.process.wait()


class OneShotHttp(Adapter):
    """A user's own adapter, whole: nothing but send_packet, no constructor of its own."""

    url = ""

    async def send_packet(self, packet: RequestPacket) -> ResponsePacket:
        async with aiohttp.ClientSession() as http, http.post(self.url, data=encode(packet)) as r:
            answer = parse_message(await r.read())
        assert isinstance(answer, Response)
        return answer


class Bystander:
    """A second client that keeps asking the server during an attack, timing each answer."""

    def __init__(self, client: ProtocolClient) -> None:
        self.client = client
        self.latencies: list[float] = []

    async def call(self, command: str, params: dict[str, Any] | None = None) -> Any:
        started = time.perf_counter()
        response = await self.client.send_request(command, params, timeout=WAIT)
        self.latencies.append(time.perf_counter() - started)
        assert response.ok, response
        return response.data

    async def keep_asking(self) -> None:
        while True:
            assert await self.call("ping") == "pong"
            await asyncio.sleep(0.05)  # the pace of its questions

    def check(self) -> None:
        """It got answers all along, each within a second."""
        assert len(self.latencies) >= 3
        assert max(self.latencies) < 1.0, f"slowest answer {max(self.latencies):.2f} s"


@contextlib.asynccontextmanager
async def bystander(node: Node) -> AsyncIterator[Bystander]:
    async with ProtocolClient(node.url, request_timeout=WAIT) as client:
        yield Bystander(client)


@contextlib.asynccontextmanager
async def asking(who: Bystander) -> AsyncIterator[None]:
    task = asyncio.create_task(who.keep_asking())
    try:
        yield
    finally:
        if task.done():
            task.result()  # a failed question fails the test
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
