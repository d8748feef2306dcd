"""Server middleware (issue 12): one chain sees every call, in and out, whatever carried it."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import aiohttp
from websockets.asyncio.client import connect

from siyi_sdk import Connection, ProtocolClient, ProtocolServer, Request, Response, StatusCode
from siyi_sdk.pipeline import CallNext
from siyi_sdk.server import ServerCall

from .conftest import WAIT, Inbox, ServerFactory, greeting_of, http_url, recv_frame, ws_url


def request(request_id: str, command: str = "echo", **params: Any) -> str:
    return json.dumps({"id": request_id, "type": "request", "command": command, "params": params})


async def serve(make_server: ServerFactory) -> tuple[ProtocolServer, Counter[str]]:
    server = await make_server()
    runs: Counter[str] = Counter()

    @server.command("echo")
    def echo(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
        runs["echo"] += 1
        return params

    return server, runs


async def post(server: ProtocolServer, body: str, key: str | None = None) -> tuple[Any, str]:
    headers = {"X-Siyi-Session": key} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{http_url(server)}/general", data=body, headers=headers) as reply,
    ):
        return json.loads(await reply.read()), reply.headers["X-Siyi-Session"]


async def test_a_counter_sees_every_call_by_command_and_transport_and_cache_hits(
    make_server: ServerFactory,
) -> None:
    server, runs = await serve(make_server)
    seen: Counter[tuple[str, str | None, str, bool]] = Counter()
    durations: list[float] = []

    async def count(call: ServerCall, call_next: CallNext[ServerCall]) -> Response | None:
        answer = await call_next(call)
        seen[call.name, call.transport, call.direction, call.cached] += 1
        if call.duration is not None:
            durations.append(call.duration)
        return answer

    server.use(count)

    async with connect(ws_url(server)) as ws:
        await greeting_of(ws)
        for _ in range(2):  # the same id twice: the second is the at-most-once record's
            await ws.send(request("a", x=1))
            assert (await recv_frame(ws))["data"] == {"x": 1}
        await ws.send(json.dumps({"id": "e1", "type": "event", "name": "ping", "data": None}))
        await ws.send(request("b"))
        await recv_frame(ws)

    answer, key = await post(server, request("h", y=2))
    assert answer["data"] == {"y": 2}
    again, _ = await post(server, request("h", y=2), key)
    assert again == answer

    assert runs["echo"] == 3
    assert seen == Counter(
        {
            ("echo", "websocket", "in", False): 2,
            ("echo", "websocket", "in", True): 1,
            ("ping", "websocket", "in", False): 1,
            ("echo", "http", "in", False): 1,
            ("echo", "http", "in", True): 1,
        }
    )
    assert len(durations) == 6
    assert all(d >= 0 for d in durations)


async def test_a_rate_limit_answers_429_for_one_session_without_running_the_handler(
    make_server: ServerFactory,
) -> None:
    server, runs = await serve(make_server)
    limited: set[str] = set()

    async def limit(call: ServerCall, call_next: CallNext[ServerCall]) -> Response | None:
        connection = call.connection
        if call.direction == "in" and connection is not None and connection.session in limited:
            if call.is_request:
                return Response.fail(call.packet.id, "busy: over your rate", StatusCode.BUSY)
            return None  # an event: dropped
        return await call_next(call)

    server.use(limit)
    answer, key = await post(server, request("1"))
    assert answer["code"] == 0
    limited.add(key)
    answer, _ = await post(server, request("2"), key)
    assert (answer["id"], answer["code"]) == ("2", 429)
    async with connect(ws_url(server), additional_headers={"X-Siyi-Session": key}) as ws:
        await greeting_of(ws)
        await ws.send(request("3"))
        frame = await recv_frame(ws)
        assert (frame["id"], frame["code"]) == ("3", 429)
    # Another session is not limited.
    answer, _ = await post(server, request("4"))
    assert answer["code"] == 0
    assert runs["echo"] == 2


async def test_the_chain_sees_what_the_server_sends_and_can_stamp_meta(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    outgoing: list[tuple[str, str]] = []

    async def stamp(call: ServerCall, call_next: CallNext[ServerCall]) -> Response | None:
        if call.direction == "out":
            call.meta["stamped"] = True
            outgoing.append((call.name, type(call.packet).__name__))
        return await call_next(call)

    server.use(stamp)
    got: list[Any] = []
    inbox = Inbox()
    async with ProtocolClient(ws_url(server), request_timeout=WAIT) as client:

        @client.on_request
        def answer(request: Any) -> Response:
            got.append(request.meta)
            return Response.success(request.id, "pong")

        client.on_event(inbox)
        (connection,) = server.connections
        reply = await server.send_request(connection, "ping")
        assert reply.data == "pong"
        await server.send_event(connection, "one")
        await server.broadcast_event("all")
        await inbox.wait_count(2)
    assert got == [{"stamped": True, "timeout": 30.0}]  # and the request's budget (§9)
    assert [e.meta for e in inbox.events] == [{"stamped": True}, {"stamped": True}]
    assert outgoing == [("ping", "Request"), ("one", "Event"), ("all", "Event")]


async def test_typed_server_events_validate_and_drop_what_does_not_fit(
    make_server: ServerFactory,
) -> None:
    from siyi_sdk import EventModel

    class PlayerMoved(EventModel):
        x: int
        y: int

    server = await make_server()
    moves: list[PlayerMoved] = []
    server.event(PlayerMoved)(lambda connection, data: moves.append(data))
    server.declare_event(PlayerMoved)
    async with connect(ws_url(server)) as ws:
        await greeting_of(ws)
        for data in ({"x": 1, "y": 2}, {"x": "not a number"}, {"x": 3, "y": 4}):
            await ws.send(
                json.dumps({"id": "e", "type": "event", "name": "player_moved", "data": data})
            )
        await ws.send(request("after"))
        assert (await recv_frame(ws))["id"] == "after"  # the reader carried on
    assert moves == [PlayerMoved(x=1, y=2), PlayerMoved(x=3, y=4)]
    async with aiohttp.ClientSession() as http, http.get(f"{http_url(server)}/about") as reply:
        about = await reply.json()
    assert [e["name"] for e in about["events"]] == ["player_moved"]
    assert [e["name"] for e in about["sends"]["events"]] == ["player_moved"]


async def test_an_upload_completion_passes_the_chain_and_may_be_refused(
    make_server: ServerFactory,
) -> None:
    from siyi_sdk import HttpAdapter
    from siyi_sdk.errors import ForbiddenError

    server = await make_server()
    seen: list[tuple[str, str | None, Any]] = []

    async def guard(call: ServerCall, call_next: CallNext[ServerCall]) -> Response | None:
        if call.name == "siyi.upload":
            params = call.packet.params if isinstance(call.packet, Request) else None
            assert params is not None
            seen.append((call.name, call.transport, params["name"]))
            if params["name"] == "forbidden.txt":
                return Response.fail(call.packet.id, "forbidden: no such files", 403)
        return await call_next(call)

    server.use(guard)
    async with HttpAdapter(http_url(server)) as adapter:
        stored = await adapter.upload(b"fine", name="ok.txt")
        assert stored.name == "ok.txt"
        try:
            await adapter.upload(b"nope", name="forbidden.txt")
        except ForbiddenError:
            pass
        else:
            raise AssertionError("the middleware's refusal did not reach the client")
    async with ProtocolClient(ws_url(server), request_timeout=WAIT) as client:
        await client.upload(b"by websocket", name="ws.txt")
    assert seen == [
        ("siyi.upload", "http", "ok.txt"),
        ("siyi.upload", "http", "forbidden.txt"),
        ("siyi.upload", "websocket", "ws.txt"),
    ]
    assert server.upload_dir is not None
    names = sorted(p.name for p in server.upload_dir.glob("*/*"))
    assert names == ["ok.txt", "ws.txt"]
