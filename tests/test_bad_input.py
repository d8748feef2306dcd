"""Bad input over a real socket (PROTOCOL.md §4): answered, never fatal to the connection.

The peer is the `websockets` library, so what is checked is exactly what goes over the wire.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from siyi_sdk import (
    Connection,
    ForbiddenError,
    ProtocolClient,
    ProtocolError,
    ProtocolServer,
    Request,
    Response,
)
from tests.conftest import (
    RawServerFactory,
    RawSocket,
    ServerFactory,
    greet,
    recv_json,
    wait_for,
    ws_url,
)


def echo(connection: Connection, request: Request) -> Response:
    return Response.success(request.id, data=request.params)


async def assert_still_serves(ws: RawSocket) -> None:
    """A good request on the same connection is answered normally."""
    rid = str(uuid.uuid4())
    await ws.send(json.dumps({"id": rid, "type": "request", "command": "echo", "params": {"n": 1}}))
    answer = await recv_json(ws)
    assert answer == {"id": rid, "type": "response", "status": "ok", "code": 0, "data": {"n": 1}}


def request_frame(**fields: Any) -> str:
    return json.dumps({"type": "request", "command": "echo", **fields})


NO_USABLE_ID = [
    pytest.param("this is not json", id="not-json"),
    pytest.param('{"id": "a", "type": ', id="truncated-json"),
    pytest.param("[1, 2, 3]", id="json-array"),
    pytest.param('"just a string"', id="json-string"),
    pytest.param("17", id="json-number"),
    pytest.param(request_frame(), id="missing-id"),
    pytest.param(request_frame(id=""), id="empty-id"),
    pytest.param(request_frame(id="x" * 129), id="129-char-id"),
    pytest.param(request_frame(id=12345), id="int-id"),
    pytest.param(request_frame(id=None), id="null-id"),
    pytest.param(request_frame(id={"nested": "x"}), id="object-id"),
]


@pytest.mark.parametrize("frame", NO_USABLE_ID)
async def test_frame_without_a_usable_id_gets_400_with_null_id(
    server: ProtocolServer, frame: str
) -> None:
    server.on_request(echo)
    async with connect(ws_url(server)) as ws:
        await ws.send(frame)
        answer = await recv_json(ws)
        assert answer["id"] is None
        assert answer["type"] == "response"
        assert answer["status"] == "error"
        assert answer["code"] == 400
        assert isinstance(answer["error"], str)
        assert answer["error"]
        await assert_still_serves(ws)


USABLE_ID_BUT_INVALID = [
    pytest.param({"id": "keep-me", "type": "banana", "command": "echo"}, id="unknown-type"),
    pytest.param({"id": "keep-me", "command": "echo"}, id="missing-type"),
    pytest.param({"id": "keep-me", "type": "request"}, id="no-command"),
    pytest.param({"id": "keep-me", "type": "request", "command": ""}, id="empty-command"),
    pytest.param(
        {"id": "keep-me", "type": "request", "command": "echo", "params": [1, 2]},
        id="params-a-list",
    ),
    pytest.param(
        {"id": "keep-me", "type": "request", "command": "echo", "params": "x"},
        id="params-a-string",
    ),
    pytest.param({"id": "keep-me", "type": "event"}, id="event-without-name"),
]


@pytest.mark.parametrize("obj", USABLE_ID_BUT_INVALID)
async def test_invalid_frame_with_a_usable_id_gets_400_with_that_id(
    server: ProtocolServer, obj: dict[str, Any]
) -> None:
    server.on_request(echo)
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps(obj))
        answer = await recv_json(ws)
        assert answer["id"] == "keep-me"
        assert answer["type"] == "response"
        assert answer["status"] == "error"
        assert answer["code"] == 400
        assert answer["error"]
        await assert_still_serves(ws)


async def test_many_bad_frames_in_a_row_never_drop_the_connection(server: ProtocolServer) -> None:
    server.on_request(echo)
    async with connect(ws_url(server)) as ws:
        for param in NO_USABLE_ID:
            await ws.send(param.values[0])  # type: ignore[arg-type]
        for _ in NO_USABLE_ID:
            assert (await recv_json(ws))["code"] == 400
        await assert_still_serves(ws)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(
            {"id": "nobody", "type": "response", "status": "ok", "code": 0, "data": 1},
            id="ok",
        ),
        pytest.param(
            {"id": "nobody", "type": "response", "status": "error", "code": 7, "error": "x"},
            id="error",
        ),
        pytest.param({"id": None, "type": "response", "status": "error", "code": 400}, id="null"),
        pytest.param({"id": "nobody", "type": "response", "status": "ok"}, id="seed-form"),
    ],
)
async def test_unmatched_response_is_dropped_silently(
    server: ProtocolServer, frame: dict[str, Any]
) -> None:
    server.on_request(echo)
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps(frame))
        # Nothing is sent back for it: the next frame received answers the next request.
        await assert_still_serves(ws)


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_oversized_frame_closes_only_that_connection_with_1009(
    make_server: ServerFactory, compression: str | None
) -> None:
    """Over `max_message_size` (counted after decompression) closes that connection only."""
    server = await make_server(max_message_size=1024)
    server.on_request(echo)
    disconnected = asyncio.Event()
    server.on_disconnect(lambda conn: disconnected.set())
    async with (
        connect(ws_url(server), compression=compression) as victim,
        connect(ws_url(server), compression=compression) as bystander,
    ):
        await assert_still_serves(victim)
        await assert_still_serves(bystander)
        # Highly compressible: with deflate it travels in far fewer than 1024 bytes.
        big = request_frame(id="big", params={"blob": "a" * 4000})
        await victim.send(big)
        with pytest.raises(ConnectionClosed) as info:
            await recv_json(victim)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1009
        await wait_for(disconnected.wait())
        await assert_still_serves(bystander)
        assert len(server.connections) == 1


async def test_handler_that_raises_gets_500_without_a_traceback(server: ProtocolServer) -> None:
    def broken(connection: Connection, request: Request) -> Response:
        raise RuntimeError("secret database password in this message")

    server.on_request(broken)
    async with connect(ws_url(server)) as ws:
        await ws.send(request_frame(id="boom"))
        answer = await recv_json(ws)
        assert (answer["id"], answer["status"], answer["code"]) == ("boom", "error", 500)
        assert "Traceback" not in answer["error"]
        assert 'File "' not in answer["error"]
        assert "secret" not in answer["error"]
        assert "RuntimeError" not in answer["error"]
        # The connection survives the handler's failure.
        server.on_request(echo)
        await assert_still_serves(ws)


async def test_async_handler_that_raises_gets_500(server: ProtocolServer) -> None:
    async def broken(connection: Connection, request: Request) -> Response:
        await asyncio.sleep(0)
        raise KeyError("world")

    server.on_request(broken)
    async with connect(ws_url(server)) as ws:
        await ws.send(request_frame(id="boom"))
        answer = await recv_json(ws)
    assert (answer["id"], answer["code"]) == ("boom", 500)
    assert "Traceback" not in answer["error"]


@pytest.mark.parametrize("result", [None, {"status": "ok"}, "ok", 0])
async def test_handler_returning_a_non_response_gets_500(
    server: ProtocolServer, result: object
) -> None:
    server.on_request(lambda conn, request: result)  # type: ignore[arg-type,return-value]
    async with connect(ws_url(server)) as ws:
        await ws.send(request_frame(id="odd"))
        answer = await recv_json(ws)
    assert (answer["id"], answer["status"], answer["code"]) == ("odd", "error", 500)


async def test_no_handler_gets_404_unknown_command(server: ProtocolServer) -> None:
    async with connect(ws_url(server)) as ws:
        await ws.send(request_frame(id="lost", command="launch_rocket"))
        answer = await recv_json(ws)
    assert (answer["id"], answer["status"], answer["code"]) == ("lost", "error", 404)
    assert "unknown command" in answer["error"]
    assert "launch_rocket" in answer["error"]


async def test_forbidden_error_raised_by_a_handler_gets_403(server: ProtocolServer) -> None:
    def guarded(connection: Connection, request: Request) -> Response:
        raise ForbiddenError("nope")

    server.on_request(guarded)
    async with connect(ws_url(server)) as ws:
        await ws.send(request_frame(id="keyhole"))
        answer = await recv_json(ws)
    assert answer == {
        "id": "keyhole",
        "type": "response",
        "status": "error",
        "code": 403,
        "error": "nope",
    }


async def test_more_than_max_in_flight_gets_429_at_once(make_server: ServerFactory) -> None:
    server = await make_server(max_in_flight=2)
    release = asyncio.Event()
    started = 0
    both_started = asyncio.Event()

    async def slow(connection: Connection, request: Request) -> Response:
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        await release.wait()
        return Response.success(request.id, data=request.id)

    server.on_request(slow)
    try:
        async with connect(ws_url(server)) as ws, connect(ws_url(server)) as other:
            await ws.send(request_frame(id="one"))
            await ws.send(request_frame(id="two"))
            await wait_for(both_started.wait())
            await ws.send(request_frame(id="three"))
            # Answered while the first two still run: not queued behind them.
            busy = await recv_json(ws)
            assert (busy["id"], busy["status"], busy["code"]) == ("three", "error", 429)
            # The bound is per connection: another connection is not affected.
            await other.send(request_frame(id="elsewhere"))
            release.set()
            assert (await recv_json(other))["id"] == "elsewhere"
            answers = {(await recv_json(ws))["id"] for _ in range(2)}
            assert answers == {"one", "two"}
            # Once they are done, the connection takes requests again.
            await ws.send(request_frame(id="four"))
            assert (await recv_json(ws))["status"] == "ok"
    finally:
        release.set()


async def test_handler_response_with_the_wrong_id_is_relabelled(server: ProtocolServer) -> None:
    server.on_request(lambda conn, request: Response.success("someone-else", data=1))
    async with connect(ws_url(server)) as ws:
        await ws.send(request_frame(id="mine"))
        answer = await recv_json(ws)
    assert (answer["id"], answer["data"]) == ("mine", 1)


async def test_result_that_is_not_json_serialisable_gets_500(server: ProtocolServer) -> None:
    server.on_request(lambda conn, request: Response.success(request.id, data=object()))
    async with connect(ws_url(server)) as ws:
        await ws.send(request_frame(id="weird"))
        answer = await recv_json(ws)
        assert (answer["id"], answer["code"]) == ("weird", 500)
        server.on_request(echo)
        await assert_still_serves(ws)


async def test_handler_past_the_server_deadline_gets_408(make_server: ServerFactory) -> None:
    server = await make_server(handler_timeout=0.05)

    async def stuck(connection: Connection, request: Request) -> Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    server.on_request(stuck)
    async with connect(ws_url(server)) as ws:
        await ws.send(request_frame(id="late"))
        answer = await recv_json(ws)
        assert (answer["id"], answer["status"], answer["code"]) == ("late", "error", 408)
        server.on_request(echo)
        await assert_still_serves(ws)


async def test_client_answers_bad_frames_from_the_server_and_stays_connected(
    make_raw_server: RawServerFactory,
) -> None:
    """The client side obeys §4 too: a bad frame from the server is answered, not fatal."""
    answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    frames = [
        "not json",
        "[1]",
        json.dumps({"type": "request", "command": "ping"}),
        json.dumps({"id": "k", "type": "request", "params": {}}),
        json.dumps({"id": "k2", "type": "request", "command": "ping", "params": [1]}),
        json.dumps({"id": "stray", "type": "response", "status": "ok", "code": 0}),
        json.dumps({"id": "good", "type": "request", "command": "ping"}),
    ]

    async def garbage(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await greet(ws)
        for raw in frames:
            await ws.send_str(raw)
        # Six answers: every frame but the stray Response, which is dropped.
        for _ in range(len(frames) - 1):
            msg = await ws.receive(timeout=5)
            answers.put_nowait(json.loads(msg.data))
        await ws.close()
        return ws

    client = ProtocolClient(await make_raw_server(garbage), reconnect_interval=5)
    # Registered before connecting: the server talks first.
    client.on_request(lambda request: Response.success(request.id, data="pong"))
    async with client:
        got = [await wait_for(answers.get()) for _ in range(len(frames) - 1)]
    assert [(a["id"], a["code"]) for a in got] == [
        (None, 400),
        (None, 400),
        (None, 400),
        ("k", 400),
        ("k2", 400),
        ("good", 0),
    ]
    assert got[-1]["data"] == "pong"


async def test_a_malformed_answer_fails_its_request_at_once(
    make_raw_server: RawServerFactory,
) -> None:
    """A Response that names our request but is invalid fails it now, not at its timeout."""

    async def bad_answers(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await greet(ws)
        async for msg in ws:
            asked = json.loads(msg.data)
            if asked.get("type") == "request":
                # status "ok" with an error code: not a valid Response.
                await ws.send_str(
                    json.dumps({"id": asked["id"], "type": "response", "status": "ok", "code": 7})
                )
        return ws

    client = ProtocolClient(await make_raw_server(bad_answers), request_timeout=30)
    async with client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(ProtocolError, match="does not agree with status"):
            await client.send_request("echo")
        assert asyncio.get_running_loop().time() - started < 5
        assert client.is_connected
