"""Receiving over HTTP: ``GET /events`` long-polls a session's buffer (PROTOCOL.md §7).

An HTTP-only client gets the server's events, in order, and answers its requests through
``POST /general``. The raw endpoint is exercised with aiohttp: `wait`, and `after`, which makes
a lost poll answer lose nothing. Everything runs over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from siyi_sdk import (
    Adapter,
    AdapterManager,
    AdapterMode,
    ApiError,
    Connection,
    HttpAdapter,
    ProtocolServer,
    Request,
    Response,
)
from tests.conftest import Inbox, wait_until
from tests.proxy import WAIT, Gate, TcpProxy, running_server, sleep_until_accepting, wait_for

SESSION_HEADER = "X-Siyi-Session"
RECEIVING = AdapterMode.SEND | AdapterMode.RECEIVE


async def polling_session(server: ProtocolServer) -> Connection:
    """The one session on `server`, once a poll of /events is waiting on it."""
    await wait_until(lambda: any(c.polls for c in server.sessions))
    [connection] = server.sessions
    return connection


def answer_asks(request: Request) -> Response:
    """The client's request handler: echo `ask`, refuse `refuse`."""
    if request.command == "refuse":
        raise ApiError("not today", code=1403)
    return Response.success(request.id, {"echo": request.params})


# An HTTP-only client -------------------------------------------------------------------------


@dataclass
class Receiver:
    server: ProtocolServer
    client: Adapter  # what the handlers are registered on: the HttpAdapter or its manager
    http: HttpAdapter
    inbox: Inbox
    conn: Connection


@contextlib.asynccontextmanager
async def receiver(inside_manager: bool) -> AsyncIterator[Receiver]:
    async with running_server() as server:
        http = HttpAdapter(
            f"http://127.0.0.1:{server.port}", mode=RECEIVING, poll_wait=0.5, request_timeout=WAIT
        )
        client: Adapter = AdapterManager([http]) if inside_manager else http
        inbox = Inbox()
        client.on_event(inbox)
        client.on_request(answer_asks)
        async with client:
            conn = await polling_session(server)
            yield Receiver(server, client, http, inbox, conn)


MODES = [pytest.param(False, id="alone"), pytest.param(True, id="in-manager")]


@pytest.mark.parametrize("inside_manager", MODES)
async def test_an_http_only_client_receives_events_in_order(inside_manager: bool) -> None:
    async with receiver(inside_manager) as rig:
        assert rig.conn.transport == "http"
        for n in range(30):
            await rig.server.send_event(rig.conn, "tick", n)
        await rig.inbox.wait_count(30)
        # More, in two bursts, each while a poll may or may not be waiting.
        for n in range(30, 40):
            await rig.server.send_event(rig.conn, "tick", n)
        await asyncio.sleep(0)
        for n in range(40, 50):
            await rig.server.send_event(rig.conn, "tick", n)
        await rig.inbox.wait_count(50)
        await rig.server.broadcast_event("tick", "broadcast")  # a poller takes broadcasts too
        await rig.inbox.wait_count(51)

        assert rig.inbox.data == [*range(50), "broadcast"]
        assert [e.name for e in rig.inbox.events] == ["tick"] * 51
        assert list(rig.server.sessions) == [rig.conn]  # one session, whatever the polls
        assert rig.http.session.key == rig.conn.session


@pytest.mark.parametrize("inside_manager", MODES)
async def test_an_http_only_client_answers_server_requests(inside_manager: bool) -> None:
    async with receiver(inside_manager) as rig:
        answer = await wait_for(rig.server.send_request(rig.conn, "ask", {"n": 1}))
        assert answer.ok
        assert answer.data == {"echo": {"n": 1}}

        refused = await wait_for(rig.server.send_request(rig.conn, "refuse"))
        assert (refused.ok, refused.code, refused.error) == (False, 1403, "not today")

        # Several at once, interleaved with events: every one answered, events in order.
        asks = [
            asyncio.create_task(rig.server.send_request(rig.conn, "ask", {"n": n}))
            for n in range(5)
        ]
        for n in range(5):
            await rig.server.send_event(rig.conn, "tick", n)
        answers = await wait_for(asyncio.gather(*asks))
        assert [a.data for a in answers] == [{"echo": {"n": n}} for n in range(5)]
        await rig.inbox.wait_count(5)
        assert rig.inbox.data == list(range(5))
        assert list(rig.server.sessions) == [rig.conn]


async def test_a_slow_server_request_does_not_hold_up_events() -> None:
    gate = Gate()
    async with receiver(inside_manager=False) as rig:

        @rig.http.on_request
        async def slow(request: Request) -> Response:
            return Response.success(request.id, await gate.pass_through("done"))

        ask = asyncio.create_task(rig.server.send_request(rig.conn, "slow"))
        await wait_for(gate.started.wait())
        await rig.server.send_event(rig.conn, "tick", 1)
        await rig.inbox.wait_count(1)  # delivered while the request still runs
        assert not ask.done()
        gate.open()
        assert (await wait_for(ask)).data == "done"
        assert gate.runs == 1


# A lost poll answer loses nothing ------------------------------------------------------------


async def test_a_poll_answer_lost_in_a_cut_loses_nothing() -> None:
    """The link drops while a poll waits; the server answers it into the dead socket.

    The poller comes back and gets every packet anyway: a poll only consumes what a later
    poll acknowledges. That holds for the very first poll too, before anything was received.
    """
    async with running_server() as server, TcpProxy(server.port) as proxy:
        http = HttpAdapter(
            f"http://127.0.0.1:{proxy.port}",
            mode=RECEIVING,
            poll_wait=WAIT,  # the poll is still waiting when the link is cut
            request_timeout=WAIT,
            reconnect_interval=0.01,
            sleep=sleep_until_accepting(proxy),
        )
        inbox = Inbox()
        http.on_event(inbox)
        async with http:
            conn = await polling_session(server)
            # The first poll returned at once with the session key; this one waits.
            await wait_until(lambda: http.session.key == conn.session and conn.polls > 0)
            for first in (0, 3):
                await proxy.cut()
                for n in range(first, first + 3):
                    await server.send_event(conn, "tick", n)
                # The orphaned poll has answered, into the cut link.
                await wait_until(lambda: conn.polls == 0)
                assert len(inbox.events) == first
                await proxy.resume()
                await inbox.wait_count(first + 3)
                await wait_until(lambda: conn.polls > 0)
            assert inbox.data == list(range(6))
            assert list(server.sessions) == [conn]


# The raw endpoint ----------------------------------------------------------------------------


@dataclass
class Poller:
    """Raw calls to ``GET /events``, presenting one session."""

    base: str
    http: aiohttp.ClientSession
    key: str | None = None

    async def poll(self, **query: Any) -> list[dict[str, Any]]:
        status, packets = await self.get(**query)
        assert status == 200
        assert isinstance(packets, list)
        return packets

    async def get(self, **query: Any) -> tuple[int, Any]:
        headers = {SESSION_HEADER: self.key} if self.key is not None else {}
        params = {name: str(value) for name, value in query.items()}
        async with self.http.get(f"{self.base}/events", params=params, headers=headers) as reply:
            key = reply.headers.get(SESSION_HEADER)
            if reply.status == 200:
                assert key is not None
                assert self.key in (None, key)
                self.key = key
            return reply.status, json.loads(await reply.read())


@pytest.fixture
async def raw() -> AsyncIterator[tuple[ProtocolServer, Poller]]:
    async with running_server() as server, aiohttp.ClientSession() as http:
        yield server, Poller(f"http://127.0.0.1:{server.port}", http)


def names(packets: list[dict[str, Any]]) -> list[str]:
    return [p["name"] for p in packets]


async def test_wait_returns_an_empty_array_when_nothing_arrives(
    raw: tuple[ProtocolServer, Poller],
) -> None:
    server, poller = raw
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await poller.poll(wait=0.2) == []
    assert loop.time() - started >= 0.15  # it did wait (loosely: timers may fire a bit early)
    assert poller.key is not None
    [conn] = server.sessions
    assert conn.session == poller.key

    assert await poller.poll(wait=0) == []  # no wait: answered at once
    status, body = await poller.get(wait="soon")
    assert (status, body["code"]) == (400, 400)
    assert list(server.sessions) == [conn]


async def test_a_waiting_poll_returns_as_soon_as_something_arrives(
    raw: tuple[ProtocolServer, Poller],
) -> None:
    server, poller = raw
    await poller.poll(wait=0)
    [conn] = server.sessions
    waiting = asyncio.create_task(poller.poll(wait=WAIT))
    await wait_until(lambda: conn.polls == 1)
    await server.send_event(conn, "a", 1)
    packets = await wait_for(waiting)
    assert [(p["type"], p["name"], p["data"]) for p in packets] == [("event", "a", 1)]


async def test_without_after_a_poll_consumes_with_after_it_acknowledges(
    raw: tuple[ProtocolServer, Poller],
) -> None:
    server, poller = raw
    await poller.poll(wait=0)
    [conn] = server.sessions

    for name in "abc":
        await server.send_event(conn, name)
    got = await poller.poll(wait=0)
    assert names(got) == ["a", "b", "c"]
    assert await poller.poll(wait=0) == []  # consumed: gone
    c_id = got[-1]["id"]

    for name in "def":
        await server.send_event(conn, name)
    # `after` names the last packet handled; c is long gone, so nothing more is dropped.
    got = await poller.poll(wait=0, after=c_id)
    assert names(got) == ["d", "e", "f"]
    d_id, f_id = got[0]["id"], got[-1]["id"]
    # That answer was lost: asking again with the same `after` gets the same packets.
    assert names(await poller.poll(wait=0, after=c_id)) == ["d", "e", "f"]
    # d was handled: d goes, the rest is sent again.
    assert names(await poller.poll(wait=0, after=d_id)) == ["e", "f"]
    assert conn.buffered == 2
    assert await poller.poll(wait=0, after=f_id) == []
    assert conn.buffered == 0

    # An empty `after` acknowledges nothing yet (a client's first poll): it consumes nothing.
    await server.send_event(conn, "x")
    assert names(await poller.poll(wait=0, after="")) == ["x"]
    got = await poller.poll(wait=0, after="")
    assert names(got) == ["x"]
    assert await poller.poll(wait=0, after=got[0]["id"]) == []
    assert conn.buffered == 0

    # A poll with `after` that has to wait keeps what it returns, too, until acknowledged.
    waiting = asyncio.create_task(poller.poll(wait=WAIT, after=f_id))
    await wait_until(lambda: conn.polls == 1)
    await server.send_event(conn, "g")
    got = await wait_for(waiting)
    assert names(got) == ["g"]
    assert names(await poller.poll(wait=0, after=f_id)) == ["g"]
    assert await poller.poll(wait=0, after=got[0]["id"]) == []


async def test_requests_wait_in_the_buffer_and_are_answered_through_general(
    raw: tuple[ProtocolServer, Poller],
) -> None:
    server, poller = raw
    await poller.poll(wait=0)
    [conn] = server.sessions
    ask = asyncio.create_task(server.send_request(conn, "ask", {"n": 2}))
    [packet] = await poller.poll(wait=WAIT)
    assert (packet["type"], packet["command"], packet["params"]) == ("request", "ask", {"n": 2})
    assert not ask.done()

    answer = {"id": packet["id"], "type": "response", "status": "ok", "code": 0, "data": 4}
    assert poller.key is not None
    async with poller.http.post(
        f"{poller.base}/general",
        data=json.dumps(answer),
        headers={SESSION_HEADER: poller.key},
    ) as reply:
        assert reply.status == 200
        ack = json.loads(await reply.read())
    assert (ack["id"], ack["status"], ack["code"]) == (packet["id"], "ok", 0)
    response = await wait_for(ask)
    assert (response.ok, response.data) == (True, 4)


async def test_stopping_the_server_answers_a_waiting_poll_at_once() -> None:
    """A long poll is not a running handler: stop() answers it instead of waiting it out."""
    server = ProtocolServer(port=0, shutdown_timeout=2 * WAIT)
    async with aiohttp.ClientSession() as http:
        await server.start_serving()
        stopping = None
        try:
            poller = Poller(f"http://127.0.0.1:{server.port}", http)
            waiting = asyncio.create_task(poller.poll(wait=4 * WAIT))
            await wait_until(lambda: any(c.polls for c in server.sessions))
            stopping = asyncio.create_task(server.stop())
            assert await wait_for(waiting, WAIT / 2) == []  # well before shutdown_timeout
            await wait_for(stopping)
        finally:
            await (stopping or server.stop())
