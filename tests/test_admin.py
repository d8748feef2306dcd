"""The dashboard over HTTP and its feed: keys, roles, CSRF, figures, actions, trace (issue 15).

Real servers on loopback, real aiohttp clients; the figures are computed by calling the
dashboard's `tick()` (what its ticker does once a second), so no test waits for a clock.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import aiohttp
import orjson
import pytest
import trustme
from aiohttp import web

from siyi_sdk import ProtocolClient, ProtocolServer
from siyi_sdk.server.admin import CallRecorder, merge_patch
from siyi_sdk.server.admin.recorder import bucket_of, bucket_upper, quantile

from .admin_support import (
    OPERATOR_KEY,
    READ_KEY,
    admin_url,
    apply_patch,
    bearer,
    browser_like,
    dashboard,
    dashboard_server,
    log_in,
)
from .conftest import Inbox, wait_for, wait_until


@pytest.fixture
async def server() -> Any:
    server = dashboard_server()
    async with server:
        yield server


def origin(server: ProtocolServer) -> str:
    return f"http://127.0.0.1:{server.port}"


# Off, and nothing without a key -----------------------------------------------------------------


async def test_the_dashboard_is_off_unless_a_key_is_given() -> None:
    async with ProtocolServer(port=0) as server, aiohttp.ClientSession() as http:
        assert server.dashboard is None
        assert server.dispatcher.calls is None  # the flat path pays one test, nothing more
        async with http.get(admin_url(server, "/api/stats")) as reply:
            assert reply.status == 404


async def test_keys_must_be_distinct_and_long_enough() -> None:
    with pytest.raises(ValueError, match="differ"):
        ProtocolServer(admin_key="same-key-1", admin_operator_key="same-key-1")
    with pytest.raises(ValueError, match="8 characters"):
        ProtocolServer(admin_key="short")
    with pytest.raises(ValueError, match="root"):
        ProtocolServer(admin_key=READ_KEY, admin_path="/")


@pytest.mark.parametrize(
    ("method", "tail"),
    [
        ("GET", "/api/stats"),
        ("GET", "/api/sessions"),
        ("GET", "/api/me"),
        ("GET", "/api/trace"),
        ("GET", "/static/admin.js"),
        ("GET", "/static/admin.css"),
        ("GET", "/feed"),
        ("POST", "/api/broadcast"),
        ("POST", "/api/trace"),
        ("POST", "/api/sessions/abc/disconnect"),
        ("POST", "/api/sessions/abc/end"),
        ("POST", "/api/sessions/abc/event"),
    ],
)
async def test_nothing_is_reachable_without_a_key(
    server: ProtocolServer, method: str, tail: str
) -> None:
    async with aiohttp.ClientSession() as http:
        for headers in (
            {},
            bearer("wrong-key-123"),
            {"Cookie": "siyi_admin=operator.9999999999.x"},
        ):
            async with http.request(method, admin_url(server, tail), headers=headers) as reply:
                assert reply.status == 401, (method, tail, headers)
                assert "node" not in await reply.text()


async def test_the_page_without_a_key_is_the_login_form(server: ProtocolServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(admin_url(server)) as reply:
        page = await reply.text()
        assert reply.status == 200
        assert 'name="key"' in page
        assert "admin.js" not in page
        assert reply.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]


async def test_a_wrong_key_is_refused_and_failed_logins_are_throttled(
    server: ProtocolServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with browser_like() as http:
        for _ in range(5):
            async with http.post(
                admin_url(server, "/login"), data={"key": "not-the-key"}, allow_redirects=False
            ) as reply:
                assert reply.status == 401
                assert "Wrong key" in await reply.text()
                assert "Set-Cookie" not in reply.headers
        # Past five failures within a minute, even the right key waits.
        async with http.post(
            admin_url(server, "/login"), data={"key": OPERATOR_KEY}, allow_redirects=False
        ) as reply:
            assert reply.status == 429
            assert int(reply.headers["Retry-After"]) > 0
        async with http.get(admin_url(server, "/api/stats")) as reply:
            assert reply.status == 401
    assert "throttled" in caplog.text


# The cookie ----------------------------------------------------------------------------------


async def test_the_login_cookie_is_httponly_and_samesite_strict(server: ProtocolServer) -> None:
    async with browser_like() as http:
        async with http.post(
            admin_url(server, "/login"),
            data={"key": READ_KEY},
            headers={"Origin": origin(server)},
            allow_redirects=False,
        ) as reply:
            assert reply.status == 303
            cookies = reply.headers.getall("Set-Cookie")
        assert len(cookies) == 1
        flags = [part.strip().lower() for part in cookies[0].split(";")]
        assert "httponly" in flags
        assert "samesite=strict" in flags
        assert "path=/admin" in flags
        assert "secure" not in flags  # plain HTTP: a Secure cookie would never come back
        # No other cookie is ever set, by any answer.
        async with http.get(admin_url(server, "/api/stats")) as reply:
            assert reply.status == 200
            assert "Set-Cookie" not in reply.headers


async def test_the_login_cookie_is_secure_under_tls() -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with dashboard_server(ssl=context) as server, aiohttp.ClientSession() as http:
        async with http.post(
            f"https://127.0.0.1:{server.port}/admin/login",
            data={"key": READ_KEY},
            ssl=trusting,
            allow_redirects=False,
        ) as reply:
            assert reply.status == 303
            flags = [p.strip().lower() for p in reply.headers["Set-Cookie"].split(";")]
        assert {"secure", "httponly", "samesite=strict"} <= set(flags)


async def test_a_login_from_another_site_is_refused(server: ProtocolServer) -> None:
    async with (
        browser_like() as http,
        http.post(
            admin_url(server, "/login"),
            data={"key": OPERATOR_KEY},
            headers={"Origin": "https://evil.example"},
            allow_redirects=False,
        ) as reply,
    ):
        assert reply.status == 403
        assert "Set-Cookie" not in reply.headers


# Roles and cross-site requests -------------------------------------------------------------


async def test_the_read_only_role_may_look_but_every_action_answers_403(
    server: ProtocolServer,
) -> None:
    async with ProtocolClient(f"ws://127.0.0.1:{server.port}") as client:
        await wait_until(lambda: len(server.connections) == 1)
        await dashboard(server).tick()
        tag = server.connections[0].log_session
        async with aiohttp.ClientSession(headers=bearer(READ_KEY)) as http:
            async with http.get(admin_url(server, "/api/stats")) as reply:
                assert reply.status == 200
            for tail, body in [
                (f"/api/sessions/{tag}/disconnect", {}),
                (f"/api/sessions/{tag}/end", {}),
                (f"/api/sessions/{tag}/event", {"name": "hello"}),
                ("/api/broadcast", {"name": "hello"}),
                ("/api/trace", {"session": tag}),
            ]:
                async with http.post(admin_url(server, tail), json=body) as reply:
                    assert reply.status == 403, tail
            async with http.get(admin_url(server, "/api/trace")) as reply:
                assert reply.status == 403
        assert client.is_connected
        assert not dashboard(server).trace.on


async def test_a_cookie_action_needs_the_csrf_token_and_the_own_origin(
    server: ProtocolServer,
) -> None:
    inbox = Inbox()
    async with (
        ProtocolClient(f"ws://127.0.0.1:{server.port}") as client,
        browser_like() as http,
    ):
        client.on_event(inbox)
        await wait_until(lambda: len(server.connections) == 1)
        csrf = await log_in(http, server, OPERATOR_KEY)
        url = admin_url(server, "/api/broadcast")
        body = {"name": "notice", "data": 1}
        refusals = [
            {},  # the cookie alone: a form another site posts would carry no more
            {"X-Siyi-CSRF": "forged"},
            {"X-Siyi-CSRF": csrf, "Origin": "https://evil.example"},
        ]
        for headers in refusals:
            async with http.post(url, json=body, headers=headers) as reply:
                assert reply.status == 403, headers
        async with http.post(
            url, json=body, headers={"X-Siyi-CSRF": csrf, "Origin": origin(server)}
        ) as reply:
            assert reply.status == 200
        await inbox.wait_count(1)
        assert inbox.data == [1]


async def test_the_feed_refuses_a_foreign_origin(
    server: ProtocolServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with browser_like() as http:
        await log_in(http, server, READ_KEY)
        feed = admin_url(server, "/feed")
        for bad_origin in ("https://evil.example", f"http://127.0.0.1:{server.port + 1}"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(feed, origin=bad_origin)
            assert refused.value.status == 403
        # A browser always names its origin: the cookie without one is not a page of ours.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(feed)
        assert refused.value.status == 403
        async with http.ws_connect(feed, origin=origin(server)) as ws:
            hello = orjson.loads((await wait_for(ws.receive())).data)
            assert hello["type"] == "hello"
            assert hello["role"] == "read"
    # A script with the key as a bearer needs no Origin; a foreign one is still refused.
    async with aiohttp.ClientSession(headers=bearer(READ_KEY)) as http:
        async with http.ws_connect(feed) as ws:
            assert orjson.loads((await wait_for(ws.receive())).data)["type"] == "hello"
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(feed, origin="https://evil.example")
    # Refusals are logged, and what they log holds no key and no cookie.
    assert "another origin refused" in caplog.text
    assert READ_KEY not in caplog.text
    assert "siyi_admin=" not in caplog.text


# Figures -------------------------------------------------------------------------------------


async def test_the_figures_follow_the_traffic(server: ProtocolServer) -> None:
    board = dashboard(server)
    async with ProtocolClient(f"ws://127.0.0.1:{server.port}") as client:
        for n in range(30):
            await client.send_request("echo", {"n": n})
        for _ in range(4):
            assert not (await client.send_request("fail", {})).ok
        for _ in range(3):
            await client.send_request("slow", {"delay": 0.02})
        for n in range(5):
            await client.send_event("noted", {"n": n})
        await wait_until(lambda: board.recorder.events == 5)
        (peer,) = server.connections
        for n in range(2):
            await server.send_event(peer, "told", {"n": n})
        await server.broadcast_event("everyone")
        await board.tick()
        async with (
            aiohttp.ClientSession(headers=bearer(READ_KEY)) as http,
            http.get(admin_url(server, "/api/stats")) as reply,
        ):
            stats = await reply.json()
    node, commands = stats["node"], stats["commands"]
    assert node["connections"]["websocket"] == 1
    assert node["sessions"] == {"attached": 1, "away": 0, "provisional": 0}
    assert node["totals"]["requests"] == 37
    assert node["totals"]["errors"] == 4
    assert node["totals"]["events"] == 5
    assert node["totals"]["events_out"] == 3  # two sent to it, one broadcast that reached it
    assert node["totals"]["bytes_in"] > 0
    assert node["totals"]["bytes_out"] > 0
    assert node["rates"]["requests"] > 0
    assert node["version"]
    assert node["uptime"] >= 0
    assert commands["echo"]["count"] == 30
    assert commands["echo"]["errors"] == 0
    assert commands["fail"]["count"] == 4
    assert commands["fail"]["errors"] == 4
    slow = commands["slow"]
    assert slow["count"] == 3
    # The quantiles are the upper bounds of 19 %-wide buckets: 20 ms lands in 20..24 ms.
    assert 20 <= slow["p50"] <= 20 * 1.19 * 1.5
    assert slow["p99"] >= slow["p50"]
    assert list(stats["nodes"]) == [node["id"]]


async def test_the_sessions_table_is_searched_and_paged_on_the_server(
    server: ProtocolServer,
) -> None:
    for n in range(120):
        server.sessions.open(f"user-{n}", ("10.0.0.1", 1000 + n), {}, provisional=True)
    await dashboard(server).tick()
    async with aiohttp.ClientSession(headers=bearer(READ_KEY)) as http:

        async def page(**query: Any) -> dict[str, Any]:
            params = {k: str(v) for k, v in query.items()}
            async with http.get(admin_url(server, "/api/sessions"), params=params) as reply:
                assert reply.status == 200
                body: dict[str, Any] = await reply.json()
                return body

        first = await page(page=0, size=50)
        assert first["total"] == 120
        assert len(first["rows"]) == 50
        last = await page(page=2, size=50)
        assert len(last["rows"]) == 20
        assert last["rows"][-1]["principal"] == "user-119"
        found = await page(query="user-7")  # user-7, user-70..79
        assert found["total"] == 11
        tag = first["rows"][3]["id"]
        assert (await page(query=tag))["rows"][0]["id"] == tag
        assert (await page(query="provisional 10.0.0.1:1005"))["total"] == 1
        assert (await page(query="attached"))["total"] == 0


async def test_no_session_key_is_ever_shown_whole(server: ProtocolServer) -> None:
    async with (
        ProtocolClient(f"ws://127.0.0.1:{server.port}") as one,
        ProtocolClient(f"ws://127.0.0.1:{server.port}") as two,
    ):
        await one.send_request("echo", {})
        await two.send_request("echo", {})
        keys = [c.session for c in server.sessions]
        assert len(keys) == 2
        board = dashboard(server)
        await board.tick()
        board.trace.start(server.connections[0], bodies=True)
        await one.send_request("echo", {"n": 1})
        await two.send_request("echo", {"n": 1})
        texts = []
        async with aiohttp.ClientSession(headers=bearer(OPERATOR_KEY)) as http:
            for tail in ("/api/stats?history=1", "/api/sessions", "/api/trace", "/"):
                async with http.get(admin_url(server, tail)) as reply:
                    texts.append(await reply.text())
            async with http.ws_connect(admin_url(server, "/feed")) as ws:
                texts.append((await wait_for(ws.receive())).data)
                await ws.send_str('{"sessions": {"page": 0, "size": 10}}')
                texts.append((await wait_for(ws.receive())).data)
                await board.tick()
                for _ in range(2):  # the tick, then the trace
                    texts.append((await wait_for(ws.receive())).data)
        board.trace.stop()
    joined = "\n".join(texts)
    assert all(c.log_session in joined for c in server.sessions)  # the tag stands for it
    for key in keys:
        assert key not in joined
        assert key[:16] not in joined


# The feed --------------------------------------------------------------------------------------


async def test_the_feed_sends_the_whole_document_once_then_deltas(server: ProtocolServer) -> None:
    board = dashboard(server)
    await board.tick()
    async with (
        aiohttp.ClientSession(headers=bearer(READ_KEY)) as http,
        http.ws_connect(admin_url(server, "/feed")) as ws,
    ):
        hello = orjson.loads((await wait_for(ws.receive())).data)
        doc = hello["doc"]
        assert hello["history"]["t"]
        async with ProtocolClient(f"ws://127.0.0.1:{server.port}") as client:
            await client.send_request("echo", {})
            await board.tick()
            tick = orjson.loads((await wait_for(ws.receive())).data)
        assert tick["type"] == "tick"
        patch = tick["patch"]
        assert patch["node"]["connections"] == {"websocket": 1}  # what changed, nothing else
        assert "version" not in patch["node"]
        assert tick["point"]["commands"]["echo"][0] > 0
        # The page applies the patch (RFC 7396) and has the new document.
        assert apply_patch(doc, patch) == board.document()


async def test_the_sessions_page_of_the_feed_changes_row_by_row(server: ProtocolServer) -> None:
    board = dashboard(server)
    async with (
        ProtocolClient(f"ws://127.0.0.1:{server.port}") as client,
        aiohttp.ClientSession(headers=bearer(READ_KEY)) as http,
        http.ws_connect(admin_url(server, "/feed")) as ws,
    ):
        await wait_for(ws.receive())  # hello
        await ws.send_str('{"sessions": {"query": "", "page": 0, "size": 10}}')
        full = orjson.loads((await wait_for(ws.receive())).data)["full"]
        assert full["total"] == 1
        tag = full["order"][0]
        client_session = server.connections[0]
        await client_session.close(1012, "test")  # drops: the session is away now
        await wait_until(lambda: not server.connections)
        await client.disconnect()
        await board.tick()
        messages = [orjson.loads((await wait_for(ws.receive())).data) for _ in range(2)]
        change = next(m for m in messages if m["type"] == "sessions")["patch"]
        assert tag in change["rows"] or "total" in change


# Actions ---------------------------------------------------------------------------------------


async def test_operator_actions_reach_the_client_and_are_logged(
    server: ProtocolServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="siyi_sdk.server.admin")
    inbox = Inbox()
    async with (
        ProtocolClient(f"ws://127.0.0.1:{server.port}") as client,
        aiohttp.ClientSession(headers=bearer(OPERATOR_KEY)) as http,
    ):
        client.on_event(inbox)
        await client.send_request("echo", {})
        tag = server.connections[0].log_session

        async def act(tail: str, body: dict[str, Any] | None = None) -> int:
            async with http.post(admin_url(server, tail), json=body or {}) as reply:
                return reply.status

        assert await act(f"/api/sessions/{tag}/event", {"name": "hi", "data": "one"}) == 200
        assert await act("/api/broadcast", {"name": "all", "data": "two"}) == 200
        await inbox.wait_count(2)
        assert inbox.data == ["one", "two"]
        assert await act("/api/sessions/unknown/end") == 404
        assert await act(f"/api/sessions/{tag}/event", {}) == 400
        session = server.connections[0]
        dropped = session.peer
        assert await act(f"/api/sessions/{tag}/disconnect") == 200
        # A disconnect leaves the session resumable: the client comes back to the same one.
        await wait_until(lambda: session.peer is not None and session.peer is not dropped)
        assert dropped is not None
        assert dropped.closed
        assert not session.ended
    assert "the operator from" in caplog.text
    assert "disconnected session " + tag in caplog.text
    assert "broadcast event 'all'" in caplog.text


async def test_ending_a_session_drops_its_client(server: ProtocolServer) -> None:
    ended = asyncio.Event()

    @server.on_session_end
    def gone(connection: Any) -> None:
        ended.set()

    async with ProtocolClient(f"ws://127.0.0.1:{server.port}") as client:
        await client.send_request("echo", {})
        session = server.connections[0]
        async with (
            aiohttp.ClientSession(headers=bearer(OPERATOR_KEY)) as http,
            http.post(admin_url(server, f"/api/sessions/{session.log_session}/end")) as reply,
        ):
            assert reply.status == 200
        await wait_for(ended.wait())
        assert session.ended
        await wait_until(lambda: session.peer is None or session.peer.closed)


async def test_the_trace_keeps_names_and_sizes_and_bodies_only_when_asked(
    server: ProtocolServer,
) -> None:
    board = dashboard(server)
    async with (
        ProtocolClient(f"ws://127.0.0.1:{server.port}") as client,
        ProtocolClient(f"ws://127.0.0.1:{server.port}") as other,
        aiohttp.ClientSession(headers=bearer(OPERATOR_KEY)) as http,
    ):
        await client.send_request("echo", {"secret": "s3"})
        await other.send_request("echo", {})
        traced = next(
            c for c in server.connections if c.id == min(x.id for x in server.connections)
        )
        tag = traced.log_session

        async def trace(body: dict[str, Any]) -> None:
            async with http.post(admin_url(server, "/api/trace"), json=body) as reply:
                assert reply.status == 200

        async def entries() -> list[dict[str, Any]]:
            async with http.get(admin_url(server, "/api/trace")) as reply:
                found: list[dict[str, Any]] = (await reply.json())["entries"]
                return found

        assert not server.dispatcher.chain  # off by default: the flat path
        await trace({"session": tag})
        await client.send_request("echo", {"secret": "s3"})
        await other.send_request("echo", {"other": True})
        await client.send_event("ping", {"secret": "s3"})
        await wait_until(lambda: len(board.trace.entries) >= 3)
        seen = await entries()
        assert [(e["dir"], e["kind"], e["name"]) for e in seen[:3]] == [
            ("in", "request", "echo"),
            ("out", "response", "ok 0"),
            ("in", "event", "ping"),
        ]
        assert all(e["size"] > 0 and "body" not in e for e in seen)
        await trace({"session": tag, "bodies": True})
        await client.send_request("echo", {"secret": "s3"})
        with_bodies = await entries()
        assert '"secret":"s3"' in with_bodies[0]["body"]
        await trace({"session": None})
        assert not board.trace.on
        assert not server.dispatcher.chain  # the flat path is back


async def test_mounted_under_a_prefix() -> None:
    app = web.Application()
    server = dashboard_server()
    server.attach(app, prefix="/siyi")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with browser_like() as http:
            async with http.post(
                f"http://127.0.0.1:{port}/siyi/admin/login",
                data={"key": READ_KEY},
                allow_redirects=False,
            ) as reply:
                assert reply.status == 303
                assert reply.headers["Location"] == "/siyi/admin/"
                assert "Path=/siyi/admin" in reply.headers["Set-Cookie"]
            await dashboard(server).tick()  # after a request: it knows the socket it is on
            async with http.get(f"http://127.0.0.1:{port}/siyi/admin/api/stats") as reply:
                assert reply.status == 200
                node = (await reply.json())["node"]
                assert node["connections"]["websocket"] == 0
                assert node["address"] == f"127.0.0.1:{port}"  # not the server's unused 8765
    finally:
        await runner.cleanup()


# The recorder ------------------------------------------------------------------------------------


def test_the_histogram_estimates_quantiles_within_a_bucket() -> None:
    recorder = CallRecorder()
    for micros in range(1, 1001):  # 1 µs .. 1 ms, evenly
        recorder.record("x", micros * 1000, error=micros % 100 == 0)
    figures = recorder.commands["x"]
    assert figures.count == 1000
    assert figures.errors == 10
    p50 = quantile(figures.histogram, 1000, 0.5)
    p99 = quantile(figures.histogram, 1000, 0.99)
    assert p50 is not None
    assert p99 is not None
    assert 500e-6 <= p50 <= 500e-6 * 1.19
    assert 990e-6 <= p99 <= 990e-6 * 1.19
    for ns in (8, 100, 12_345, 10**9):
        assert ns / 1e9 <= bucket_upper(bucket_of(ns)) <= ns / 1e9 * 1.26


def test_command_names_are_bounded() -> None:
    recorder = CallRecorder()
    for n in range(500):
        recorder.record(f"name-{n}", 1000, error=False)
    assert len(recorder.commands) == 101  # 100 names and "(other)"
    assert recorder.commands["(other)"].count == 400


def test_merge_patch_removes_keys_with_null() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 4}}) == {
        "b": {"c": 4, "d": None}
    }


async def test_errors_are_told_from_answers_whatever_the_request_ids(
    server: ProtocolServer,
) -> None:
    # The recorder reads an answer's status where it stands for an id JSON did not escape, and
    # looks for it otherwise: ids with quotes, colons and non-ASCII characters must not fool it.
    ids = ["plain", 'q"uote', ':"ok"', '"o', "ééé", "x" * 120, '\\"o' * 20]
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"ws://127.0.0.1:{server.port}/") as ws,
    ):
        await wait_for(ws.receive())  # the session event
        for n, rid in enumerate(ids):
            for command in ("echo", "fail"):
                packet = {"id": f"{rid}{n}{command}", "type": "request", "command": command}
                await ws.send_str(orjson.dumps(packet).decode())
                answer = orjson.loads((await wait_for(ws.receive())).data)
                assert answer["status"] == ("ok" if command == "echo" else "error")
    commands = dashboard(server).recorder.commands
    assert commands["echo"].count == len(ids)
    assert commands["echo"].errors == 0
    assert commands["fail"].count == len(ids)
    assert commands["fail"].errors == len(ids)
