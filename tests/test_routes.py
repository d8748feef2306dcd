"""Typed routes and the server's one dispatch path: validation, results, errors, at most once.

Requests come over real sockets: raw frames from the `websockets` library where the exact
frames matter, the SDK's adapters elsewhere, and `POST /general` for HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect

from siyi_sdk import (
    ApiError,
    Connection,
    ForbiddenError,
    HandlerFailedError,
    HttpAdapter,
    ProtocolServer,
    Request,
    Response,
    SiyiError,
    StatusCode,
    WebSocketAdapter,
)
from siyi_sdk.demo import Echo, GameStatus, GetPlayerList, GetStatus
from siyi_sdk.packets import new_id
from siyi_sdk.server import MemoryResponseCache
from tests.conftest import open_http_session
from tests.proxy import WAIT, Gate, WatchedCache, running_server, wait_for


class Refused(ApiError):
    """An application's own error class, with its own code."""

    default_code = 1042


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def post(
    server: ProtocolServer, packet: dict[str, Any], session: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"X-Siyi-Session": session} if session else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{server.port}/general", data=json.dumps(packet), headers=headers
        ) as reply,
    ):
        return reply.status, json.loads(await reply.read())


async def call(server: ProtocolServer, command: str, params: Any = None) -> dict[str, Any]:
    """One request over HTTP, with a fresh id; the Response as the wire carries it."""
    packet: dict[str, Any] = {"id": new_id(), "type": "request", "command": command}
    if params is not None:
        packet["params"] = params
    status, answer = await post(server, packet)
    assert status == 200
    return answer


async def recv_packet(ws: ClientConnection) -> dict[str, Any]:
    """The next packet from a raw WebSocket, skipping a `session` event if the server sends one."""
    while True:
        raw = await wait_for(ws.recv())
        assert isinstance(raw, str)
        obj = json.loads(raw)
        assert isinstance(obj, dict)
        if obj.get("type") == "event" and obj.get("name") == "session":
            continue
        return obj


class Game:
    """A server with typed routes, a name route and a catch-all, recording what ran."""

    def __init__(self, server: ProtocolServer) -> None:
        self.server = server
        self.runs: Counter[str] = Counter()
        self.params: list[Any] = []
        self.gate = Gate()
        self.catch_all: list[str] = []

        @server.command(GetPlayerList)
        async def players(connection: Connection, params: GetPlayerList) -> list[str]:
            self.runs["get_player_list"] += 1
            self.params.append(params)
            return [f"{params.world}-player"]

        @server.command(GetStatus)
        def status(connection: Connection, params: GetStatus) -> GameStatus:  # sync is fine
            return GameStatus(status="running", players=3)

        @server.command(Echo)
        async def echo(connection: Connection, params: Echo) -> Any:
            return params.model_dump()

        @server.command("raw")
        async def raw(connection: Connection, params: dict[str, Any]) -> Any:
            self.params.append(params)
            return {"got": params}

        @server.command("slow")
        async def slow(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
            self.runs["slow"] += 1
            return await self.gate.pass_through({"run": self.runs["slow"], **params})

        @server.command("nothing")
        async def nothing(connection: Connection, params: dict[str, Any]) -> None:
            return None

        @server.command("answer")
        async def answer(connection: Connection, params: dict[str, Any]) -> Response:
            return Response.fail("some-other-id", "as I please", 1500)

        @server.command("forbidden")
        async def forbidden(connection: Connection, params: dict[str, Any]) -> None:
            raise ForbiddenError("members only")

        @server.command("refused")
        async def refused(connection: Connection, params: dict[str, Any]) -> None:
            raise Refused("not now")

        @server.command("coded")
        async def coded(connection: Connection, params: dict[str, Any]) -> None:
            raise ApiError("custom", code=2001)

        @server.command("failed")
        async def failed(connection: Connection, params: dict[str, Any]) -> None:
            raise HandlerFailedError("plain failure")

        @server.command("crash")
        async def crash(connection: Connection, params: dict[str, Any]) -> None:
            raise ZeroDivisionError("secret internals")

        @server.command("unserialisable")
        async def unserialisable(connection: Connection, params: dict[str, Any]) -> object:
            return object()

        @server.on_request
        async def fallback(connection: Connection, request: Request) -> Response:
            self.catch_all.append(request.command)
            return Response.success(request.id, "from the catch-all")


@pytest.fixture
async def game() -> AsyncIterator[Game]:
    async with running_server() as server:
        game = Game(server)
        yield game
        game.gate.open()


# Params and results ---------------------------------------------------------------------------


async def test_params_are_validated_into_the_model(game: Game) -> None:
    answer = await call(game.server, "get_player_list", {"world": "nether"})
    assert answer["data"] == ["nether-player"]
    answer = await call(game.server, "get_player_list")  # absent params: the defaults
    assert answer["data"] == ["overworld-player"]
    assert game.params == [GetPlayerList(world="nether"), GetPlayerList(world="overworld")]
    assert all(type(p) is GetPlayerList for p in game.params)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"world": 5}, "world", id="wrong-type"),
        pytest.param({"world": None}, "world", id="null"),
        pytest.param({"wrold": "nether"}, "wrold", id="unknown-field"),
    ],
)
async def test_params_that_do_not_fit_get_400_naming_the_field(
    game: Game, params: dict[str, Any], field: str
) -> None:
    answer = await call(game.server, "get_player_list", params)
    assert answer["status"] == "error"
    assert answer["code"] == 400
    assert "get_player_list" in answer["error"]
    assert f"{field}:" in answer["error"]
    assert game.runs["get_player_list"] == 0


async def test_return_value_becomes_data(game: Game) -> None:
    status = await call(game.server, "get_status")
    assert status == {
        "id": status["id"],
        "type": "response",
        "status": "ok",
        "code": 0,
        "data": {"status": "running", "players": 3},
    }
    assert (await call(game.server, "nothing"))["data"] is None
    echoed = await call(game.server, "echo", {"a": [1, {"b": None}]})
    assert echoed["data"] == {"a": [1, {"b": None}]}


async def test_a_returned_response_is_sent_with_the_requests_id(game: Game) -> None:
    status, answer = await post(game.server, {"id": "r-7", "type": "request", "command": "answer"})
    assert status == 200
    assert answer == {
        "id": "r-7",
        "type": "response",
        "status": "error",
        "code": 1500,
        "error": "as I please",
    }


async def test_name_route_gets_the_raw_dict(game: Game) -> None:
    params = {"nested": {"list": [1, 2]}, "flag": True}
    assert (await call(game.server, "raw", params))["data"] == {"got": params}
    assert (await call(game.server, "raw"))["data"] == {"got": {}}
    assert game.params == [params, {}]
    assert all(type(p) is dict for p in game.params)


async def test_routes_take_precedence_over_the_catch_all(game: Game) -> None:
    assert (await call(game.server, "get_player_list"))["data"] == ["overworld-player"]
    assert (await call(game.server, "unrouted"))["data"] == "from the catch-all"
    assert game.catch_all == ["unrouted"]


async def test_without_catch_all_unrouted_is_404() -> None:
    async with running_server() as server:

        @server.command("only")
        async def only(connection: Connection, params: dict[str, Any]) -> int:
            return 1

        answer = await call(server, "other")
        assert (answer["status"], answer["code"]) == ("error", 404)
        assert "'other'" in answer["error"]


# Errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        ("forbidden", 403, "members only"),
        ("refused", 1042, "not now"),
        ("coded", 2001, "custom"),
        ("failed", 1, "plain failure"),
    ],
)
async def test_api_error_in_a_handler_becomes_its_code(
    game: Game, command: str, code: int, message: str
) -> None:
    answer = await call(game.server, command)
    assert answer == {
        "id": answer["id"],
        "type": "response",
        "status": "error",
        "code": code,
        "error": message,
    }


@pytest.mark.parametrize("command", ["crash", "unserialisable"])
async def test_a_broken_handler_is_a_500_without_leaking(
    game: Game, command: str, caplog: pytest.LogCaptureFixture
) -> None:
    answer = await call(game.server, command)
    assert (answer["status"], answer["code"]) == ("error", 500)
    assert "internal error" in answer["error"]
    assert "secret internals" not in answer["error"]
    assert "Traceback" not in answer["error"]
    assert any(record.exc_info for record in caplog.records)  # the server logs the traceback


async def test_handler_timeout_is_408_and_the_handler_is_stopped() -> None:
    stopped = asyncio.Event()
    async with running_server(handler_timeout=0.05) as server:

        @server.command("stuck")
        async def stuck(connection: Connection, params: dict[str, Any]) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                stopped.set()

        @server.on_request
        async def stuck_too(connection: Connection, request: Request) -> Response:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        for command in ("stuck", "via-catch-all"):
            answer = await wait_for(call(server, command))
            assert (answer["status"], answer["code"]) == ("error", 408)
            assert command in answer["error"]
        assert stopped.is_set()

        # Over a WebSocket as well: the same dispatch path.
        async with WebSocketAdapter(f"ws://127.0.0.1:{server.port}") as ws:
            response = await ws.send_packet(Request(command="stuck"))
            assert response.code == 408


# At most once ---------------------------------------------------------------------------------


@pytest.fixture
async def watched() -> AsyncIterator[tuple[Game, WatchedCache]]:
    cache = WatchedCache()
    async with running_server(response_cache=cache) as server:
        game = Game(server)
        yield game, cache
        game.gate.open()


async def test_same_id_twice_on_one_websocket_runs_once(
    watched: tuple[Game, WatchedCache],
) -> None:
    game, cache = watched
    frame = json.dumps({"id": "dup-1", "type": "request", "command": "slow", "params": {"x": 1}})
    async with connect(f"ws://127.0.0.1:{game.server.port}") as ws:
        await ws.send(frame)
        await wait_for(game.gate.started.wait())
        await ws.send(frame)
        await wait_for(cache.repeated.wait())  # the repeat is in, waiting for the first run
        game.gate.open()
        first, second = await recv_packet(ws), await recv_packet(ws)
    assert first == second
    assert first == {
        "id": "dup-1",
        "type": "response",
        "status": "ok",
        "code": 0,
        "data": {"run": 1, "x": 1},
    }
    assert game.runs["slow"] == 1


async def test_same_id_after_it_finished_gets_the_remembered_response(game: Game) -> None:
    game.gate.open()
    async with WebSocketAdapter(f"ws://127.0.0.1:{game.server.port}", request_timeout=WAIT) as ws:
        request = Request(command="slow", params={"x": 2})
        first = await ws.send_packet(request)
        second = await ws.send_packet(request)
        other = await ws.send_packet(Request(command="slow", params={"x": 3}))
    assert first == second
    assert first.data == {"run": 1, "x": 2}
    assert other.data == {"run": 2, "x": 3}  # another id is another request
    assert game.runs["slow"] == 2


async def test_same_id_over_websocket_then_http_runs_once(
    watched: tuple[Game, WatchedCache],
) -> None:
    game, cache = watched
    url = f"127.0.0.1:{game.server.port}"
    request = Request(command="slow", params={"x": 4})
    async with (
        WebSocketAdapter(f"ws://{url}", request_timeout=WAIT) as ws,
        HttpAdapter(f"http://{url}", request_timeout=WAIT) as http,
    ):
        # One client, two routes: the same session, so the same id namespace (§6).
        http.share_session(ws.session)
        over_ws = asyncio.create_task(ws.send_packet(request))
        await wait_for(game.gate.started.wait())
        over_http = asyncio.create_task(http.send_packet(request))
        await wait_for(cache.repeated.wait())
        assert not over_http.done()
        game.gate.open()
        first, second = await wait_for(asyncio.gather(over_ws, over_http))
    assert first == second
    assert first.ok
    assert first.data == {"run": 1, "x": 4}
    assert game.runs["slow"] == 1


async def test_server_finishes_a_request_whose_connection_dropped(
    watched: tuple[Game, WatchedCache],
) -> None:
    game, cache = watched
    gone = asyncio.Event()
    game.server.on_disconnect(lambda connection: gone.set())
    frame = {"id": "orphan-1", "type": "request", "command": "slow", "params": {"x": 5}}
    async with connect(f"ws://127.0.0.1:{game.server.port}") as ws:
        session = json.loads(await ws.recv())["data"]["session"]
        await ws.send(json.dumps(frame))
        await wait_for(game.gate.started.wait())
        ws.transport.abort()  # the connection drops (a clean close would end the session)
    await wait_for(gone.wait())  # the server saw the client leave...
    assert not game.gate.finished.is_set()
    game.gate.open()
    await wait_for(game.gate.finished.wait())  # ...and still ran the handler to the end

    status, answer = await post(game.server, frame, session)  # the same peer, over HTTP now
    assert status == 200
    assert answer == {
        "id": "orphan-1",
        "type": "response",
        "status": "ok",
        "code": 0,
        "data": {"run": 1, "x": 5},
    }
    assert game.runs["slow"] == 1
    assert cache.arrivals["orphan-1"] == 2


async def test_remembered_responses_expire_on_the_server() -> None:
    clock = Clock()
    async with running_server(response_cache=MemoryResponseCache(ttl=60, clock=clock)) as server:
        game = Game(server)
        game.gate.open()
        packet = {"id": "again", "type": "request", "command": "slow", "params": {}}
        # Ids are scoped by session (§6): the repeats present the same session.
        key = await open_http_session(server)
        assert (await post(server, packet, key))[1]["data"] == {"run": 1}
        clock.now += 59
        assert (await post(server, packet, key))[1]["data"] == {"run": 1}
        clock.now += 2
        assert (await post(server, packet, key))[1]["data"] == {"run": 2}
        assert game.runs["slow"] == 2


def test_response_cache_ttl_is_the_default_caches_ttl() -> None:
    server = ProtocolServer(port=0, response_cache_ttl=5)
    assert isinstance(server.response_cache, MemoryResponseCache)
    assert server.response_cache.ttl == 5


# The cache on its own -------------------------------------------------------------------------


class Computations:
    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()

    def of(self, request_id: str) -> Any:
        async def compute() -> Response:
            self.runs[request_id] += 1
            return Response.success(request_id, self.runs[request_id])

        return compute


async def test_cache_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache = MemoryResponseCache(ttl=10, clock=clock)
    work = Computations()
    first = await cache.run_once((None, "a"), work.of("a"))
    clock.now += 9.9
    assert (
        await cache.run_once((None, "a"), work.of("a")) == first
    )  # remembered (kept encoded, so an equal copy)
    assert work.runs["a"] == 1
    # Expiry is tracked per time slice (ttl / 16 here), rounded up: never shorter than ttl.
    clock.now += 0.2 + 10 / 16
    again = await cache.run_once((None, "a"), work.of("a"))
    assert again.data == 2
    assert work.runs["a"] == 2
    assert len(cache) == 1


async def test_cache_keeps_at_most_max_entries() -> None:
    cache = MemoryResponseCache(ttl=3600, max_entries=2, clock=Clock())
    work = Computations()
    for request_id in ["a", "b", "c"]:
        await cache.run_once((None, request_id), work.of(request_id))
        assert cache.answers <= 2
    # The oldest answer went first, leaving a marker: "a" gets 410 and never runs again
    # (PROTOCOL.md §4); "c" is still remembered. (More in test_memory_bounds.)
    await cache.run_once((None, "c"), work.of("c"))
    assert work.runs["c"] == 1
    gone = await cache.run_once((None, "a"), work.of("a"))
    assert gone.code == StatusCode.GONE
    assert work.runs["a"] == 1
    assert (cache.answers, cache.markers, len(cache)) == (2, 1, 3)


async def test_cache_identities_are_separate_namespaces() -> None:
    cache = MemoryResponseCache(clock=Clock())
    work = Computations()
    await cache.run_once(("session-1", "a"), work.of("a"))
    await cache.run_once(("session-2", "a"), work.of("a"))
    await cache.run_once((None, "a"), work.of("a"))
    assert work.runs["a"] == 3


async def test_an_interrupted_run_fails_its_waiters_and_may_run_again() -> None:
    cache = MemoryResponseCache(clock=Clock())
    started = asyncio.Event()

    async def never_finishes() -> Response:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    first = asyncio.create_task(cache.run_once((None, "x"), never_finishes))
    await wait_for(started.wait())
    waiter = asyncio.create_task(cache.run_once((None, "x"), Computations().of("x")))
    await asyncio.sleep(0)  # let the waiter find the running entry
    first.cancel()
    with pytest.raises(SiyiError, match="interrupted"):
        await wait_for(waiter)
    assert first.cancelled()
    work = Computations()
    assert (await cache.run_once((None, "x"), work.of("x"))).ok
    assert work.runs["x"] == 1
