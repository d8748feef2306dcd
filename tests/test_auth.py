"""Keys, `authenticate`, the `session` greeting and the protocol check (PROTOCOL.md §7).

Every server is a real `ProtocolServer` on a loopback port; clients are the SDK's own adapters,
raw aiohttp calls, or the `websockets` library where a browser's exact handshake matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from siyi_sdk import (
    AdapterMode,
    Api,
    Connection,
    Event,
    HttpAdapter,
    ProtocolClient,
    ProtocolServer,
    Request,
    UnauthorizedError,
    WebSocketAdapter,
)
from siyi_sdk.errors import ProtocolVersionError
from tests.conftest import WAIT, RawServerFactory, ServerFactory, wait_for, ws_url

KEY = "s3cret"
SESSION_HEADER = "X-Siyi-Session"


def http_url(server: ProtocolServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def whoami(connection: Connection, params: dict[str, Any]) -> Any:
    """A route answering with what authentication said about the caller."""
    return connection.principal


@pytest.fixture
async def locked(make_server: ServerFactory) -> ProtocolServer:
    """A server that requires the key `KEY`."""
    server = await make_server(verify_key=KEY)
    server.command("whoami")(whoami)
    return server


class Sleeps:
    """An injected backoff sleep that records each call; a test asserts it was never needed."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.calls.append(delay)
        await asyncio.sleep(0)


async def upgrade_status(url: str, headers: Mapping[str, str] | None = None) -> int:
    """The HTTP status of a WebSocket upgrade (101 when accepted)."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, headers=headers) as ws:
                await ws.close()
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def http_call(
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
) -> tuple[int, Any, str | None]:
    """One raw HTTP call: status, decoded JSON body, and the `X-Siyi-Session` header."""
    data = None if body is None else json.dumps(body)
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, data=data) as reply,
    ):
        return reply.status, json.loads(await reply.read()), reply.headers.get(SESSION_HEADER)


def offer(*names: str) -> list[Subprotocol]:
    """Subprotocols for a `websockets` client to offer, as a browser would."""
    return [Subprotocol(name) for name in names]


def ping_request() -> dict[str, Any]:
    return {"id": "req-1", "type": "request", "command": "whoami"}


# verify_key ----------------------------------------------------------------------------------

REFUSED = [
    pytest.param({}, "", id="no-key"),
    pytest.param({"Authorization": "Bearer wrong"}, "", id="wrong-key"),
    pytest.param({"Authorization": "Bearer s3cre"}, "", id="key-prefix"),
    pytest.param({"Authorization": f"Basic {KEY}"}, "", id="not-bearer"),
    pytest.param({}, f"?key={KEY}", id="key-in-query"),
    pytest.param({}, f"?token={KEY}", id="token-in-query"),
    # Even beside a right header: a key in a URL ends up in logs, so it is never accepted.
    pytest.param({"Authorization": f"Bearer {KEY}"}, f"?key={KEY}", id="query-beside-header"),
]


@pytest.mark.parametrize(("headers", "query"), REFUSED)
async def test_a_missing_or_misplaced_key_is_refused_with_401(
    locked: ProtocolServer, headers: dict[str, str], query: str
) -> None:
    base = http_url(locked)
    assert await upgrade_status(ws_url(locked) + "/" + query, headers) == 401

    status, body, session = await http_call(
        "POST", f"{base}/general{query}", headers, ping_request()
    )
    assert status == 401
    assert body["id"] is None
    assert (body["type"], body["status"], body["code"]) == ("response", "error", 401)
    assert body["error"].startswith("unauthorized")
    assert session is None

    separator = "&" if query else "?"
    status, body, session = await http_call(
        "GET", f"{base}/events{query}{separator}wait=0", headers
    )
    assert status == 401
    assert (body["status"], body["code"]) == ("error", 401)
    assert session is None

    assert len(locked.sessions) == 0  # a refused caller opens no session


async def test_the_right_bearer_header_is_accepted(locked: ProtocolServer) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    assert await upgrade_status(ws_url(locked), headers) == 101
    status, body, session = await http_call(
        "POST", f"{http_url(locked)}/general", headers, ping_request()
    )
    assert status == 200
    assert body == {"id": "req-1", "type": "response", "status": "ok", "code": 0, "data": True}
    assert session


async def test_the_browser_form_bearer_subprotocol_is_accepted(locked: ProtocolServer) -> None:
    async with connect(ws_url(locked), subprotocols=offer("siyi.v1", f"bearer.{KEY}")) as ws:
        assert ws.subprotocol == "siyi.v1"  # the server selects the protocol, never the key
        greeting = json.loads(await wait_for(ws.recv()))
        assert greeting["name"] == "session"
        await ws.send(json.dumps(ping_request()))
        answer = json.loads(await wait_for(ws.recv()))
        assert (answer["id"], answer["status"], answer["data"]) == ("req-1", "ok", True)


@pytest.mark.parametrize(
    "offered",
    [
        pytest.param(["siyi.v1"], id="no-bearer"),
        pytest.param(["siyi.v1", "bearer.wrong"], id="wrong-bearer"),
    ],
)
async def test_the_browser_form_with_a_missing_or_wrong_key_is_refused(
    locked: ProtocolServer, offered: list[str]
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(locked), subprotocols=offer(*offered)):
            pass
    assert refused.value.response.status_code == 401
    assert len(locked.sessions) == 0


async def test_token_option_of_every_client(locked: ProtocolServer) -> None:
    async with (
        ProtocolClient(ws_url(locked), token=KEY, request_timeout=WAIT) as client,
        WebSocketAdapter(ws_url(locked), token=KEY, request_timeout=WAIT) as ws,
        HttpAdapter(http_url(locked), token=KEY, request_timeout=WAIT) as http,
    ):
        assert client.is_connected
        assert ws.is_connected
        assert (await client.send_request("whoami")).data is True
        for adapter in (ws, http):
            answer = await adapter.send_packet(Request(command="whoami"))
            assert (answer.ok, answer.data) == (True, True)
        assert http.session.key is not None
        assert len(locked.sessions) == 3


async def test_a_wrong_token_ends_the_websocket_adapter_without_retrying() -> None:
    upgrades: list[int] = []

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        if request.path == "/":
            upgrades.append(response.status)

    server = ProtocolServer(port=0, verify_key=KEY, shutdown_timeout=1.0)
    server.make_app().on_response_prepare.append(count)
    async with server:
        sleeps = Sleeps()
        adapter = WebSocketAdapter(
            ws_url(server), token="wrong", reconnect_interval=0.01, sleep=sleeps
        )
        async with adapter:
            assert not adapter.is_connected
            assert isinstance(adapter.last_error, UnauthorizedError)
            assert adapter.last_error.code == 401
            assert upgrades == [401]
            assert sleeps.calls == []  # no backoff: it gave up instead of retrying

        # The reconnecting loop of a client returns its refusal to the caller: it has ended.
        client = ProtocolClient(
            ws_url(server), token="wrong", reconnect_interval=0.01, sleep=sleeps
        )
        with pytest.raises(UnauthorizedError):
            await wait_for(client.connect())
        await client.disconnect()
        assert upgrades == [401, 401]
        assert sleeps.calls == []
        assert len(server.sessions) == 0


async def test_a_wrong_token_over_http(locked: ProtocolServer) -> None:
    sleeps = Sleeps()
    async with HttpAdapter(http_url(locked), token="wrong", request_timeout=WAIT) as http:
        answer = await http.send_packet(Request(command="whoami"))
        assert (answer.ok, answer.code) == (False, 401)
        with pytest.raises(UnauthorizedError):
            await Api(http).request("whoami")
        assert http.session.key is None

    # A receiving HttpAdapter stops polling at a refused key: retrying would not help.
    receiver = HttpAdapter(
        http_url(locked),
        token="wrong",
        mode=AdapterMode.SEND | AdapterMode.RECEIVE,
        poll_wait=0.5,
        sleep=sleeps,
    )
    async with receiver:
        poller = receiver._poller
        assert poller is not None
        await wait_for(asyncio.wait({poller}))
        assert isinstance(poller.exception(), UnauthorizedError)
    assert sleeps.calls == []
    assert len(locked.sessions) == 0


# authenticate --------------------------------------------------------------------------------

PRINCIPALS = {"alice-key": {"user": "alice"}, "bob-key": {"user": "bob"}}


def sync_authenticate(headers: Mapping[str, str]) -> Any:
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    return PRINCIPALS.get(token) if scheme == "Bearer" else None


async def async_authenticate(headers: Mapping[str, str]) -> Any:
    await asyncio.sleep(0)  # a real callback would look the key up somewhere
    return sync_authenticate(headers)


@pytest.mark.parametrize(
    "authenticate",
    [pytest.param(sync_authenticate, id="sync"), pytest.param(async_authenticate, id="async")],
)
async def test_authenticate_gives_each_peer_its_principal(
    make_server: ServerFactory, authenticate: Callable[[Mapping[str, str]], Any]
) -> None:
    server = await make_server(authenticate=authenticate)
    server.command("whoami")(whoami)
    events: asyncio.Queue[tuple[Any, str]] = asyncio.Queue()
    connected: asyncio.Queue[Any] = asyncio.Queue()

    @server.on_event
    def record(connection: Connection, event: Event) -> None:
        events.put_nowait((connection.principal, event.name))

    server.on_connect(lambda connection: connected.put_nowait(connection.principal))

    async with (
        ProtocolClient(ws_url(server), token="alice-key", request_timeout=WAIT) as alice,
        HttpAdapter(http_url(server), token="bob-key", request_timeout=WAIT) as bob,
    ):
        assert (await alice.send_request("whoami")).data == {"user": "alice"}
        assert await wait_for(connected.get()) == {"user": "alice"}
        assert (await bob.send_packet(Request(command="whoami"))).data == {"user": "bob"}
        await alice.send_event("hello")
        assert await wait_for(events.get()) == ({"user": "alice"}, "hello")
        await bob.send_event(Event(name="hi"))
        assert await wait_for(events.get()) == ({"user": "bob"}, "hi")

    # The browser form reaches the callback as an ordinary Authorization header.
    async with connect(ws_url(server), subprotocols=offer("siyi.v1", "bearer.bob-key")) as ws:
        assert ws.subprotocol == "siyi.v1"
        json.loads(await wait_for(ws.recv()))  # the session event
        await ws.send(json.dumps(ping_request()))
        answer = json.loads(await wait_for(ws.recv()))
        assert answer["data"] == {"user": "bob"}

    # None refuses: 401 everywhere, no session.
    before = len(server.sessions)
    headers = {"Authorization": "Bearer mallory-key"}
    assert await upgrade_status(ws_url(server), headers) == 401
    assert await upgrade_status(ws_url(server)) == 401
    status, body, _ = await http_call(
        "POST", f"{http_url(server)}/general", headers, ping_request()
    )
    assert (status, body["code"]) == (401, 401)
    async with ProtocolClient(ws_url(server), token="mallory-key") as mallory:
        assert isinstance(mallory.last_error, UnauthorizedError)
    assert len(server.sessions) == before


async def test_with_neither_option_the_server_is_open(make_server: ServerFactory) -> None:
    server = await make_server()
    server.command("whoami")(whoami)
    async with ProtocolClient(ws_url(server), request_timeout=WAIT) as client:
        assert client.is_connected
        assert (await client.send_request("whoami")).data is None
    status, body, session = await http_call(
        "POST", f"{http_url(server)}/general", None, ping_request()
    )
    assert (status, body["status"], body["data"]) == (200, "ok", None)
    assert session


# The session greeting ------------------------------------------------------------------------


@pytest.mark.parametrize("keyed", [pytest.param(False, id="open"), pytest.param(True, id="keyed")])
async def test_the_session_event_is_the_first_frame_of_every_websocket(
    make_server: ServerFactory, keyed: bool
) -> None:
    server = await make_server(verify_key=KEY if keyed else None, heartbeat_interval=12.5)
    headers = {"Authorization": f"Bearer {KEY}"} if keyed else {}
    keys = []
    for _ in range(2):
        async with connect(ws_url(server), additional_headers=headers) as ws:
            frame = json.loads(await wait_for(ws.recv()))
            assert isinstance(frame.pop("id"), str)
            assert frame == {
                "type": "event",
                "name": "session",
                "data": {
                    "session": frame["data"]["session"],
                    "protocol": 1,
                    "heartbeat_interval": 12.5,
                    "resumed": False,
                    "dropped": 0,
                },
            }
            key = frame["data"]["session"]
            assert isinstance(key, str)
            assert len(key) >= 16
            keys.append(key)
    assert keys[0] != keys[1]  # every socket opened its own session


async def test_http_answers_carry_the_session_header(locked: ProtocolServer) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    base = http_url(locked)
    status, _, key = await http_call("POST", f"{base}/general", headers, ping_request())
    assert status == 200
    assert key is not None
    assert len(locked.sessions) == 1

    # Presenting it, /general and /events answer for the same session.
    same = {**headers, SESSION_HEADER: key}
    status, _, again = await http_call("POST", f"{base}/general", same, ping_request())
    assert (status, again) == (200, key)
    status, packets, again = await http_call("GET", f"{base}/events?wait=0", same)
    assert (status, packets, again) == (200, [], key)
    assert len(locked.sessions) == 1

    # A WebSocket presenting it joins that session too.
    async with connect(ws_url(locked), additional_headers=same) as ws:
        greeting = json.loads(await wait_for(ws.recv()))
        assert greeting["data"]["session"] == key
        assert greeting["data"]["resumed"] is True
        assert len(locked.sessions) == 1


def packet_frame(name: str, data: Any) -> str:
    return json.dumps({"id": f"{name}-1", "type": "event", "name": name, "data": data})


async def test_a_websocket_client_refuses_a_server_of_another_protocol(
    make_raw_server: RawServerFactory,
) -> None:
    attempts: list[str] = []

    async def greets_with_v2(request: web.Request) -> web.StreamResponse:
        attempts.append(request.path)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(
            packet_frame(
                "session",
                {
                    "session": "k",
                    "protocol": 2,
                    "heartbeat_interval": None,
                    "resumed": False,
                    "dropped": 0,
                },
            )
        )
        async for _ in ws:
            pass
        return ws

    url = await make_raw_server(greets_with_v2)
    sleeps = Sleeps()
    async with WebSocketAdapter(url, reconnect_interval=0.01, sleep=sleeps) as adapter:
        error = adapter.last_error
        assert isinstance(error, ProtocolVersionError)
        assert (error.server, error.client) == (2, 1)
        assert "protocol 2" in str(error)
        assert "protocol 1" in str(error)
        assert not adapter.is_connected
        assert adapter.session.key is None  # nothing adopted from a server it will not speak to
    assert sleeps.calls == []
    assert attempts == ["/"]

    client = ProtocolClient(url, reconnect_interval=0.01, sleep=sleeps)
    with pytest.raises(ProtocolVersionError):
        await wait_for(client.connect())
    await client.disconnect()
    assert attempts == ["/", "/"]


@contextlib.asynccontextmanager
async def raw_http_server(about: Any) -> AsyncIterator[tuple[str, list[str]]]:
    """A hand-written HTTP server whose /about says `about`; yields its URL and the paths hit."""
    hits: list[str] = []

    async def describe(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response(about)

    async def general(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"id": None, "type": "response", "status": "ok", "code": 0})

    app = web.Application()
    app.router.add_get("/about", describe)
    app.router.add_post("/general", general)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", hits
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "about",
    [
        pytest.param({"protocol": 2, "version": "9.0.0", "commands": []}, id="v2"),
        pytest.param({"protocol": "1", "version": "1.0.0", "commands": []}, id="string"),
    ],
)
async def test_an_http_adapter_refuses_a_server_of_another_protocol(about: Any) -> None:
    async with raw_http_server(about) as (url, hits), HttpAdapter(url) as http:
        with pytest.raises(ProtocolVersionError) as refused:
            await http.send_packet(Request(command="whoami"))
        assert refused.value.server == about["protocol"]
        assert f"protocol {about['protocol']}" in str(refused.value)
        assert "protocol 1" in str(refused.value)
        assert hits == ["/about"]  # no packet went to a server it cannot speak to
