"""Sessions (PROTOCOL.md §7): buffer and replay, takeover, one peer over two adapters, expiry.

Real servers on loopback ports, real clients. A client's link is cut with `TcpProxy` (both
sides see a reset, as when a cable is pulled); its reconnect backoff is an injected sleep that
waits until the proxy accepts again, so nothing here waits on the clock to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from siyi_sdk import (
    Adapter,
    AdapterManager,
    AdapterMode,
    Connection,
    Event,
    HttpAdapter,
    ProtocolClient,
    ProtocolServer,
    Request,
    Response,
    WebSocketAdapter,
)
from tests.conftest import (
    Inbox,
    drop_raw,
    greeting_of,
    http_url,
    open_http_session,
    post_packet,
    recv_frame,
    session_headers,
    wait_until,
    ws_url,
)
from tests.proxy import (
    WAIT,
    Gate,
    TcpProxy,
    WatchedCache,
    running_server,
    sleep_until_accepting,
    wait_for,
)

SESSION_HEADER = "X-Siyi-Session"


# Helpers -------------------------------------------------------------------------------------


class Watch:
    """What a server reports about its peers: connects, drops, and session ends."""

    def __init__(self, server: ProtocolServer) -> None:
        self.connected: asyncio.Queue[Connection] = asyncio.Queue()
        self.disconnected: asyncio.Queue[Connection] = asyncio.Queue()
        self.ended: list[Connection] = []
        self._ended_changed = asyncio.Event()
        server.on_connect(self.connected.put_nowait)
        server.on_disconnect(self.disconnected.put_nowait)
        server.on_session_end(self._end)

    def _end(self, connection: Connection) -> None:
        self.ended.append(connection)
        self._ended_changed.set()

    async def wait_ended(self, count: int) -> None:
        async def reached() -> None:
            while len(self.ended) < count:
                self._ended_changed.clear()
                await self._ended_changed.wait()

        await wait_for(reached())


@dataclass
class Away:
    """A ProtocolClient reaching the server through a proxy the test cuts."""

    server: ProtocolServer
    proxy: TcpProxy
    client: ProtocolClient
    inbox: Inbox
    watch: Watch
    conn: Connection

    async def drop(self) -> None:
        """Cut the link and wait until the server has seen the client go."""
        await self.proxy.cut()
        gone = await wait_for(self.watch.disconnected.get())
        assert gone is self.conn
        assert not self.conn.is_connected

    async def come_back(self) -> None:
        """Let the client reconnect; returns once its new socket is attached on the server."""
        await self.proxy.resume()
        await wait_until(lambda: self.conn.is_connected)


@contextlib.asynccontextmanager
async def away_rig(**server_kwargs: Any) -> AsyncIterator[Away]:
    async with running_server(**server_kwargs) as server, TcpProxy(server.port) as proxy:
        watch = Watch(server)
        inbox = Inbox()
        client = ProtocolClient(
            proxy.url,
            reconnect_interval=0.01,
            request_timeout=WAIT,
            sleep=sleep_until_accepting(proxy),
        )
        client.on_event(inbox)
        async with client:
            assert client.is_connected
            conn = await wait_for(watch.connected.get())
            yield Away(server, proxy, client, inbox, watch, conn)


# Buffer and replay ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buffer", "expected"),
    [
        pytest.param(1000, list(range(50)), id="all-kept"),
        pytest.param(10, list(range(40, 50)), id="last-10-kept"),
    ],
)
async def test_events_sent_while_away_are_replayed_once_in_order_before_new_ones(
    buffer: int, expected: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="siyi_sdk.adapters.websocket")
    async with away_rig(session_buffer=buffer) as rig:
        key = rig.client.session.key
        assert key is not None
        await rig.conn.send_event("tick", "before")
        await rig.inbox.wait_count(1)

        await rig.drop()
        for n in range(50):
            await rig.conn.send_event("tick", n)  # the same Connection, its peer away
        assert rig.conn.buffered == len(expected)
        assert rig.conn.dropped == 50 - len(expected)

        await rig.come_back()
        # Sent the moment the new socket is attached, while the buffer may still be replaying:
        # it must not overtake anything that waited.
        await rig.conn.send_event("tick", "after")
        await rig.inbox.wait_count(1 + len(expected) + 1)
        # A fence: anything sent twice would have arrived before it.
        await rig.conn.send_event("tick", "fence")
        await rig.inbox.wait_count(1 + len(expected) + 2)

        assert rig.inbox.data == ["before", *expected, "after", "fence"]
        assert len({event.id for event in rig.inbox.events}) == len(rig.inbox.events)
        assert rig.conn.buffered == 0
        assert rig.conn.dropped == 0  # reported once, in the session event
        # The same session, the same Connection object on the server.
        assert rig.client.session.key == key
        assert await wait_for(rig.watch.connected.get()) is rig.conn
        assert list(rig.server.sessions) == [rig.conn]
        assert rig.proxy.accepted == 2
    assert f"session resumed; {50 - len(expected)} packets were dropped while away" in caplog.text


async def test_the_session_event_on_resume_says_resumed_and_dropped() -> None:
    """The wire shape, read by a raw peer: ``resumed: true`` and how many were dropped."""
    async with running_server(session_buffer=10, heartbeat_interval=20.0) as server:
        watch = Watch(server)
        async with connect(ws_url(server)) as ws:
            first = await greeting_of(ws)
            key = first["session"]
            assert (first["resumed"], first["dropped"]) == (False, 0)
            await drop_raw(ws)
        conn = await wait_for(watch.disconnected.get())
        assert conn.session == key
        for n in range(50):
            await server.send_event(conn, "tick", n)

        async with connect(ws_url(server), additional_headers=session_headers(key)) as ws:
            assert await greeting_of(ws) == {
                "session": key,
                "protocol": 1,
                "heartbeat_interval": 20.0,
                "resumed": True,
                "dropped": 40,
            }
            replayed = [await recv_frame(ws) for _ in range(10)]
            assert [(f["type"], f["name"], f["data"]) for f in replayed] == [
                ("event", "tick", n) for n in range(40, 50)
            ]
            await server.send_event(conn, "tick", "new")
            assert (await recv_frame(ws))["data"] == "new"
            await drop_raw(ws)
        assert await wait_for(watch.disconnected.get()) is conn

        # Nothing was dropped since: the next resume says 0.
        async with connect(ws_url(server), additional_headers=session_headers(key)) as ws:
            data = await greeting_of(ws)
            assert (data["session"], data["resumed"], data["dropped"]) == (key, True, 0)
        await watch.wait_ended(1)  # that peer closed cleanly: its session is over
        assert watch.ended == [conn]
        assert len(server.sessions) == 0


async def test_a_broadcast_while_away_is_buffered_and_replayed() -> None:
    async with away_rig() as rig:
        other_inbox = Inbox()
        async with ProtocolClient(ws_url(rig.server), request_timeout=WAIT) as other:
            other.on_event(other_inbox)
            await wait_for(rig.watch.connected.get())
            await rig.drop()
            for n in range(3):
                await rig.server.broadcast_event("news", n)
            await other_inbox.wait_count(3)  # the one still here got them at once
            assert rig.inbox.data == []
            assert rig.conn.buffered == 3

            await rig.come_back()
            await rig.inbox.wait_count(3)
            assert rig.inbox.data == [0, 1, 2]
            assert other_inbox.data == [0, 1, 2]


async def test_a_request_to_an_away_session_is_delivered_on_reconnect_and_answered() -> None:
    async with away_rig() as rig:
        asked: list[Any] = []

        @rig.client.on_request
        def answer(request: Request) -> Response:
            asked.append(request.params)
            return Response.success(request.id, {"echo": request.params})

        await rig.drop()
        ask = asyncio.create_task(rig.server.send_request(rig.conn, "ask", {"n": 7}))
        await wait_until(lambda: rig.conn.buffered == 1)
        assert not ask.done()

        await rig.come_back()
        response = await wait_for(ask)
        assert response.ok
        assert response.data == {"echo": {"n": 7}}
        assert asked == [{"n": 7}]


async def test_a_second_websocket_with_the_same_key_takes_the_session_over() -> None:
    async with running_server() as server:
        watch = Watch(server)
        inbox = Inbox()
        sleeps: list[float] = []

        async def sleep(delay: float) -> None:
            sleeps.append(delay)
            await asyncio.sleep(0)

        older = ProtocolClient(ws_url(server), reconnect_interval=0.01, sleep=sleep)
        older.on_event(inbox)
        running = asyncio.create_task(older.connect())
        try:
            await older.wait_connected(WAIT)
            conn = await wait_for(watch.connected.get())
            key = older.session.key
            assert key is not None

            async with connect(ws_url(server), additional_headers=session_headers(key)) as newer:
                greeting = await greeting_of(newer)
                assert (greeting["session"], greeting["resumed"]) == (key, True)
                # The older client's loop ends: it does not reconnect to fight for the session.
                await wait_for(running)  # returned: no exception, not cancelled
                assert not older.is_connected
                assert "took this session over" in str(older.last_error)
                assert sleeps == []
                # The newer socket holds the session: the Connection never went away, and
                # events reach the newer socket, not the older client.
                assert conn.is_connected
                assert watch.disconnected.empty()
                assert server.connections == [conn]
                assert list(server.sessions) == [conn]
                await server.send_event(conn, "tick", 1)
                frame = await recv_frame(newer)
                assert frame["data"] == 1
                assert inbox.events == []
        finally:
            await older.disconnect()


async def test_the_taken_over_socket_is_closed_with_4001() -> None:
    async with running_server() as server, connect(ws_url(server)) as older:
        key = (await greeting_of(older))["session"]
        newer = ProtocolClient(ws_url(server), request_timeout=WAIT)
        newer.session.update(key, "test")
        async with newer:
            assert newer.is_connected
            with pytest.raises(ConnectionClosed) as closed:
                await wait_for(older.recv())
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4001
            assert newer.session.key == key
            assert len(server.sessions) == 1


# One session over a WebSocket and HTTP ---------------------------------------------------------


class CarryingHttp(HttpAdapter):
    """An HttpAdapter that notes the id of every event its poller hands on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.carried: list[Any] = []

    async def handle_event(self, event: Event) -> None:
        self.carried.append(event.data)
        await super().handle_event(event)


def carrier(manager: AdapterManager) -> Adapter | None:
    """The adapter that carried the manager's last packet."""
    return manager.last_adapter


@dataclass
class Pair:
    server: ProtocolServer
    proxy: TcpProxy
    watch: Watch
    ws: WebSocketAdapter
    http: CarryingHttp
    manager: AdapterManager
    conn: Connection


@contextlib.asynccontextmanager
async def pair_rig(**server_kwargs: Any) -> AsyncIterator[Pair]:
    async with running_server(**server_kwargs) as server, TcpProxy(server.port) as proxy:
        watch = Watch(server)
        ws = WebSocketAdapter(
            proxy.url,
            priority=10,
            reconnect_interval=0.01,
            request_timeout=WAIT,
            sleep=sleep_until_accepting(proxy),
        )
        http = CarryingHttp(
            http_url(server),
            mode=AdapterMode.SEND | AdapterMode.RECEIVE,
            poll_wait=0.5,
            request_timeout=WAIT,
        )
        async with AdapterManager([http, ws]) as manager:
            conn = await wait_for(watch.connected.get())
            # The poller is under way, presenting the WebSocket's session key.
            await wait_until(lambda: conn.polls > 0)
            yield Pair(server, proxy, watch, ws, http, manager, conn)


async def test_a_websocket_and_http_in_one_manager_are_one_session_and_events_arrive_once() -> None:
    async with pair_rig() as rig:
        inbox = Inbox()
        rig.manager.on_event(inbox)
        assert list(rig.server.sessions) == [rig.conn]
        assert rig.ws.session.key == rig.http.session.key == rig.conn.session

        for n in range(10):
            await rig.server.send_event(rig.conn, "tick", n)
        await inbox.wait_count(10)

        await rig.proxy.cut()
        assert await wait_for(rig.watch.disconnected.get()) is rig.conn
        for n in range(10, 30):
            await rig.server.send_event(rig.conn, "tick", n)
        # The WebSocket is down: only the HTTP poller can bring these.
        await inbox.wait_count(30)
        assert set(range(10, 30)) <= set(rig.http.carried)

        for n in range(30, 40):  # the poller and the replay race for these
            await rig.server.send_event(rig.conn, "tick", n)
        await rig.proxy.resume()
        await wait_until(lambda: rig.conn.is_connected)
        for n in range(40, 50):
            await rig.server.send_event(rig.conn, "tick", n)
        await inbox.wait_count(50)
        await rig.ws.wait_connected(WAIT)
        await rig.server.send_event(rig.conn, "tick", "fence")
        await inbox.wait_count(51)

        counts = Counter(inbox.data)
        assert counts == Counter([*range(50), "fence"])  # each exactly once
        assert list(rig.server.sessions) == [rig.conn]
        assert rig.ws.session.key == rig.conn.session


# At most once, per session ------------------------------------------------------------------


async def test_a_failover_retry_of_a_slow_request_runs_once() -> None:
    cache = WatchedCache()
    gate = Gate()
    async with pair_rig(response_cache=cache) as rig:

        @rig.server.command("slow")
        async def slow(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
            return await gate.pass_through(
                {"session": connection.session, "ran_over": connection.transport}
            )

        assert rig.ws.is_connected
        request = Request(command="slow")
        call = asyncio.create_task(rig.manager.send_packet(request))
        await wait_for(gate.started.wait())

        await rig.proxy.cut()
        await wait_for(cache.repeated.wait())  # the retry, same id, reached it over HTTP
        assert not call.done()
        gate.open()
        response = await wait_for(call)

        assert response.ok
        assert response.id == request.id
        # The first run's result (it began over the WebSocket), carried back over HTTP.
        assert response.data == {"session": rig.conn.session, "ran_over": "websocket"}
        assert gate.runs == 1
        assert cache.arrivals[request.id] == 2
        assert carrier(rig.manager) is rig.http
        assert list(rig.server.sessions) == [rig.conn]


async def test_the_same_request_id_from_two_sessions_runs_for_each() -> None:
    runs: Counter[str] = Counter()
    async with running_server() as server:

        @server.command("count")
        def count(connection: Connection, params: dict[str, Any]) -> int:
            runs[connection.session] += 1
            return runs[connection.session]

        url = ws_url(server)
        async with (
            WebSocketAdapter(url, request_timeout=WAIT) as one,
            WebSocketAdapter(url, request_timeout=WAIT) as two,
            HttpAdapter(http_url(server), request_timeout=WAIT) as three,
            HttpAdapter(http_url(server), request_timeout=WAIT) as four,
        ):
            for http in (three, four):  # open their sessions first
                assert (await http.send_packet(Request(command="count"))).ok
            keys = {a.session.key for a in (one, two, three, four)}
            assert None not in keys
            assert len(keys) == 4

            request = Request(id="same-id", command="count")
            answers = [await a.send_packet(request) for a in (one, two, three, four)]
            assert [a.data for a in answers] == [1, 1, 2, 2]  # each session ran it
            # Within one session the id is answered from the cache, over any adapter.
            assert (await one.send_packet(request)).data == 1
            three.share_session(one.session)
            assert (await three.send_packet(request)).data == 1
            assert sorted(runs.values()) == [1, 1, 2, 2]


# Expiry, end, bound ----------------------------------------------------------------------------


async def test_detached_sessions_expire_and_free_their_memory() -> None:
    async with running_server(session_ttl=0.2) as server:
        watch = Watch(server)
        keys = {await open_http_session(server) for _ in range(3)}
        for _ in range(2):
            async with connect(ws_url(server)) as ws:
                keys.add((await greeting_of(ws))["session"])
                await drop_raw(ws)
        assert len(keys) == 5
        await wait_until(lambda: server.connections == [])
        for conn in server.sessions:
            await server.send_event(conn, "tick", "kept until expiry")

        await watch.wait_ended(5)
        assert len(server.sessions) == 0
        assert sorted(c.session for c in watch.ended) == sorted(keys)  # once per session
        assert all(c.ended and c.buffered == 0 for c in watch.ended)
        # An expired key is unknown: presenting it opens a fresh session.
        stale = next(iter(keys))
        status, _, key = await post_packet(server, {"id": "x", "type": "event", "name": "x"}, stale)
        assert status == 200
        assert key not in keys
        assert len(server.sessions) == 1
        assert len(watch.ended) == 5


async def test_an_attached_or_polling_session_does_not_expire() -> None:
    async with running_server(session_ttl=0.1) as server:
        watch = Watch(server)
        async with (
            aiohttp.ClientSession() as http,
            ProtocolClient(ws_url(server), request_timeout=WAIT) as client,
        ):
            attached = await wait_for(watch.connected.get())
            # A long poll opens its own session and holds it for as long as it waits.
            poll = asyncio.create_task(
                http.get(f"{http_url(server)}/events?wait={WAIT:g}").__aenter__()
            )
            await wait_until(lambda: any(c.polls for c in server.sessions))
            [polling] = [c for c in server.sessions if c.polls]

            # A witness opened after both: by the time it expires, so could have they.
            witness = await open_http_session(server)
            await watch.wait_ended(1)
            assert watch.ended[0].session == witness
            assert set(server.sessions) == {attached, polling}
            assert client.is_connected
            assert not poll.done()

            await server.send_event(polling, "wake", 1)
            reply = await wait_for(poll)
            try:
                assert reply.status == 200
                assert [p["data"] for p in json.loads(await reply.read())] == [1]
                assert reply.headers[SESSION_HEADER] == polling.session
            finally:
                reply.release()
            # Once the poll is over its idle clock runs: it expires in turn.
            await watch.wait_ended(2)
            assert watch.ended[1] is polling
            assert list(server.sessions) == [attached]


async def test_a_reconnect_right_after_a_clean_close_finds_no_session() -> None:
    """The session ends as the goodbye is read, not after the disconnect handlers: a client
    that comes straight back with the old key, while a slow handler still runs, starts anew."""
    async with running_server() as server:
        release = asyncio.Event()
        in_handler = asyncio.Event()

        @server.on_disconnect
        async def slow_goodbye(connection: Connection) -> None:
            in_handler.set()
            await release.wait()

        async with connect(ws_url(server)) as ws:
            key = (await greeting_of(ws))["session"]
        # The close (1000) was answered; the disconnect handler now waits.
        await wait_for(in_handler.wait())
        try:
            async with connect(ws_url(server), additional_headers=session_headers(key)) as ws:
                data = await greeting_of(ws)
                assert data["resumed"] is False
                assert data["session"] != key
        finally:
            release.set()


async def test_a_clean_disconnect_ends_the_session_a_drop_leaves_it_resumable() -> None:
    async with running_server() as server:  # the default ttl: nothing here expires
        watch = Watch(server)
        client = ProtocolClient(ws_url(server), request_timeout=WAIT)
        async with client:
            conn = await wait_for(watch.connected.get())
            assert len(server.sessions) == 1
        await watch.wait_ended(1)  # disconnect() said goodbye: the session is over at once
        assert await wait_for(watch.disconnected.get()) is conn
        assert watch.ended == [conn]
        assert conn.ended
        assert len(server.sessions) == 0

        async with connect(ws_url(server)) as ws:
            key = (await greeting_of(ws))["session"]
            await drop_raw(ws)
        dropped = await wait_for(watch.disconnected.get())
        assert dropped.session == key
        assert list(server.sessions) == [dropped]
        assert not dropped.ended

        async with connect(ws_url(server), additional_headers=session_headers(key)) as ws:
            data = await greeting_of(ws)
            assert (data["session"], data["resumed"]) == (key, True)
            assert await wait_for(watch.connected.get()) is dropped
        # The raw peer closed cleanly (1000) this time: that ends the session.
        await watch.wait_ended(2)
        assert watch.ended == [conn, dropped]
        assert len(server.sessions) == 0


async def test_past_max_sessions_the_longest_idle_detached_session_ends() -> None:
    async with running_server(max_sessions=3) as server:
        watch = Watch(server)
        first = await open_http_session(server)
        second = await open_http_session(server)
        third = await open_http_session(server)
        assert len(server.sessions) == 3
        # Touch the first again: the second is now the longest idle.
        status, _, key = await post_packet(server, {"id": "t", "type": "event", "name": "t"}, first)
        assert (status, key) == (200, first)

        fourth = await open_http_session(server)
        await watch.wait_ended(1)
        assert [c.session for c in watch.ended] == [second]
        assert {c.session for c in server.sessions} == {first, third, fourth}

        # Attached sessions are never evicted: with every slot attached, a new one is refused.
        sockets = []
        try:
            for _ in range(3):
                ws = await connect(ws_url(server))
                sockets.append(ws)
                await greeting_of(ws)
            # The three HTTP sessions made room: the provisional ones first (third and fourth,
            # never presented again), then first, a full session since its key came back (§7).
            await watch.wait_ended(4)
            assert [c.session for c in watch.ended] == [second, third, fourth, first]
            assert len(server.sessions) == 3
            status, body, key = await post_packet(server, {"id": "n", "type": "event", "name": "n"})
            assert (status, body["code"], key) == (503, 503, None)
            async with aiohttp.ClientSession() as http:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(ws_url(server))
                assert refused.value.status == 503
            assert len(server.sessions) == 3
        finally:
            for ws in sockets:
                await ws.close()


async def test_an_expired_key_opens_a_fresh_session() -> None:
    async with running_server(session_ttl=0.1) as server:
        watch = Watch(server)
        async with connect(ws_url(server)) as ws:
            key = (await greeting_of(ws))["session"]
            await drop_raw(ws)
        await watch.wait_ended(1)
        assert watch.ended[0].session == key

        async with connect(ws_url(server), additional_headers=session_headers(key)) as ws:
            data = await greeting_of(ws)
            assert data["session"] != key
            assert (data["resumed"], data["dropped"]) == (False, 0)
            assert len(server.sessions) == 1


async def test_a_client_adopts_the_fresh_session_after_its_own_expired() -> None:
    async with away_rig(session_ttl=0.1) as rig:
        old = rig.client.session.key
        await rig.drop()
        await rig.watch.wait_ended(1)
        assert rig.watch.ended == [rig.conn]

        await rig.proxy.resume()
        fresh = await wait_for(rig.watch.connected.get())
        assert fresh is not rig.conn
        await rig.client.wait_connected(WAIT)
        assert rig.client.session.key == fresh.session != old
        assert list(rig.server.sessions) == [fresh]
        await rig.server.send_event(fresh, "tick", "fresh")
        await rig.inbox.wait_count(1)
        assert rig.inbox.data == ["fresh"]


def test_a_flood_of_one_off_sessions_evicts_the_oldest_in_linear_time() -> None:
    """Each caller without a key opens a session: at the bound, the oldest idle one goes.

    Eviction looks only at the front of the registry, so 30,000 opens past a bound of 10,000
    take linear time (a scan per open would take minutes), and the newest survive.
    """
    from siyi_sdk.server.sessions import SessionRegistry

    registry = SessionRegistry(max_sessions=10_000, ttl=300)
    started = time.perf_counter()
    opened = [registry.open(None, None, {}) for _ in range(30_000)]
    assert time.perf_counter() - started < 10
    assert len(registry) == 10_000
    assert registry.get(opened[-1].session) is opened[-1]
    assert registry.get(opened[0].session) is None
    assert opened[0].ended
