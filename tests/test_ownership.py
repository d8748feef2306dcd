"""A session belongs to its principal; request ids are scoped by session (PROTOCOL.md §6-§7).

Two principals, alice and bob, on a server whose `authenticate` knows both. Bob tries every way
of acting as alice that a session key or a request id could open: a WebSocket resume, a
``POST /general``, a poll of ``/events``, a request id she used. Each is refused (403) or runs as
bob, and alice's session, buffer and answers are untouched. Every test runs with the in-memory
backplane (one server) and with the Redis backplane (two nodes: alice on one, bob on the
other), over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from siyi_sdk import Connection, ProtocolServer, RedisBackplane
from siyi_sdk.packets import SESSION_HEADER
from siyi_sdk.server.sessions import MAX_SESSION_HEADER_BYTES, bounded_headers

from .conftest import (
    WAIT,
    NodeFactory,
    ServerFactory,
    asking,
    bystander,
    drop_raw,
    greeting_of,
    http_url,
    recv_frame,
    wait_for,
    wait_until,
    ws_url,
)
from .redis_server import RedisServer

TOKENS = {"alice-token": "alice", "bob-token": "bob"}


def authenticate(headers: Any) -> str | None:
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    return TOKENS.get(token.strip()) if scheme.lower() == "bearer" else None


def creds(who: str, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {who}-token"}
    if key is not None:
        headers[SESSION_HEADER] = key
    return headers


class Deployment:
    """Where alice lives (`a`) and where bob calls (`b`): one server, or two Redis nodes."""

    def __init__(self, a: ProtocolServer, b: ProtocolServer) -> None:
        self.a = a
        self.b = b
        self.runs: Counter[str] = Counter()
        for server in {a, b}:

            @server.command("whoami")
            def whoami(connection: Connection, params: dict[str, Any]) -> Any:
                self.runs[str(connection.principal)] += 1
                return connection.principal


@pytest.fixture(params=["memory", "redis"])
async def deployment(
    request: pytest.FixtureRequest, make_server: ServerFactory, redis_prefix: str
) -> Deployment:
    options: dict[str, Any] = {"authenticate": authenticate}
    if request.param == "memory":
        server = await make_server(**options)
        return Deployment(server, server)
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    nodes = [
        await make_server(
            backplane=RedisBackplane(redis_server.url, prefix=redis_prefix), **options
        )
        for _ in range(2)
    ]
    return Deployment(*nodes)


async def post(
    server: ProtocolServer, packet: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, Any], str | None]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{http_url(server)}/general", json=packet, headers=headers) as reply,
    ):
        return reply.status, json.loads(await reply.read()), reply.headers.get(SESSION_HEADER)


async def poll(
    server: ProtocolServer, headers: dict[str, str], query: str = "wait=0"
) -> tuple[int, Any, str | None]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{http_url(server)}/events?{query}", headers=headers) as reply,
    ):
        return reply.status, json.loads(await reply.read()), reply.headers.get(SESSION_HEADER)


def whoami(request_id: str) -> dict[str, Any]:
    return {"id": request_id, "type": "request", "command": "whoami"}


async def alice_away_with_a_secret(deployment: Deployment) -> tuple[str, Connection]:
    """Alice opens a session by WebSocket on node a, drops, and an event waits for her."""
    async with connect(ws_url(deployment.a), additional_headers=creds("alice")) as ws:
        key = (await greeting_of(ws))["session"]
        await drop_raw(ws)
    alice = await deployment.a.find_session(key)
    assert alice is not None
    await wait_until(lambda: not alice.is_connected)
    await deployment.a.send_event(alice, "secret", {"for": "alice"})
    return key, alice


async def test_a_session_key_with_other_credentials_is_refused_everywhere(
    deployment: Deployment,
) -> None:
    key, alice = await alice_away_with_a_secret(deployment)
    b = deployment.b

    # The WebSocket upgrade: 403, no greeting, no replay.
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(b), headers=creds("bob", key))
        assert refused.value.status == 403

    # POST /general: 403 with a Response body, no session key, the handler never ran.
    status, body, returned = await post(b, whoami("r1"), creds("bob", key))
    assert (status, body["code"], body["status"], returned) == (403, 403, "error", None)
    assert "another principal" in body["error"]
    assert deployment.runs == Counter()

    # GET /events: 403, and alice's buffer is not consumed.
    status, body, returned = await poll(b, creds("bob", key))
    assert (status, body["code"], returned) == (403, 403, None)
    status, body, returned = await poll(b, creds("bob", key), "wait=0&after=")
    assert (status, returned) == (403, None)

    # Nothing of alice's changed: her session is alive, unattached, still hers, and she
    # resumes it (on the other node, with a shared backplane) with her event replayed.
    assert not alice.ended
    assert alice.principal == "alice"
    async with connect(ws_url(b), additional_headers=creds("alice", key)) as ws:
        greeting = await greeting_of(ws)
        assert (greeting["session"], greeting["resumed"]) == (key, True)
        frame = await recv_frame(ws)
        assert (frame["name"], frame["data"]) == ("secret", {"for": "alice"})


async def test_a_wrong_principal_cannot_end_or_take_over_a_live_session(
    deployment: Deployment,
) -> None:
    async with connect(ws_url(deployment.a), additional_headers=creds("alice")) as ws:
        key = (await greeting_of(ws))["session"]
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ws_url(deployment.b), headers=creds("bob", key))
            assert refused.value.status == 403
        # Alice's socket was not taken over: it still answers.
        await ws.send(json.dumps(whoami("still-mine")))
        answer = await recv_frame(ws)
        assert (answer["id"], answer["data"]) == ("still-mine", "alice")


async def test_request_ids_are_scoped_by_session_so_callers_never_share_answers(
    deployment: Deployment,
) -> None:
    status, body, alice_key = await post(deployment.a, whoami("1"), creds("alice"))
    assert (status, body["data"]) == (200, "alice")
    assert alice_key is not None

    # Bob picks the same id with no session key: a session of his own, a run of his own.
    status, body, bob_key = await post(deployment.b, whoami("1"), creds("bob"))
    assert (status, body["data"]) == (200, "bob")
    assert bob_key is not None
    assert bob_key != alice_key
    assert deployment.runs == Counter({"alice": 1, "bob": 1})

    # Two key-less calls of one principal are two sessions too: the id runs again.
    status, body, again = await post(deployment.a, whoami("1"), creds("alice"))
    assert (status, body["data"]) == (200, "alice")
    assert again not in (None, alice_key)
    assert deployment.runs["alice"] == 2

    # Alice's repeat in her own session is answered from the record, on any node.
    status, body, same = await post(deployment.b, whoami("1"), creds("alice", alice_key))
    assert (status, body["data"], same) == (200, "alice", alice_key)
    assert deployment.runs == Counter({"alice": 2, "bob": 1})


async def test_a_refused_call_opens_no_session(deployment: Deployment) -> None:
    server = deployment.b
    before = len(server.sessions)
    for headers, packet, expected in [
        ({"Authorization": "Bearer wrong"}, whoami("x"), 401),
        (creds("bob"), {"id": "x", "type": "request"}, 400),
        (creds("bob"), "not a packet", 400),
    ]:
        status, body, returned = await post(server, packet, headers)  # type: ignore[arg-type]
        assert (status, body["code"], returned) == (expected, expected, None)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{http_url(server)}/general",
            data=b" " * (server.max_message_size + 1),
            headers=creds("bob"),
        ) as reply,
    ):
        assert (reply.status, reply.headers.get(SESSION_HEADER)) == (413, None)
    status, body, returned = await poll(server, creds("bob"), "wait=soon")
    assert (status, body["code"], returned) == (400, 400, None)
    assert len(server.sessions) == before


_RESUME = """
import asyncio, json, sys
import aiohttp

async def main(url: str, token: str, key: str) -> None:
    headers = {"Authorization": "Bearer " + token, "X-Siyi-Session": key}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        for _ in range(2):
            print((await ws.receive(timeout=5)).data, flush=True)

asyncio.run(main(*sys.argv[1:4]))
"""


async def test_the_owner_resumes_from_a_second_process(deployment: Deployment) -> None:
    key, _ = await alice_away_with_a_secret(deployment)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RESUME,
        ws_url(deployment.b),
        "alice-token",
        key,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await wait_for(process.communicate(), WAIT * 2)
    assert process.returncode == 0
    greeting, replayed = (json.loads(line) for line in out.decode().splitlines())
    assert (greeting["data"]["session"], greeting["data"]["resumed"]) == (key, True)
    assert (replayed["name"], replayed["data"]) == ("secret", {"for": "alice"})


async def test_a_client_that_posts_then_polls_receives_every_broadcast_between(
    deployment: Deployment,
) -> None:
    # The POST opens a provisional session (§7): it takes packets from its first moment.
    status, _, key = await post(deployment.a, whoami("open"), creds("bob"))
    assert status == 200
    assert key is not None
    for n in range(3):
        await deployment.a.broadcast_event("tick", n)
    status, frames, returned = await poll(deployment.b, creds("bob", key))
    assert (status, returned) == (200, key)
    assert [(f["name"], f["data"]) for f in frames] == [("tick", 0), ("tick", 1), ("tick", 2)]


@contextlib.asynccontextmanager
async def provisional_server(
    provisional_ttl: float = 30.0, **kwargs: Any
) -> AsyncIterator[ProtocolServer]:
    server = ProtocolServer(port=0, heartbeat_interval=None, **kwargs)
    server.sessions.provisional_ttl = provisional_ttl  # before the sweeper starts
    async with server:
        yield server


async def test_a_provisional_session_buffers_little_and_ends_unless_its_key_comes_back() -> None:
    async with provisional_server(provisional_ttl=0.5, max_sessions=4) as server:
        sessions = server.sessions
        status, _, kept = await post(server, whoami("a"), {})
        status, _, lapsed = await post(server, whoami("a"), {})
        assert kept is not None
        assert lapsed is not None
        assert sessions.provisional == 2
        for n in range(sessions.provisional_buffer + 5):
            await server.broadcast_event("tick", n)
        held = await server.find_session(lapsed)
        assert held is not None
        assert (held.buffered, held.dropped) == (sessions.provisional_buffer, 5)

        # Presenting the key again makes it a full session: nothing buffered is lost.
        status, frames, returned = await poll(server, {SESSION_HEADER: kept}, "wait=0&after=")
        assert (status, returned, len(frames)) == (200, kept, sessions.provisional_buffer)
        assert sessions.provisional == 1

        # The other one ends at its deadline (the sweeper runs on its own clock).
        await wait_until(lambda: held.ended, WAIT)
        assert await server.find_session(kept) is not None


async def test_provisional_sessions_make_room_before_any_full_session_ends() -> None:
    ended: list[str] = []
    async with provisional_server(max_sessions=3) as server:
        server.on_session_end(lambda c: ended.append(c.session))
        _, _, full = await post(server, whoami("a"), {})
        assert full is not None
        await poll(server, {SESSION_HEADER: full})  # confirmed: a full session now
        opened = []
        for n in range(10):
            _, _, key = await post(server, whoami(str(n)), {})
            opened.append(key)
        await wait_until(lambda: len(ended) == 8)
        assert full not in ended
        assert set(ended) == set(opened[:8])
        assert {c.session for c in server.sessions} == {full, *opened[8:]}


MiB = 1024 * 1024


FLOOD = 20_000
FLOOD_RSS_BOUND_MIB = 48
"""What 20,000 one-shot callers may add to the server's RSS: at most `max_sessions` (10,000)
provisional sessions live at once, each a few hundred bytes of state and headers."""


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@linux_only
async def test_a_flood_of_one_shot_posts_costs_bounded_memory_and_ends_no_full_session(
    start_node: NodeFactory,
) -> None:
    node = await start_node()
    url = f"http://127.0.0.1:{node.port}/general"
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def call(n: int, key: str | None = None) -> tuple[int, str | None]:
            headers = {SESSION_HEADER: key} if key else {}
            packet = {"id": "1", "type": "request", "command": "echo", "params": {"n": n}}
            async with http.post(url, json=packet, headers=headers) as reply:
                await reply.read()
                return reply.status, reply.headers.get(SESSION_HEADER)

        # A full session (its key presented again), then idle through the whole flood.
        _, full = await call(-1)
        assert await call(-2, full) == (200, full)
        for _ in range(3):  # warm up the allocator and aiohttp's caches
            await asyncio.gather(*(call(n) for n in range(500)))
        before = node.rss() / MiB
        peak = before
        async with bystander(node) as other, asking(other):
            for start in range(0, FLOOD, 1000):
                batch = range(start, start + 1000)
                statuses = await asyncio.gather(*(call(n) for n in batch))
                assert all(status == 200 for status, _ in statuses)
                peak = max(peak, node.rss() / MiB)
        other.check()  # a second client was answered within 1 s throughout
        # The full session is still there: its key is answered as itself, not replaced.
        assert await call(-3, full) == (200, full)
    grown = peak - before
    print(f"RSS {before:.1f} MiB -> peak {peak:.1f} MiB (+{grown:.1f}) over {FLOOD} POSTs")
    assert grown < FLOOD_RSS_BOUND_MIB


HEADER_SESSIONS = 300
HEADERS_RSS_BOUND_MIB = 24
"""What 300 sessions opened with ~480 KB of headers each may add to the server's RSS: each
keeps at most 8 KiB of them (2.4 MiB in all; without the bound they would hold 140 MiB)."""


@linux_only
async def test_a_session_keeps_at_most_8_kib_of_its_headers(start_node: NodeFactory) -> None:
    big = {f"X-Pad-{n}": "x" * 8000 for n in range(60)}
    node = await start_node()
    url = f"http://127.0.0.1:{node.port}/general"
    packet = {"id": "1", "type": "request", "command": "echo", "params": {}}
    async with aiohttp.ClientSession() as http:
        for _ in range(20):  # warm up
            async with http.post(url, json=packet) as reply:
                assert reply.status == 200
        before = node.rss() / MiB
        keys = []
        async with bystander(node) as other, asking(other):
            for _ in range(HEADER_SESSIONS):
                async with http.post(url, json=packet, headers=big) as reply:
                    assert reply.status == 200
                    keys.append(reply.headers[SESSION_HEADER])
        other.check()  # a second client was answered within 1 s throughout
        grown = node.rss() / MiB - before
        # Every session is alive (their keys are answered as themselves).
        for key in keys[:5]:
            async with http.post(url, json=packet, headers={SESSION_HEADER: key}) as reply:
                assert reply.headers[SESSION_HEADER] == key
    print(f"RSS +{grown:.1f} MiB for {HEADER_SESSIONS} sessions with large headers")
    assert grown < HEADERS_RSS_BOUND_MIB


async def test_bounded_headers_keep_what_fits_in_order() -> None:
    headers = {"A": "1" * 100, "Big": "2" * 9000, "B": "3" * 100}
    kept = bounded_headers(headers)
    assert list(kept.items()) == [("A", "1" * 100), ("B", "3" * 100)]
    assert (
        sum(
            len(k) + len(v)
            for k, v in bounded_headers({f"H{n}": "v" * 1000 for n in range(50)}).items()
        )
        <= MAX_SESSION_HEADER_BYTES
    )
