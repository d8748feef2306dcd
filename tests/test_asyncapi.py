"""``GET /asyncapi.json`` (PROTOCOL.md §11) and ``siyi describe``, over real loopback sockets.

The documents are validated against the official AsyncAPI 3.0.0 JSON Schema, vendored from the
specification's published package (tests/data/asyncapi/README.md says where it came from).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from pydantic import BaseModel

from siyi_sdk import Command, Connection, EventModel, ProtocolServer
from siyi_sdk.demo import GameState, create_game_server
from tests.test_cli import siyi

SPEC = Path(__file__).parent / "data" / "asyncapi" / "asyncapi-3.0.0.json"


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SPEC.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def assert_valid(document: dict[str, Any]) -> None:
    errors = sorted(validator().iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors)


async def get(url: str, key: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as reply:
        return reply.status, json.loads(await reply.read())


def operations(document: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """The operations of one kind, by wire name and action."""
    return {
        f"{op['action']} {op['x-siyi-name']}": op
        for op in document["operations"].values()
        if op["x-siyi-kind"] == kind
    }


def resolve(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


# A server with everything: a stream, typed events both ways, requests to its clients -------


class Item(BaseModel):
    n: int
    label: str


class Tail(Command[Item], stream=True):
    """``tail``: items one by one."""

    count: int = 3


class Moved(EventModel):
    """``moved``: a client moved."""

    x: int
    y: int


class Alert(EventModel):
    """``alert``: the server warns its clients."""

    level: str


class Inventory(BaseModel):
    items: list[Item]


class AskInventory(Command[Inventory]):
    """``ask_inventory``: the server asks a client for its inventory."""

    player: str


class Follow(Command[Item], stream=True):
    """``follow``: the server asks a client for a stream."""


def full_server(**kwargs: Any) -> ProtocolServer:
    server = ProtocolServer(port=0, heartbeat_interval=None, shutdown_timeout=1.0, **kwargs)

    @server.command(Tail)
    async def tail(connection: Connection, params: Tail) -> AsyncIterator[Item]:
        for n in range(params.count):
            yield Item(n=n, label=str(n))

    @server.command("raw")
    async def raw(connection: Connection, params: dict[str, Any]) -> Any:
        return params

    @server.event(Moved)
    async def moved(connection: Connection, data: Moved) -> None:
        pass

    server.declare_event(Alert)
    server.declare_event("untyped_notice")
    server.declare_command(AskInventory)
    server.declare_command(Follow)
    server.declare_command("ping_back")
    return server


@contextlib.asynccontextmanager
async def mounted(server: ProtocolServer, prefix: str) -> AsyncIterator[str]:
    """Serve `server` under `prefix` of an application of its own; yield the base URL."""
    app = web.Application()
    server.attach(app, prefix=prefix)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}{prefix}"
    finally:
        await runner.cleanup()


# Tests -------------------------------------------------------------------------------------


def test_the_vendored_schema_rejects_what_is_not_asyncapi_3() -> None:
    # The validation below means something: a document the specification forbids fails.
    server = create_game_server(port=0)
    from siyi_sdk.server.asyncapi import asyncapi_document

    document = asyncapi_document(server, host="127.0.0.1:1")
    assert_valid(document)
    broken = json.loads(json.dumps(document))
    broken["operations"]["receive.echo"]["action"] = "publish"  # AsyncAPI 2's word
    assert list(validator().iter_errors(broken))
    broken = json.loads(json.dumps(document))
    broken["asyncapi"] = "2.6.0"
    assert list(validator().iter_errors(broken))


async def test_the_demo_servers_document_is_valid_asyncapi_3() -> None:
    state = GameState()
    async with create_game_server(port=0, state=state, heartbeat_interval=None) as server:
        port = server.port
        status, document = await get(f"http://127.0.0.1:{port}/asyncapi.json")
    assert status == 200
    assert_valid(document)
    assert document["asyncapi"] == "3.0.0"
    assert document["x-siyi-protocol"] == 1
    assert type(document["x-siyi-protocol"]) is int
    servers = document["servers"]
    assert servers["websocket"] == servers["websocket"] | {
        "host": f"127.0.0.1:{port}",
        "protocol": "ws",
        "pathname": "/",
    }
    assert servers["http"]["protocol"] == "http"
    assert servers["http"]["pathname"] == "/general"
    assert "security" not in servers["websocket"]  # an open server
    commands = operations(document, "command")
    assert set(commands) == {
        "receive echo",
        "receive get_status",
        "receive get_player_list",
        "receive save_world",
        "receive watch_players",
        "send get_status",  # the demo asks each client for its status
    }
    assert commands["receive watch_players"]["x-siyi-stream"] is True
    assert "x-siyi-stream" not in commands["receive get_player_list"]
    # Params and result of a typed route, from its Command.
    request = resolve(document, commands["receive get_player_list"]["messages"][0])
    params = resolve(document, request["payload"]["properties"]["params"])
    assert params["properties"]["world"]["default"] == "overworld"
    reply = resolve(document, commands["receive get_player_list"]["reply"]["messages"][0])
    ok, error = reply["payload"]["oneOf"]
    assert resolve(document, ok["properties"]["data"]) | {} == {
        "items": {"type": "string"},
        "type": "array",
    }
    assert error == {"$ref": "#/components/schemas/ErrorResponse"}
    events = operations(document, "event")
    assert set(events) == {"send player_joined", "send player_updated_notification"}
    # The status codes of §3.
    codes = document["components"]["schemas"]["StatusCode"]["oneOf"]
    assert {c.get("const") for c in codes} >= {0, 1, 400, 401, 403, 404, 408, 410, 413, 429, 499}
    assert {c.get("const") for c in codes} >= {500, 503}
    assert codes[-1]["minimum"] == 1000
    assert document["components"]["securitySchemes"]["bearer"] == document["components"][
        "securitySchemes"
    ]["bearer"] | {"type": "http", "scheme": "bearer"}


async def test_a_server_with_streams_events_and_requests_mounted_under_a_prefix() -> None:
    async with mounted(full_server(), "/siyi") as base:
        status, document = await get(base + "/asyncapi.json")
    assert status == 200
    assert_valid(document)
    assert document["servers"]["websocket"]["pathname"] == "/siyi/"
    assert document["servers"]["http"]["pathname"] == "/siyi/general"
    assert document["servers"]["http"]["x-siyi-events-path"] == "/siyi/events"
    commands = operations(document, "command")
    assert set(commands) == {
        "receive tail",
        "receive raw",
        "send ask_inventory",
        "send follow",
        "send ping_back",
    }
    tail = commands["receive tail"]
    assert tail["x-siyi-stream"] is True
    chunk, end = (resolve(document, m) for m in tail["reply"]["messages"])
    assert chunk["payload"]["properties"]["name"] == {"const": "siyi.chunk"}
    item = resolve(document, chunk["payload"]["properties"]["data"]["properties"]["data"])
    assert set(item["required"]) == {"n", "label"}
    assert end["payload"]["oneOf"][0]["properties"]["data"] == {"type": "integer", "minimum": 0}
    assert commands["send follow"]["x-siyi-stream"] is True
    assert commands["send ask_inventory"]["action"] == "send"
    # A model used by another lands in the components, referenced from where it is used.
    inventory = document["components"]["schemas"]["Inventory"]
    assert inventory["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Item"}
    events = operations(document, "event")
    assert set(events) == {"receive moved", "send alert", "send untyped_notice"}
    moved = resolve(document, events["receive moved"]["messages"][0])
    assert set(resolve(document, moved["payload"]["properties"]["data"])["required"]) == {
        "x",
        "y",
    }
    protocol = operations(document, "protocol")
    assert {"send session", "receive siyi.cancel", "send siyi.cancel"} <= set(protocol)


async def test_a_server_with_a_key_gives_its_document_only_with_the_key() -> None:
    async with mounted(full_server(verify_key="sesame"), "") as base:
        status, refused = await get(base + "/asyncapi.json")
        wrong, _ = await get(base + "/asyncapi.json", key="nope")
        ok, document = await get(base + "/asyncapi.json", key="sesame")
        about_status, about = await get(base + "/about")
    assert status == 401
    assert refused["code"] == 401
    assert refused["status"] == "error"
    assert wrong == 401
    assert ok == 200
    assert_valid(document)
    bearer = {"$ref": "#/components/securitySchemes/bearer"}
    assert document["servers"]["websocket"]["security"] == [bearer]
    assert document["servers"]["http"]["security"] == [bearer]
    # /about stays open, without the commands (§11).
    assert about_status == 200
    assert "commands" not in about


async def test_siyi_describe_prints_both_formats_with_sorted_keys() -> None:
    async with create_game_server(port=0, heartbeat_interval=None) as server:
        code, stdout, child = await siyi("describe", f"ws://127.0.0.1:{server.port}")
        assert code == 0, child.output()
        document = json.loads(stdout)
        assert_valid(document)
        assert stdout == json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)
        code, again, child = await siyi("describe", f"http://127.0.0.1:{server.port}")
        assert code == 0, child.output()
        assert json.loads(again)["operations"] == document["operations"]
        code, stdout, child = await siyi(
            "describe", f"http://127.0.0.1:{server.port}", "--format", "about"
        )
        assert code == 0, child.output()
        about = json.loads(stdout)
        assert about["protocol"] == 1
        assert "watch_players" in [c["name"] for c in about["commands"]]


async def test_siyi_describe_without_the_key_exits_1_and_says_so() -> None:
    async with mounted(full_server(verify_key="sesame"), "/siyi") as base:
        code, stdout, child = await siyi("describe", base)
        assert code == 1, child.output()
        assert stdout == ""
        assert "HTTP 401" in child.text("stderr")
        assert "--key" in child.text("stderr")
        code, stdout, child = await siyi("describe", base, "--key", "sesame")
        assert code == 0, child.output()
        assert_valid(json.loads(stdout))


async def test_siyi_describe_with_nothing_listening_exits_2() -> None:
    from tests.conftest import free_port

    code, _, child = await siyi("describe", f"http://127.0.0.1:{free_port()}")
    assert code == 2, child.output()
    assert "no answer" in child.text("stderr")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "127.0.0.1:1"])
async def test_siyi_describe_refuses_other_schemes(url: str) -> None:
    code, _, child = await siyi("describe", url)
    assert code == 2, child.output()
    assert "ws://" in child.text("stderr")
