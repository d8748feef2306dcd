"""The wire contract, checked by an independent peer: the `websockets` library, not our client.

Whatever our own client does, these tests pin what goes over the socket (PROTOCOL.md §1-§2).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from siyi_sdk import Connection, Event, ProtocolServer, Request, Response
from tests.conftest import ClientFactory, recv_json, wait_for, ws_url

SEED_REQUEST = (
    '{"id": "f47ac10b-58cc-4372-a567-0e02b2c3d479", "type": "request", '
    '"command": "get_player_list", "params": {"world": "overworld"}}'
)
SEED_ID = "f47ac10b-58cc-4372-a567-0e02b2c3d479"


def seed_handler(connection: Connection, request: Request) -> Response:
    if request.command == "get_player_list" and request.params == {"world": "overworld"}:
        return Response.success(request.id, data=["Player1", "Steve", "Alex"])
    return Response.fail(request.id, f"invalid world: {request.params!r}")


async def test_seed_request_gets_the_seed_response(server: ProtocolServer) -> None:
    server.on_request(seed_handler)
    async with connect(ws_url(server)) as ws:
        await ws.send(SEED_REQUEST)
        answer = await recv_json(ws)
    assert answer == {
        "id": SEED_ID,
        "type": "response",
        "status": "ok",
        "code": 0,
        "data": ["Player1", "Steve", "Alex"],
    }


async def test_error_response_shape(server: ProtocolServer) -> None:
    server.on_request(seed_handler)
    rid = str(uuid.uuid4())
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"id": rid, "type": "request", "command": "get_player_list"}))
        answer = await recv_json(ws)
    assert answer == {
        "id": rid,
        "type": "response",
        "status": "error",
        "code": 1,
        "error": "invalid world: None",
    }


async def test_no_path_and_explicit_root_path_both_work(server: ProtocolServer) -> None:
    server.on_request(seed_handler)
    base = f"ws://127.0.0.1:{server.port}"
    for url in (base, base + "/"):
        async with connect(url) as ws:
            await ws.send(
                json.dumps(
                    {
                        "id": str(uuid.uuid4()),
                        "type": "request",
                        "command": "get_player_list",
                        "params": {"world": "overworld"},
                    }
                )
            )
            assert (await recv_json(ws))["status"] == "ok"


async def test_binary_frame_carrying_json_is_accepted(server: ProtocolServer) -> None:
    server.on_request(seed_handler)
    rid = str(uuid.uuid4())
    async with connect(ws_url(server)) as ws:
        await ws.send(SEED_REQUEST.replace(SEED_ID, rid).encode())
        answer = await recv_json(ws)
    assert (answer["id"], answer["status"]) == (rid, "ok")


async def test_events_reach_the_server_handler(server: ProtocolServer) -> None:
    got: asyncio.Queue[tuple[Connection, Event]] = asyncio.Queue()
    server.on_event(lambda conn, event: got.put_nowait((conn, event)))
    async with connect(ws_url(server)) as ws:
        await ws.send(
            json.dumps(
                {
                    "id": "a1b2c3d4-e5f6-7890-1234-567890abcdef",
                    "type": "event",
                    "name": "player_update",
                    "data": {"player": "Steve", "health": 95},
                }
            )
        )
        conn, event = await wait_for(got.get())
        # The Connection stands for the peer's session: it says how it is reachable now.
        assert conn.transport == "websocket"
    assert event.name == "player_update"
    assert event.data == {"player": "Steve", "health": 95}
    assert event.id == "a1b2c3d4-e5f6-7890-1234-567890abcdef"


async def test_send_event_and_broadcast_event_reach_the_peer(server: ProtocolServer) -> None:
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    async with connect(ws_url(server)) as ws:
        conn = await wait_for(connected.get())
        await server.send_event(conn, "player_joined", {"player_name": "Herobrine"})
        await server.broadcast_event("server_notice", ["restart", 5])
        first = await recv_json(ws)
        second = await recv_json(ws)
    assert first["type"] == "event"
    assert first["name"] == "player_joined"
    assert first["data"] == {"player_name": "Herobrine"}
    assert isinstance(first["id"], str)
    assert uuid.UUID(first["id"])
    assert second["type"] == "event"
    assert second["name"] == "server_notice"
    assert second["data"] == ["restart", 5]
    assert second["id"] != first["id"]


async def answer_requests(ws: Any, answer: dict[str, Any]) -> dict[str, Any]:
    """Receive one request on a raw socket, answer it with `answer` plus its id."""
    request = await recv_json(ws)
    await ws.send(json.dumps({"id": request["id"], "type": "response", **answer}))
    return request


async def test_peer_answers_a_request_sent_from_on_connect(server: ProtocolServer) -> None:
    responses: asyncio.Queue[Response] = asyncio.Queue()

    async def on_connect(conn: Connection) -> None:
        responses.put_nowait(await server.send_request(conn, "get_status", {"verbose": True}))

    server.on_connect(on_connect)
    async with connect(ws_url(server)) as ws:
        request = await answer_requests(
            ws, {"status": "ok", "code": 0, "data": {"status": "running", "players": 5}}
        )
        response = await wait_for(responses.get())
    assert request["type"] == "request"
    assert request["command"] == "get_status"
    assert request["params"] == {"verbose": True}
    assert uuid.UUID(request["id"]).version == 4
    assert set(request) == {"id", "type", "command", "params", "meta"}
    assert request["meta"] == {"timeout": 30.0}  # the server's request_timeout (§9)
    assert response.ok
    assert response.id == request["id"]
    assert response.data == {"status": "running", "players": 5}


async def test_peer_answers_in_the_seeds_older_form_without_code(server: ProtocolServer) -> None:
    """A Response without `code` (the seed's form) reads as 0 for ok and 1 for error."""
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    async with connect(ws_url(server)) as ws:
        conn = await wait_for(connected.get())
        ok_call = asyncio.create_task(server.send_request(conn, "get_status"))
        await answer_requests(ws, {"status": "ok", "data": [1]})
        ok = await wait_for(ok_call)
        fail_call = asyncio.create_task(server.send_request(conn, "get_status"))
        await answer_requests(ws, {"status": "error", "error": "not now"})
        fail = await wait_for(fail_call)
    assert (ok.status, ok.code, ok.data) == ("ok", 0, [1])
    assert (fail.status, fail.code, fail.error) == ("error", 1, "not now")


async def test_connection_captured_in_a_handler_can_send_requests(
    server: ProtocolServer,
) -> None:
    """The seed's pattern: a handler keeps its connection and later asks that client."""
    captured: asyncio.Queue[Connection] = asyncio.Queue()

    def handler(conn: Connection, request: Request) -> Response:
        captured.put_nowait(conn)
        return Response.success(request.id)

    server.on_request(handler)
    async with connect(ws_url(server)) as ws:
        await ws.send(SEED_REQUEST)
        assert (await recv_json(ws))["status"] == "ok"
        conn = await wait_for(captured.get())
        call = asyncio.create_task(conn.send_request("whoami", timeout=5))
        request = await answer_requests(ws, {"status": "ok", "code": 0, "data": "raw-peer"})
        response = await wait_for(call)
    assert request["command"] == "whoami"
    assert "params" not in request
    assert response.data == "raw-peer"


async def test_our_client_talks_to_the_server_without_a_path(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    server.on_request(seed_handler)
    client = await make_client(ws_url(server))
    assert client.is_connected
    response = await client.send_request("get_player_list", {"world": "overworld"})
    assert response.data == ["Player1", "Steve", "Alex"]


async def test_a_repeated_request_id_runs_at_most_once(server: ProtocolServer) -> None:
    """§6: a repeat of an id from the same peer (its session) gets the first run's Response.

    The peer reconnects mid-run, presenting its session key: the new socket takes the session
    over (the old one is closed with 4001), and its repeat waits for the first run.
    """
    runs = 0
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(connection: Connection, request: Request) -> Response:
        nonlocal runs
        runs += 1
        started.set()
        await release.wait()
        return Response.success(request.id, data=f"run {runs}")

    server.on_request(handler)
    once = json.dumps({"id": "only-once", "type": "request", "command": "charge_card"})
    try:
        async with connect(ws_url(server)) as first:
            greeting = json.loads(await first.recv())
            assert greeting["name"] == "session"
            await first.send(once)
            await wait_for(started.wait())
            key = {"X-Siyi-Session": greeting["data"]["session"]}
            async with connect(ws_url(server), additional_headers=key) as second:
                resumed = json.loads(await second.recv())
                assert resumed["data"]["resumed"] is True
                await second.send(once)  # the first run is still going: this one waits for it
                with pytest.raises(ConnectionClosed) as closed:
                    await wait_for(first.recv())
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 4001
                release.set()
                a = await recv_json(second)
                # Once finished, a later repeat is answered from memory.
                await second.send(once)
                b = await recv_json(second)
    finally:
        release.set()
    assert runs == 1
    assert a == b
    assert a["data"] == "run 1"
