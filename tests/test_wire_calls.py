"""Deadlines, cancellation and streams on the wire (PROTOCOL.md §9, §10), frame by frame.

An independent peer checks the exact packets: the `websockets` library and raw aiohttp HTTP
calls against a real `ProtocolServer` on loopback, and a hand-written aiohttp WebSocket server
(`make_raw_server`) that records every frame a `ProtocolClient` sends.

Every raw WebSocket below reads the server's `session` greeting first and then accounts for
every frame it receives (`recv_frame`, strict): a frame the protocol does not call for fails the
test. Waits are on events and frames; the one timed wait is the window in which a stream must
send nothing (`test_a_window_of_2_sends_two_chunks_then_nothing_until_the_ack`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from websockets.asyncio.client import connect

from siyi_sdk import (
    Connection,
    ProtocolClient,
    ProtocolServer,
    Request,
    Response,
    StatusCode,
    calls,
)
from siyi_sdk.adapters.websocket import _transport_of
from siyi_sdk.calls import EARLY_CANCEL_MAX, Runs
from siyi_sdk.frames import text_frames
from siyi_sdk.packets import SESSION_HEADER

from .conftest import (
    WAIT,
    ClientFactory,
    RawServerFactory,
    ServerFactory,
    greet,
    greeting_of,
    http_url,
    open_http_session,
    post_packet,
    recv_frame,
    wait_for,
    ws_url,
)

NDJSON = "application/x-ndjson"

# Helpers -----------------------------------------------------------------------------------


def request(rid: str, command: str, **fields: Any) -> str:
    return json.dumps({"id": rid, "type": "request", "command": command, **fields})


def event(eid: str, name: str, data: Any) -> str:
    return json.dumps({"id": eid, "type": "event", "name": name, "data": data})


def cancel(eid: str, rid: str) -> str:
    return event(eid, "siyi.cancel", {"id": rid})


def ack(eid: str, rid: str, seq: int) -> str:
    return event(eid, "siyi.ack", {"id": rid, "seq": seq})


def error_response(rid: str, code: int, frame: dict[str, Any]) -> dict[str, Any]:
    """The exact error Response `frame` must be; its message is only required to be a string."""
    assert isinstance(frame.get("error"), str), frame
    assert frame["error"]
    return {"id": rid, "type": "response", "status": "error", "code": code, "error": frame["error"]}


def ok_response(rid: str, data: Any) -> dict[str, Any]:
    return {"id": rid, "type": "response", "status": "ok", "code": 0, "data": data}


def chunk(rid: str, seq: int, data: Any, frame: dict[str, Any]) -> dict[str, Any]:
    """The exact chunk Event `frame` must be: its own id, a string other than the request's."""
    assert isinstance(frame.get("id"), str), frame
    assert frame["id"]
    assert frame["id"] != rid
    return {
        "id": frame["id"],
        "type": "event",
        "name": "siyi.chunk",
        "data": {"id": rid, "seq": seq, "data": data},
    }


class Blocker:
    """A handler body that blocks until cancelled, and tells when it started and was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.runs = 0

    async def block(self) -> str:
        self.runs += 1
        self.started.set()
        try:
            await asyncio.Event().wait()  # never set: only a cancel ends it
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "unreachable"


class Items:
    """What a streaming handler did: items produced, and whether its generator was closed."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = asyncio.Event()


class ServerState:
    """A real server with the commands these tests call, and what their handlers observed."""

    def __init__(self, server: ProtocolServer) -> None:
        self.server = server
        self.blocker = Blocker()
        self.items = Items()
        blocker, items = self.blocker, self.items

        @server.command("block")
        async def block(connection: Connection, params: dict[str, Any]) -> str:
            return await blocker.block()

        @server.command("ping")
        def ping(connection: Connection, params: dict[str, Any]) -> str:
            return "pong"

        @server.command("count")
        async def count(
            connection: Connection, params: dict[str, Any]
        ) -> AsyncIterator[dict[str, int]]:
            """`upto` items ``{"n": n}``; raises before item `fail_at` when given."""
            try:
                for n in range(int(params.get("upto", 5))):
                    if n == params.get("fail_at"):
                        raise RuntimeError("the source went away")
                    items.produced += 1
                    yield {"n": n}
            finally:
                items.closed.set()


async def started(make_server: ServerFactory, **kwargs: Any) -> ServerState:
    return ServerState(await make_server(**kwargs))


class Recorder:
    """A hand-written WebSocket server that greets, then records every frame its peer sends."""

    def __init__(self) -> None:
        self.log: list[dict[str, Any]] = []
        self._frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.ws: web.WebSocketResponse | None = None
        self.closed = asyncio.Event()

    async def handler(self, http_request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(http_request)
        await greet(ws)
        self.ws = ws
        async for message in ws:
            assert message.type == aiohttp.WSMsgType.TEXT, "packets travel in text frames"
            frame = json.loads(message.data)
            assert isinstance(frame, dict)
            self.log.append(frame)
            self._frames.put_nowait(frame)
        self.closed.set()
        return ws

    async def next(self) -> dict[str, Any]:
        frame: dict[str, Any] = await wait_for(self._frames.get())
        return frame

    async def send(self, packet: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(packet))


async def recording(make_raw_server: RawServerFactory) -> tuple[Recorder, str]:
    recorder = Recorder()
    return recorder, await make_raw_server(recorder.handler)


async def read_ndjson(reply: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """The packets of an NDJSON body: one JSON object per line, every line ending in \\n."""
    body = await reply.read()
    assert body.endswith(b"\n"), body
    packets = [json.loads(line) for line in body.split(b"\n")[:-1]]
    assert all(isinstance(packet, dict) for packet in packets)
    return packets


# §9 Deadlines: what a sender stamps ---------------------------------------------------------


async def test_a_clients_request_carries_its_timeout_in_meta(
    make_raw_server: RawServerFactory, make_client: ClientFactory
) -> None:
    recorder, url = await recording(make_raw_server)
    client = await make_client(url)
    call = asyncio.create_task(client.send_request("echo", {"x": 1}, timeout=2.5))
    sent = await recorder.next()
    assert sent == {
        "id": sent["id"],
        "type": "request",
        "command": "echo",
        "params": {"x": 1},
        "meta": {"timeout": 2.5},
    }
    await recorder.send(ok_response(sent["id"], "echoed"))
    assert (await wait_for(call)).data == "echoed"


@pytest.mark.parametrize(("sent_timeout", "cap"), [(None, 1.0), (0.5, 0.5)])
async def test_a_request_sent_from_a_handler_carries_what_is_left_of_its_budget(
    make_server: ServerFactory, sent_timeout: float | None, cap: float
) -> None:
    """handler_timeout=1: the handler's own request carries meta.timeout <= 1 (or <= the
    smaller meta.timeout its caller sent), however long it says it would wait (30 s)."""
    server = await make_server(handler_timeout=1.0)

    @server.command("ask_back")
    async def ask_back(connection: Connection, params: dict[str, Any]) -> Any:
        return (await connection.send_request("nap", timeout=30)).data

    meta = {} if sent_timeout is None else {"meta": {"timeout": sent_timeout}}
    async with connect(ws_url(server)) as ws:
        await greeting_of(ws)
        await ws.send(request("outer", "ask_back", **meta))
        inner = await recv_frame(ws)
        assert isinstance(inner["id"], str)
        assert inner["id"]
        budget = inner["meta"]["timeout"]
        assert inner == {
            "id": inner["id"],
            "type": "request",
            "command": "nap",
            "meta": {"timeout": budget},
        }
        assert type(budget) in (int, float)
        assert 0 < budget <= cap
        await ws.send(json.dumps(ok_response(inner["id"], "rested")))
        assert await recv_frame(ws) == ok_response("outer", "rested")


# §9 Deadlines: what a receiver answers --------------------------------------------------------


async def test_a_meta_timeout_cuts_a_slow_handler_with_408_over_websocket(
    make_server: ServerFactory,
) -> None:
    state = await started(make_server)
    async with connect(ws_url(state.server)) as ws:
        await greeting_of(ws)
        await ws.send(request("t1", "block", meta={"timeout": 0.1}))
        answer = await recv_frame(ws)
        assert answer == error_response("t1", 408, answer)
    assert state.blocker.cancelled.is_set()


async def test_a_meta_timeout_cuts_a_slow_handler_with_408_over_http(
    make_server: ServerFactory,
) -> None:
    state = await started(make_server)
    status, body, _ = await post_packet(
        state.server,
        {"id": "t2", "type": "request", "command": "block", "meta": {"timeout": 0.1}},
    )
    assert status == 200
    assert body == error_response("t2", 408, body)
    assert state.blocker.cancelled.is_set()


# §10 Cancel: what a sender sends --------------------------------------------------------------


async def test_cancelling_the_awaiting_task_sends_exactly_one_cancel_event(
    make_raw_server: RawServerFactory,
) -> None:
    recorder, url = await recording(make_raw_server)
    async with ProtocolClient(url, request_timeout=WAIT) as client:
        call = asyncio.create_task(client.send_request("block", timeout=WAIT))
        sent = await recorder.next()
        assert (sent["type"], sent["command"]) == ("request", "block")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        withdrawn = await recorder.next()
        assert isinstance(withdrawn["id"], str)
        assert withdrawn["id"]
        assert withdrawn["id"] != sent["id"]
        assert withdrawn == {
            "id": withdrawn["id"],
            "type": "event",
            "name": "siyi.cancel",
            "data": {"id": sent["id"]},
        }
    # The client has closed: everything it ever sent is in the log, and only these two.
    await wait_for(recorder.closed.wait())
    assert recorder.log == [sent, withdrawn]


# §10 Cancel: what a receiver answers ----------------------------------------------------------


async def test_a_cancel_answers_499_once_for_all_and_an_unknown_id_gets_no_frame(
    make_server: ServerFactory,
) -> None:
    state = await started(make_server)
    blocker = state.blocker
    async with connect(ws_url(state.server)) as ws:
        await greeting_of(ws)
        await ws.send(request("c1", "block"))
        await wait_for(blocker.started.wait())
        await ws.send(cancel("e1", "c1"))
        answer = await recv_frame(ws)
        assert answer == error_response("c1", 499, answer)
        assert blocker.cancelled.is_set()
        # The at-most-once record keeps the 499: a repeat is answered so, never run again.
        await ws.send(request("c1", "block"))
        again = await recv_frame(ws)
        assert again == error_response("c1", 499, again)
        assert blocker.runs == 1
        # Cancels for an unknown id and for an answered one are ignored: no frame at all. The
        # server reads in order, so a frame they caused would come before the ping's answer.
        await ws.send(cancel("e2", "no-such-request"))
        await ws.send(cancel("e3", "c1"))
        await ws.send(request("p1", "ping"))
        assert await recv_frame(ws) == ok_response("p1", "pong")
    assert blocker.runs == 1


async def test_a_cancel_read_with_its_request_answers_499_whether_or_not_it_had_started(
    make_server: ServerFactory,
) -> None:
    """Request and cancel in one TCP write: the server reads both before the handler's task
    runs on 3.11 (the cancel comes first: kept, and the request answered 499 unrun); on 3.12+
    the task starts eagerly and the cancel stops it. Either way: 499, and nothing finishes."""
    state = await started(make_server)
    blocker = state.blocker
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(state.server)) as ws:
        await wait_for(ws.receive())  # the greeting
        transport = _transport_of(ws)
        assert isinstance(transport, asyncio.WriteTransport)
        both = [request("r1", "block").encode(), cancel("e1", "r1").encode()]
        transport.write(text_frames(both, masked=True))
        answer = json.loads((await wait_for(ws.receive())).data)
        assert answer == error_response("r1", 499, answer)
        if sys.version_info < (3, 12):
            assert blocker.runs == 0  # answered without running
        assert not blocker.started.is_set() or blocker.cancelled.is_set()
        await ws.send_str(request("p1", "ping"))  # the connection goes on
        assert json.loads((await wait_for(ws.receive())).data) == ok_response("p1", "pong")


async def test_an_early_cancel_is_kept_briefly_and_boundedly() -> None:
    """`Runs`: a cancel for a request not running yet stops it when it starts, if it starts
    within `EARLY_CANCEL_TTL`; at most `EARLY_CANCEL_MAX` such cancels are kept per session."""
    runs = Runs()
    ran: list[str] = []

    async def handler(rid: str) -> Response:
        ran.append(rid)
        return Response.success(rid, data="ran")

    assert runs.cancel("early") is False
    answer = await runs.run(Request(id="early", command="x"), handler("early"), None)
    assert answer.code == StatusCode.CANCELLED
    assert ran == []
    # Used once: a later request with that id (after its record is gone) runs.
    assert (await runs.run(Request(id="early", command="x"), handler("early"), None)).ok
    for n in range(EARLY_CANCEL_MAX + 50):
        runs.cancel(f"unknown-{n}")
    assert 0 < len(runs._early or {}) <= EARLY_CANCEL_MAX
    # The oldest went first: the first 50 are no longer kept, the last one is.
    assert (await runs.run(Request(id="unknown-0", command="x"), handler("u0"), None)).ok
    last = f"unknown-{EARLY_CANCEL_MAX + 49}"
    assert (await runs.run(Request(id=last, command="x"), handler("u"), None)).code == 499


async def test_an_early_cancel_past_its_time_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(calls, "EARLY_CANCEL_TTL", 0.0)
    runs = Runs()

    async def handler() -> Response:
        return Response.success("late", data="ran")

    runs.cancel("late")
    assert (await runs.run(Request(id="late", command="x"), handler(), None)).ok
    assert runs._early is None  # forgotten: nothing kept once nothing is fresh


async def test_a_cancel_posted_to_general_answers_the_running_http_request_499(
    make_server: ServerFactory,
) -> None:
    """§10: the cancel may come over POST /general, on the same session as the request."""
    state = await started(make_server)
    key = await open_http_session(state.server)
    call = asyncio.create_task(
        post_packet(state.server, {"id": "h1", "type": "request", "command": "block"}, key)
    )
    await wait_for(state.blocker.started.wait())
    status, body, _ = await post_packet(
        state.server,
        {"id": "e1", "type": "event", "name": "siyi.cancel", "data": {"id": "h1"}},
        key,
    )
    # §4: an Event posted to /general is acknowledged with an ok Response carrying its id.
    assert status == 200
    assert (body["id"], body["type"], body["status"], body["code"]) == ("e1", "response", "ok", 0)
    status, answer, _ = await wait_for(call)
    assert status == 200
    assert answer == error_response("h1", 499, answer)
    assert state.blocker.runs == 1


# §10 Streams over WebSocket -------------------------------------------------------------------


async def test_a_window_of_2_sends_two_chunks_then_nothing_until_the_ack(
    make_server: ServerFactory,
) -> None:
    state = await started(make_server)
    async with connect(ws_url(state.server)) as ws:
        await greeting_of(ws)
        await ws.send(request("s1", "count", params={"upto": 5}, meta={"window": 2}))
        first, second = await recv_frame(ws), await recv_frame(ws)
        assert first == chunk("s1", 0, {"n": 0}, first)
        assert second == chunk("s1", 1, {"n": 1}, second)
        # The one timed wait of this module: that nothing arrives can only be observed over a
        # while. With 2 chunks unacknowledged the window is full, so the server must be silent.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)
        # README's guarantee, beyond §10: the generator is not even asked for a third item.
        assert state.items.produced == 2
        await ws.send(ack("a1", "s1", 1))
        third, fourth = await recv_frame(ws), await recv_frame(ws)
        assert third == chunk("s1", 2, {"n": 2}, third)
        assert fourth == chunk("s1", 3, {"n": 3}, fourth)
        await ws.send(ack("a2", "s1", 3))
        fifth = await recv_frame(ws)
        assert fifth == chunk("s1", 4, {"n": 4}, fifth)
        assert await recv_frame(ws) == ok_response("s1", 5)
        # §6: a repeat of the id gets the kept final Response, not the items again.
        await ws.send(request("s1", "count", params={"upto": 5}, meta={"window": 2}))
        assert await recv_frame(ws) == ok_response("s1", 5)
        # The connection serves on, and nothing else was sent before this answer.
        await ws.send(request("p1", "ping"))
        assert await recv_frame(ws) == ok_response("p1", "pong")
    chunk_ids = {frame["id"] for frame in (first, second, third, fourth, fifth)}
    assert len(chunk_ids) == 5


async def test_a_cancel_mid_stream_ends_it_with_499(make_server: ServerFactory) -> None:
    state = await started(make_server)
    async with connect(ws_url(state.server)) as ws:
        await greeting_of(ws)
        await ws.send(request("s2", "count", params={"upto": 1_000_000}, meta={"window": 1}))
        first = await recv_frame(ws)
        assert first == chunk("s2", 0, {"n": 0}, first)
        await ws.send(cancel("e1", "s2"))
        answer = await recv_frame(ws)
        assert answer == error_response("s2", 499, answer)
        await wait_for(state.items.closed.wait())  # the generator's finally ran
        await ws.send(request("p1", "ping"))
        assert await recv_frame(ws) == ok_response("p1", "pong")
    assert state.items.produced == 1  # README: no item is asked for beyond the window


async def test_a_stream_asked_without_a_window_gets_the_array_over_websocket(
    make_server: ServerFactory,
) -> None:
    state = await started(make_server)
    async with connect(ws_url(state.server)) as ws:
        await greeting_of(ws)
        await ws.send(request("s3", "count", params={"upto": 3}))
        assert await recv_frame(ws) == ok_response("s3", [{"n": 0}, {"n": 1}, {"n": 2}])


async def test_a_clients_stream_request_carries_the_window_and_acks_what_it_consumed(
    make_raw_server: RawServerFactory,
) -> None:
    """The requester's side (Peer.stream) against a raw server that keeps to the window.

    The raw server sends a chunk only while fewer than `window` are unacknowledged, so the
    stream completes only if the client's acks (cumulative, possibly batched) keep coming.
    """
    recorder, url = await recording(make_raw_server)
    window, total = 4, 10
    got: list[Any] = []
    async with ProtocolClient(url, request_timeout=WAIT) as client:

        async def consume() -> None:
            async for item in client.stream("count", {"upto": total}, window=window, timeout=WAIT):
                got.append(item)

        consumer = asyncio.create_task(consume())
        asked = await recorder.next()
        rid = asked["id"]
        assert asked == {
            "id": rid,
            "type": "request",
            "command": "count",
            "params": {"upto": total},
            "meta": {"timeout": WAIT, "window": window},
        }
        acked = -1
        for seq in range(total):
            while seq - acked > window:  # the window is full: wait for an acknowledgement
                acknowledgement = await recorder.next()
                assert acknowledgement["name"] == "siyi.ack", acknowledgement
                acked = acknowledgement["data"]["seq"]
            await recorder.send(
                {
                    "id": f"k{seq}",
                    "type": "event",
                    "name": "siyi.chunk",
                    "data": {"id": rid, "seq": seq, "data": seq},
                }
            )
        await recorder.send(ok_response(rid, total))
        await wait_for(consumer)
        assert got == list(range(total))
    await wait_for(recorder.closed.wait())
    # Everything the client sent after its request: siyi.ack events, exact, seq increasing.
    assert recorder.log[0] == asked
    acks = recorder.log[1:]
    assert acks
    seqs = []
    for frame in acks:
        assert isinstance(frame["id"], str)
        assert frame["id"] not in (rid, "")
        seqs.append(frame["data"]["seq"])
        assert frame == {
            "id": frame["id"],
            "type": "event",
            "name": "siyi.ack",
            "data": {"id": rid, "seq": frame["data"]["seq"]},
        }
    assert all(type(seq) is int for seq in seqs)
    assert seqs == sorted(set(seqs))
    assert seqs[0] >= 0
    assert seqs[-1] < total
    assert len({frame["id"] for frame in acks}) == len(acks)


# §10 Streams over HTTP (NDJSON) ---------------------------------------------------------------


async def post_ndjson(
    server: ProtocolServer, packet: dict[str, Any]
) -> tuple[int, str, list[dict[str, Any]]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{http_url(server)}/general", data=json.dumps(packet), headers={"Accept": NDJSON}
        ) as reply,
    ):
        return reply.status, reply.headers.get("Content-Type", ""), await read_ndjson(reply)


async def test_ndjson_over_general_is_the_chunks_then_the_response(
    make_server: ServerFactory,
) -> None:
    state = await started(make_server)
    status, content_type, lines = await post_ndjson(
        state.server, {"id": "n1", "type": "request", "command": "count", "params": {"upto": 4}}
    )
    assert status == 200
    assert content_type == NDJSON
    assert len(lines) == 5
    *chunks, final = lines
    for seq, frame in enumerate(chunks):
        assert frame == chunk("n1", seq, {"n": seq}, frame)
    assert final == ok_response("n1", 4)


async def test_ndjson_of_a_handler_that_raises_after_two_items_ends_with_500(
    make_server: ServerFactory,
) -> None:
    state = await started(make_server)
    status, content_type, lines = await post_ndjson(
        state.server,
        {
            "id": "n2",
            "type": "request",
            "command": "count",
            "params": {"upto": 5, "fail_at": 2},
        },
    )
    assert (status, content_type) == (200, NDJSON)
    assert len(lines) == 3
    first, second, final = lines
    assert first == chunk("n2", 0, {"n": 0}, first)
    assert second == chunk("n2", 1, {"n": 1}, second)
    assert final == error_response("n2", 500, final)
    assert "the source went away" not in final["error"]  # no leaked detail (§3)


async def test_general_without_the_ndjson_accept_answers_one_array(
    make_server: ServerFactory,
) -> None:
    state = await started(make_server)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{http_url(state.server)}/general",
            data=json.dumps(
                {"id": "n3", "type": "request", "command": "count", "params": {"upto": 3}}
            ),
        ) as reply,
    ):
        body = await reply.read()
        assert reply.status == 200
        assert reply.headers.get("Content-Type", "").startswith("application/json")
        assert reply.headers.get(SESSION_HEADER)
    assert json.loads(body) == ok_response("n3", [{"n": 0}, {"n": 1}, {"n": 2}])


# §10 /about -----------------------------------------------------------------------------------


async def test_about_marks_the_streaming_command(make_server: ServerFactory) -> None:
    state = await started(make_server)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{http_url(state.server)}/about") as reply,
    ):
        assert reply.status == 200
        about = json.loads(await reply.read())
    commands = {command["name"]: command for command in about["commands"]}
    assert commands["count"]["stream"] is True
    assert commands["ping"].get("stream", False) is False
    assert commands["block"].get("stream", False) is False
