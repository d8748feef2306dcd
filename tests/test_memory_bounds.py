"""One peer can never make the server hold unbounded memory (PROTOCOL.md §4, "Bounded memory").

Each attack of issue 11 runs against a real server in its own process (`tests.memory_node`,
with low bounds so that the attack reaches them in a second), whose resident memory (VmRSS in
``/proc/<pid>/status``) is sampled before and throughout the attack. Its growth over the
baseline must stay under a stated bound, and meanwhile a second client keeps getting answers
within a second:

- events sent as fast as possible to a handler that does not take them: the server stops
  reading, the sender's writes block, and once the handler runs again every event is handled,
  in order;
- a client that sends requests and never reads: the server stops reading it once its outbox
  is full;
- a client that reads everything but asks for big answers with new ids: the at-most-once
  record stays under its byte bound, and a repeat of an id whose answer was let go gets 410
  and does not run again.

The fourth case, a broadcast that would overflow a non-reading client's outbox, runs in
process: that client is closed with 1013, its session resumes and replays what it missed.
Unit tests of `MemoryResponseCache`'s bounds end the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect

from siyi_sdk import GoneError, Response, StatusCode
from siyi_sdk.errors import error_for_response
from siyi_sdk.packets import SESSION_HEADER
from siyi_sdk.peer import DEFAULT_MAX_PENDING_EVENTS
from siyi_sdk.server.state import GONE_MESSAGE, MemoryResponseCache

from .conftest import (
    WAIT,
    ClientFactory,
    Inbox,
    Node,
    NodeFactory,
    ServerFactory,
    asking,
    bystander,
    drop_raw,
    greeting_of,
    wait_for,
    wait_until,
    ws_url,
)

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads a process's RSS from /proc (Linux)"
)


class Peak:
    """The highest RSS of a node seen while sampling (every 10 ms)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.baseline = node.rss()
        self.highest = self.baseline

    @property
    def growth(self) -> int:
        return self.highest - self.baseline

    def sample(self) -> None:
        self.highest = max(self.highest, self.node.rss())


@contextlib.asynccontextmanager
async def rss_peak(node: Node) -> AsyncIterator[Peak]:
    peak = Peak(node)

    async def sample() -> None:
        while True:
            peak.sample()
            await asyncio.sleep(0.01)  # a sampling period, not a wait for something

    sampler = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        peak.sample()


async def held_back(progress: Callable[[], int], total: int, quiet: float = 0.5) -> int:
    """Wait until a sender's progress stops short of `total` for `quiet` seconds.

    Returns:
        How far it got: its writes block because the server stopped reading.
    """
    async with asyncio.timeout(20):
        last, since = progress(), time.monotonic()
        while True:
            await asyncio.sleep(0.02)  # polling the sender's counter
            now = progress()
            assert now < total, "the sender was never held back: the server read everything"
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return now


async def raw_socket(http: aiohttp.ClientSession, url: str) -> tuple[Any, str]:
    """A raw WebSocket and its session key (the first frame is the session event)."""
    ws = await http.ws_connect(url, max_msg_size=0)
    greeting = json.loads((await ws.receive(timeout=WAIT)).data)
    assert greeting["name"] == "session"
    return ws, greeting["data"]["session"]


@contextlib.asynccontextmanager
async def flooder(url: str) -> AsyncIterator[ClientConnection]:
    """A raw WebSocket whose sends wait while its socket's buffer is full; cut at the end
    (a clean close would wait for a server that no longer reads it)."""
    async with connect(url, max_size=None, compression=None) as ws:
        await greeting_of(ws)
        try:
            yield ws
        finally:
            await drop_raw(ws)


# 1. Events faster than their handler ---------------------------------------------------------

EVENTS_BOUND = 40 * MiB
"""Server RSS growth allowed while 6,000 16-KB events (96 MB) are sent to a stalled handler
with `max_pending_events=200` (about 3 MB of events may wait; unbounded, all 96 MB would)."""


async def test_events_faster_than_the_handler_hold_the_sender_back(start_node: NodeFactory) -> None:
    node = await start_node(max_pending_events=200)
    count, pad = 6000, "x" * 16_000
    async with bystander(node) as other:
        await other.call("block")  # the event handler waits: events pile up
        async with flooder(node.url) as ws:
            sent = 0

            async def send_all() -> None:
                nonlocal sent
                for i in range(count):
                    data = {"seq": i, "pad": pad}
                    frame = {"id": f"e{i}", "type": "event", "name": "tick", "data": data}
                    await ws.send(json.dumps(frame))
                    sent = i + 1

            async with rss_peak(node) as peak, asking(other):
                sender = asyncio.create_task(send_all())
                reached = await held_back(lambda: sent, count)
                assert not sender.done()
                assert ws.transport.get_write_buffer_size() > 0  # it waits for the server
                assert (await other.call("events"))["handled"] == 0
            other.check()
            print(f"events: sender held back after {reached}; RSS +{peak.growth / MiB:.1f} MiB")
            assert peak.growth < EVENTS_BOUND, f"RSS grew by {peak.growth / MiB:.1f} MiB"

            # The handler runs again: every event arrives, once, in order.
            await other.call("release")
            await wait_for(sender, 30)
            async with asyncio.timeout(30):
                while (state := await other.call("events"))["handled"] < count:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # polling another process's counter
            assert state == {"handled": count, "out_of_order": 0}


# 2. A client that sends requests and never reads ---------------------------------------------

OUTBOX_BOUND = 48 * MiB
"""Server RSS growth allowed while a client that never reads sends 3,000 64-KB echo requests
(192 MB of answers), with `max_outbox_bytes=4 MiB` and an 8 MiB at-most-once record."""


async def test_a_client_that_never_reads_is_no_longer_read(start_node: NodeFactory) -> None:
    node = await start_node(max_outbox_bytes=4 * MiB, response_cache_max_bytes=8 * MiB)
    count, data = 3000, "x" * 64_000
    async with bystander(node) as other, flooder(node.url) as ws:  # it never reads again
        sent = 0

        async def send_all() -> None:
            nonlocal sent
            for i in range(count):
                params = {"data": data}
                frame = {"id": f"r{i}", "type": "request", "command": "echo", "params": params}
                await ws.send(json.dumps(frame))
                sent = i + 1

        async with rss_peak(node) as peak, asking(other):
            sender = asyncio.create_task(send_all())
            reached = await held_back(lambda: sent, count)
            assert not sender.done()
            assert ws.transport.get_write_buffer_size() > 0  # it waits for the server
            stats = await other.call("stats")
        other.check()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        print(
            f"never reads: held back after {reached} requests; outbox {stats['max_outbox']} "
            f"bytes; RSS +{peak.growth / MiB:.1f} MiB"
        )
        # What waits for it stops at the bound (give or take the answers read meanwhile; the
        # kernel's buffers, which grow as it fills them, hold the rest).
        assert stats["max_outbox"] <= 4 * MiB + 1 * MiB
        assert peak.growth < OUTBOX_BOUND, f"RSS grew by {peak.growth / MiB:.1f} MiB"


# 3. Big answers with new ids ---------------------------------------------------------------

CACHE_BOUND = 48 * MiB
"""Server RSS growth allowed while a client asks for 400 answers of 256 KB (100 MB) with new
ids and reads them all, with a `response_cache_max_bytes` of 8 MiB."""


async def test_big_answers_keep_the_at_most_once_record_bounded(start_node: NodeFactory) -> None:
    node = await start_node(response_cache_max_bytes=8 * MiB)
    count, size, window = 400, 256_000, 8
    async with bystander(node) as other, aiohttp.ClientSession() as http:
        ws, key = await raw_socket(http, node.url)

        def ask(request_id: str) -> str:
            return json.dumps(
                {"id": request_id, "type": "request", "command": "big", "params": {"size": size}}
            )

        async with rss_peak(node) as peak, asking(other):
            for i in range(window):
                await ws.send_str(ask(f"b{i}"))
            for i in range(count):
                answer = json.loads((await ws.receive(timeout=WAIT)).data)
                assert answer["code"] == 0
                assert len(answer["data"]) == size
                if i + window < count:
                    await ws.send_str(ask(f"b{i + window}"))
            stats = await other.call("stats")
        other.check()
        print(f"big answers: {stats}; RSS +{peak.growth / MiB:.1f} MiB")
        # (The record is the server's: the other client's answers are in it too.)
        assert stats["cache_bytes"] <= 8 * MiB
        assert stats["cache_markers"] >= count - 8 * MiB // size  # the big answers let go
        assert peak.growth < CACHE_BOUND, f"RSS grew by {peak.growth / MiB:.1f} MiB"

        # The first answer was let go: its repeat gets 410 and does not run again, on the
        # WebSocket as over HTTP (the same session).
        await ws.send_str(ask("b0"))
        gone = json.loads((await ws.receive(timeout=WAIT)).data)
        assert (gone["id"], gone["code"], gone["error"]) == ("b0", 410, GONE_MESSAGE)
        async with http.post(
            f"http://127.0.0.1:{node.port}/general",
            data=ask("b0"),
            headers={SESSION_HEADER: key},
        ) as reply:
            assert reply.status == 200
            assert (await reply.json())["code"] == StatusCode.GONE
        assert await other.call("runs", {"id": "b0"}) == 1
        # The last one is still kept: its repeat gets the answer itself, without a run.
        await ws.send_str(ask(f"b{count - 1}"))
        again = json.loads((await ws.receive(timeout=WAIT)).data)
        assert (again["code"], len(again["data"])) == (0, size)
        assert await other.call("runs", {"id": f"b{count - 1}"}) == 1
        await ws.close()


# 4. A broadcast that would overflow a non-reading client's outbox ------------------------


async def test_a_broadcast_that_would_overflow_the_outbox_closes_with_1013(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server(max_outbox_bytes=1 * MiB, heartbeat_interval=None)
    reader = await make_client(ws_url(server))
    inbox = Inbox()
    reader.on_event(inbox)
    payload = "x" * 100_000
    async with aiohttp.ClientSession() as http:
        ws, key = await raw_socket(http, ws_url(server))  # then reads nothing for a while
        await wait_until(lambda: len(server.connections) == 2)
        [stuck] = [c for c in server.connections if c.session == key]
        peer = stuck.peer
        assert peer is not None
        sent: list[int] = []
        highest = 0
        async with asyncio.timeout(30):
            while not peer.closed:
                i = len(sent)
                await server.broadcast_event("big", {"i": i, "p": payload})
                sent.append(i)
                highest = max(highest, peer.outbox_bytes)
                await inbox.wait_count(i + 1)  # the client that reads gets each one
        # Its outbox was bounded: the packet that would overflow it closed it.
        assert highest <= 1 * MiB
        overflowed = sent[-1]
        for i in range(overflowed + 1, overflowed + 4):  # more while it is away: buffered
            await server.broadcast_event("big", {"i": i, "p": payload})
            sent.append(i)
        await inbox.wait_count(len(sent))
        assert [e["i"] for e in inbox.data] == sent

        # It reads at last: what reached its socket, then the close frame with 1013.
        first: list[int] = []
        while True:
            msg = await ws.receive(timeout=WAIT)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            first.append(json.loads(msg.data)["data"]["i"])
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1013
        assert overflowed not in first

        # Its session stays: resuming with the key replays the rest, the overflowing packet
        # included, in order; nothing is lost, nothing comes twice.
        await wait_until(lambda: stuck.peer is None)
        assert not stuck.ended
        again = await http.ws_connect(ws_url(server), headers={SESSION_HEADER: key})
        greeting = json.loads((await again.receive(timeout=WAIT)).data)
        assert greeting["data"]["session"] == key
        assert greeting["data"]["resumed"] is True
        assert greeting["data"]["dropped"] == 0
        rest: list[int] = []
        while len(first) + len(rest) < len(sent):
            rest.append(json.loads((await again.receive(timeout=WAIT)).data)["data"]["i"])
        assert overflowed in rest
        assert first + rest == sent
        await again.close()


# The at-most-once record's bounds, unit by unit --------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Runner:
    """Runs requests through a cache, counting the runs of each id."""

    def __init__(self, cache: MemoryResponseCache) -> None:
        self.cache = cache
        self.runs: dict[str, int] = {}

    async def __call__(self, request_id: str, size: int = 10) -> Response:
        async def compute() -> Response:
            self.runs[request_id] = self.runs.get(request_id, 0) + 1
            return Response.success(request_id, "x" * size)

        return await self.cache.run_once(("session", request_id), compute)


async def test_past_max_entries_an_answer_is_let_go_for_a_410() -> None:
    run = Runner(MemoryResponseCache(ttl=60, max_entries=3, clock=Clock()))
    for i in range(5):
        await run(f"r{i}")
    assert (run.cache.answers, run.cache.markers) == (3, 2)
    for i in (0, 1):
        gone = await run(f"r{i}")
        assert (gone.id, gone.code, gone.error) == (f"r{i}", StatusCode.GONE, GONE_MESSAGE)
    kept = await run("r4")
    assert (kept.code, kept.data) == (0, "x" * 10)
    assert run.runs == {f"r{i}": 1 for i in range(5)}
    assert isinstance(error_for_response(gone), GoneError)


async def test_past_max_bytes_the_oldest_answers_are_let_go() -> None:
    run = Runner(MemoryResponseCache(ttl=60, max_bytes=10_000, clock=Clock()))
    for i in range(10):
        await run(f"r{i}", size=3000)
    assert run.cache.size <= 10_000
    assert run.cache.answers == 3  # three ~3,060-byte answers fit
    assert run.cache.markers == 7
    assert [(await run(f"r{i}")).code for i in range(10)] == [410] * 7 + [0] * 3
    # One answer over the bound by itself is not kept, but still runs only once.
    assert (await run("huge", size=20_000)).ok
    assert (await run("huge")).code == StatusCode.GONE
    assert set(run.runs.values()) == {1}


async def test_markers_expire_with_the_ttl_and_are_bounded_themselves() -> None:
    clock = Clock()
    run = Runner(MemoryResponseCache(ttl=10, max_entries=2, max_markers=3, clock=clock))
    for i in range(4):
        await run(f"r{i}")
    assert (run.cache.answers, run.cache.markers) == (2, 2)
    # Past the marker bound the oldest markers go: their ids may run again (as after the ttl).
    for i in range(4, 7):
        await run(f"r{i}")
    assert (run.cache.answers, run.cache.markers) == (2, 3)
    assert (await run("r0")).ok
    assert run.runs["r0"] == 2
    # Past the ttl, markers and answers alike are gone: the ids may run again.
    clock.now += 12
    assert (await run("r4")).ok
    assert run.runs["r4"] == 2
    assert (run.cache.answers, run.cache.markers) == (1, 0)
    assert len(run.cache) == 1


async def test_an_answer_kept_within_its_bounds_is_repeated_as_before() -> None:
    run = Runner(MemoryResponseCache(ttl=60, clock=Clock()))
    first = await run("same", size=100)
    again = await run("same")
    assert again == first
    assert run.runs == {"same": 1}
    assert (run.cache.answers, run.cache.markers) == (1, 0)


# The event bound on the client side: the same Peer --------------------------------------


async def test_the_client_bounds_the_events_it_has_not_handled(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    """The server sends events faster than the client's handler takes them: nothing is lost."""
    server = await make_server()
    client = await make_client(ws_url(server))
    release, done = asyncio.Event(), asyncio.Event()
    got: list[int] = []
    count = 3000  # more than the client's bound (1,000) waits unhandled

    async def slow(event: Any) -> None:
        await release.wait()
        got.append(event.data)
        if len(got) == count:
            done.set()

    client.on_event(slow)
    await wait_until(lambda: len(server.connections) == 1)
    [connection] = server.connections
    for i in range(count):
        await connection.send_event("tick", i)
    # The client reads until 1,000 wait (the first one is in the handler), then stops.
    peer = client._peer
    assert peer is not None
    await wait_until(lambda: peer._room is not None)  # its reader waits for room
    assert len(peer._events or ()) == DEFAULT_MAX_PENDING_EVENTS
    release.set()
    await wait_for(done.wait(), 30)
    assert got == list(range(count))
