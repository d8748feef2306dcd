"""POST /general and GET /about over real HTTP (PROTOCOL.md §1, §3, §4).

The caller is aiohttp's client, and `curl` itself when the machine has it: nothing here goes
through the SDK's own adapters, so these tests pin what any HTTP client sees.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from siyi_sdk import (
    PROTOCOL_VERSION,
    Connection,
    Event,
    ProtocolServer,
    Request,
    Response,
    __version__,
)
from siyi_sdk.demo import GetPlayerList, GetStatus
from tests.proxy import running_server, wait_for

SEED_ID = "f47ac10b-58cc-4372-a567-0e02b2c3d479"
SEED_REQUEST = (
    '{"id": "f47ac10b-58cc-4372-a567-0e02b2c3d479", "type": "request", '
    '"command": "get_player_list", "params": {"world": "overworld"}}'
)
SEED_RESPONSE = {
    "id": SEED_ID,
    "type": "response",
    "status": "ok",
    "code": 0,
    "data": ["Player1", "Steve", "Alex"],
}
LIMIT = 4096


@dataclass
class Seen:
    """What the seed's handlers were given."""

    requests: list[tuple[Connection, Request]] = field(default_factory=list)
    events: list[tuple[Connection, Event]] = field(default_factory=list)
    event_arrived: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Site:
    server: ProtocolServer
    http: aiohttp.ClientSession
    seen: Seen

    @property
    def general(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/general"

    @property
    def about(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/about"

    async def post(self, body: str | bytes) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.general, data=body) as reply:
            assert reply.content_type == "application/json"
            return reply.status, json.loads(await reply.read())


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    """The seed's server: a catch-all `on_request` and an `on_event`, nothing typed."""
    seen = Seen()
    async with (
        running_server(max_message_size=LIMIT) as server,
        aiohttp.ClientSession() as http,
    ):

        @server.on_request
        async def handle_request(connection: Connection, request: Request) -> Response:
            seen.requests.append((connection, request))
            if request.command == "get_player_list":
                return Response.success(request.id, data=["Player1", "Steve", "Alex"])
            if request.command == "echo":
                return Response.success(request.id, data=request.params)
            return Response.fail(request.id, "unknown command")

        @server.on_event
        async def handle_event(connection: Connection, event: Event) -> None:
            seen.events.append((connection, event))
            seen.event_arrived.set()

        yield Site(server, http, seen)


@pytest.fixture
async def typed_site() -> AsyncIterator[Site]:
    """A server with typed routes only (no catch-all)."""
    async with running_server() as server, aiohttp.ClientSession() as http:

        @server.command(GetPlayerList)
        async def players(connection: Connection, params: GetPlayerList) -> list[str]:
            return ["Steve"]

        @server.command(GetStatus)
        async def status(connection: Connection, params: GetStatus) -> dict[str, Any]:
            return {"status": "running", "players": 1}

        @server.command("raw")
        async def raw(connection: Connection, params: dict[str, Any]) -> Any:
            return params

        yield Site(server, http, Seen())


async def test_seed_request_gets_the_seed_response(site: Site) -> None:
    status, body = await site.post(SEED_REQUEST)
    assert status == 200
    assert body == SEED_RESPONSE


async def test_curl_gets_the_seed_response(site: Site) -> None:
    curl = shutil.which("curl")
    if curl is None:
        # No curl on this machine: make the same call the way curl -d makes it.
        async with site.http.post(
            site.general,
            data=SEED_REQUEST,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as reply:
            status, out = reply.status, await reply.read()
    else:
        proc = await asyncio.create_subprocess_exec(
            curl,
            "-sS",
            "-d",
            SEED_REQUEST,
            "-w",
            "\n%{http_code}",
            site.general,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await wait_for(proc.communicate())
        assert proc.returncode == 0, stderr.decode()
        raw_body, _, code = stdout.rpartition(b"\n")
        status, out = int(code), raw_body
    assert status == 200
    assert json.loads(out) == SEED_RESPONSE


@pytest.mark.parametrize(
    ("body", "expected_id"),
    [
        pytest.param(b"this is not json", None, id="not-json"),
        pytest.param(b"[1, 2, 3]", None, id="not-an-object"),
        pytest.param(b'{"type": "request", "command": "echo"}', None, id="no-id"),
        pytest.param(b'{"id": "", "type": "request", "command": "echo"}', None, id="empty-id"),
        pytest.param(b'{"id": "r1", "type": "request"}', "r1", id="no-command"),
        pytest.param(b'{"id": "r2", "type": "bogus", "command": "x"}', "r2", id="unknown-type"),
        pytest.param(
            b'{"id": "r3", "type": "request", "command": "x", "params": [1]}',
            "r3",
            id="params-not-an-object",
        ),
        pytest.param(b"", None, id="empty-body"),
    ],
)
async def test_malformed_body_gets_a_400_response(
    site: Site, body: bytes, expected_id: str | None
) -> None:
    status, answer = await site.post(body)
    assert status == 400
    assert answer["id"] == expected_id
    assert answer["type"] == "response"
    assert answer["status"] == "error"
    assert answer["code"] == 400
    assert isinstance(answer["error"], str)
    assert answer["error"]
    assert site.seen.requests == []  # nothing reached the handler


async def test_extra_fields_are_ignored(site: Site) -> None:
    body = json.dumps(
        {"id": "x1", "type": "request", "command": "echo", "params": {"a": 1}, "future": True}
    )
    status, answer = await site.post(body)
    assert status == 200
    assert answer == {"id": "x1", "type": "response", "status": "ok", "code": 0, "data": {"a": 1}}


async def test_handler_failure_is_http_200_with_its_code(site: Site) -> None:
    status, answer = await site.post('{"id": "f1", "type": "request", "command": "nope"}')
    assert status == 200  # dispatched: the status is in the packet
    assert answer == {
        "id": "f1",
        "type": "response",
        "status": "error",
        "code": 1,
        "error": "unknown command",
    }


async def test_catch_all_handler_gets_an_http_connection(site: Site) -> None:
    status, _ = await site.post(SEED_REQUEST)
    assert status == 200
    [(connection, request)] = site.seen.requests
    assert connection.transport == "http"
    assert connection.remote_address is not None
    assert connection.remote_address[0] == "127.0.0.1"
    assert not connection.is_connected  # an HTTP caller has no socket to push to
    assert request.id == SEED_ID
    assert request.params == {"world": "overworld"}


async def test_event_reaches_on_event_and_is_acknowledged(site: Site) -> None:
    event = {"id": "ev-1", "type": "event", "name": "player_joined", "data": {"player_name": "H"}}
    status, answer = await site.post(json.dumps(event))
    assert status == 200
    assert answer == {"id": "ev-1", "type": "response", "status": "ok", "code": 0, "data": None}
    [(connection, received)] = site.seen.events
    assert connection.transport == "http"
    assert received.id == "ev-1"
    assert received.name == "player_joined"
    assert received.data == {"player_name": "H"}
    assert site.seen.requests == []


async def test_oversized_body_gets_413(site: Site) -> None:
    body = json.dumps(
        {"id": "big", "type": "request", "command": "echo", "params": {"x": "y" * LIMIT}}
    )
    status, answer = await site.post(body)
    assert status == 413
    assert answer["code"] == 413
    assert answer["status"] == "error"
    assert answer["type"] == "response"
    assert site.seen.requests == []


async def test_oversized_chunked_body_gets_413(site: Site) -> None:
    # No Content-Length: the limit must hold while the body streams in.
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"id": "big", "type": "request", "command": "echo", "params": {"x": "'
        for _ in range(8):
            yield b"y" * 1024
        yield b'"}}'

    async with site.http.post(site.general, data=chunks()) as reply:
        assert reply.status == 413
        answer = json.loads(await reply.read())
    assert answer["code"] == 413
    assert answer["status"] == "error"
    assert site.seen.requests == []


async def test_a_body_just_under_the_limit_is_served(site: Site) -> None:
    head = '{"id": "fit", "type": "request", "command": "echo", "params": {"x": "'
    tail = '"}}'
    body = head + "y" * (LIMIT - len(head) - len(tail)) + tail
    assert len(body) == LIMIT
    status, answer = await site.post(body)
    assert status == 200
    assert answer["data"] == {"x": "y" * (LIMIT - len(head) - len(tail))}


async def test_unknown_command_is_http_200_with_code_404(typed_site: Site) -> None:
    status, answer = await typed_site.post('{"id": "u1", "type": "request", "command": "nope"}')
    assert status == 200
    assert answer["id"] == "u1"
    assert answer["status"] == "error"
    assert answer["code"] == 404
    assert "nope" in answer["error"]


async def test_about_lists_protocol_version_and_commands(typed_site: Site) -> None:
    async with typed_site.http.get(typed_site.about) as reply:
        assert reply.status == 200
        assert reply.content_type == "application/json"
        about = json.loads(await reply.read())
    assert type(about["protocol"]) is int
    assert about["protocol"] == PROTOCOL_VERSION == 1
    assert about["version"] == __version__
    commands = {c["name"]: c for c in about["commands"]}
    assert set(commands) == {"get_player_list", "get_status", "raw"}

    players = commands["get_player_list"]
    assert players["params"]["type"] == "object"
    assert players["params"]["properties"]["world"]["type"] == "string"
    assert players["params"]["properties"]["world"]["default"] == "overworld"
    assert players["result"] == {"type": "array", "items": {"type": "string"}}

    status = commands["get_status"]
    assert status["params"]["type"] == "object"
    assert status["params"].get("properties", {}) == {}
    assert set(status["result"]["required"]) == {"status", "players"}
    assert status["result"]["properties"]["players"]["type"] == "integer"


async def test_about_on_a_server_without_routes(site: Site) -> None:
    async with site.http.get(site.about) as reply:
        about = json.loads(await reply.read())
    assert about == {
        "protocol": 1,
        "version": __version__,
        "commands": [],
        "events": [],
        "sends": {"events": [], "commands": []},
    }


async def test_typed_route_over_http(typed_site: Site) -> None:
    status, answer = await typed_site.post(
        '{"id": "t1", "type": "request", "command": "get_player_list"}'
    )
    assert (status, answer) == (
        200,
        {"id": "t1", "type": "response", "status": "ok", "code": 0, "data": ["Steve"]},
    )


async def test_websocket_path_answers_plain_http_with_a_hint(site: Site) -> None:
    async with site.http.get(f"http://127.0.0.1:{site.server.port}/") as reply:
        assert reply.status == 426
        assert "/general" in (await reply.json())["error"]
