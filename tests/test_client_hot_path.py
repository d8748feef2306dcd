"""The client's hot path (issue 12): requests made in one turn of the loop leave in one write,
as masked frames the server reads like aiohttp's own; one timer keeps every request's limit."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid

import pydantic
import pytest
from aiohttp import web

from siyi_sdk import (
    CallNext,
    ClientCall,
    Connection,
    NotConnectedError,
    ProtocolClient,
    ProtocolServer,
    RequestTimeoutError,
    Response,
)
from siyi_sdk.calls import within
from siyi_sdk.expiry import Expired, Expiry
from siyi_sdk.frames import text_frame, text_frames
from tests.conftest import RawServerFactory, greet


def _read_frames(data: bytes) -> list[tuple[bool, bytes]]:
    """Decode text frames by RFC 6455 §5.2 (written here, not taken from aiohttp)."""
    frames = []
    at = 0
    while at < len(data):
        first, second = data[at], data[at + 1]
        assert first == 0x81  # FIN, text
        masked = bool(second & 0x80)
        size = second & 0x7F
        at += 2
        if size == 126:
            (size,) = struct.unpack_from("!H", data, at)
            at += 2
        elif size == 127:
            (size,) = struct.unpack_from("!Q", data, at)
            at += 8
        key = b""
        if masked:
            key = data[at : at + 4]
            at += 4
        body = data[at : at + size]
        at += size
        if masked:
            body = bytes(b ^ key[i % 4] for i, b in enumerate(body))
        frames.append((masked, body))
    return frames


@pytest.mark.parametrize("masked", [True, False])
def test_text_frames_carry_every_length_class(masked: bool) -> None:
    payloads = [b"", b"x", b"a" * 125, b"b" * 126, b"c" * 65535, b"d" * 65536, b'{"id":"1"}']
    frames = _read_frames(text_frames(payloads, masked=masked))
    assert frames == [(masked, p) for p in payloads]
    # One frame on its own (`text_frame`, a lone request or answer) is the same frame.
    alone = [_read_frames(text_frame(p, masked=masked))[0] for p in payloads]
    assert alone == frames


def test_masked_frames_use_a_fresh_key_each() -> None:
    data = text_frames([b"same payload"] * 8, masked=True)
    keys = {data[i * 18 + 2 : i * 18 + 6] for i in range(8)}  # 2 header + 4 key + 12 body
    assert len(keys) > 1


async def test_a_burst_of_requests_in_one_turn_reaches_the_server_whole_and_in_order() -> None:
    seen: list[int] = []
    server = ProtocolServer(port=0, heartbeat_interval=None)

    @server.command("echo")
    def echo(connection: Connection, params: dict[str, object]) -> object:
        seen.append(int(str(params["n"])))
        return params

    async with server, ProtocolClient(f"ws://127.0.0.1:{server.port}") as client:
        big = "z" * 70_000  # a 64-bit length frame among short ones
        calls = [
            client.send_request("echo", {"n": n, "pad": big if n % 50 == 7 else ""})
            for n in range(200)
        ]
        answers = await asyncio.gather(*calls)
        assert [a.data["n"] for a in answers] == list(range(200))
        assert answers[7].data["pad"] == big
        assert seen == list(range(200))  # one connection: handled in the order sent


async def test_requests_time_out_on_their_own_limits_with_one_timer() -> None:
    server = ProtocolServer(port=0, heartbeat_interval=None)
    release = asyncio.Event()

    @server.command("hang")
    async def hang(connection: Connection, params: dict[str, object]) -> None:
        await release.wait()

    @server.command("quick")
    def quick(connection: Connection, params: dict[str, object]) -> str:
        return "ok"

    async with server, ProtocolClient(f"ws://127.0.0.1:{server.port}") as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        slow = asyncio.ensure_future(client.send_request("hang", timeout=0.4))
        fast = asyncio.ensure_future(client.send_request("hang", timeout=0.05))
        answered = await client.send_request("quick", timeout=0.01)
        assert answered.data == "ok"  # answered before its (shorter) limit: no timeout
        with pytest.raises(RequestTimeoutError):
            await fast
        assert 0.05 <= loop.time() - started < 0.35
        assert not slow.done()
        with pytest.raises(RequestTimeoutError):
            await slow
        assert loop.time() - started >= 0.4
        release.set()


async def test_expiry_fails_only_what_is_still_waiting_in_deadline_order() -> None:
    loop = asyncio.get_running_loop()
    expiry = Expiry()
    failed: list[str] = []
    futures: dict[str, asyncio.Future[None]] = {}

    def note(future: asyncio.Future[None]) -> None:
        if isinstance(future.exception(), Expired):
            failed.append(next(k for k, v in futures.items() if v is future))

    for name, timeout in (("c", 0.06), ("a", 0.02), ("answered", 0.01), ("b", 0.04)):
        future: asyncio.Future[None] = loop.create_future()
        future.add_done_callback(note)
        futures[name] = future
        expiry.add(future, timeout)
    futures["answered"].set_result(None)
    await asyncio.wait(futures.values())
    assert failed == ["a", "b", "c"]
    assert expiry.size == 0  # all forgotten, no timer left


async def test_expiry_forgets_answered_futures_so_memory_follows_what_waits() -> None:
    loop = asyncio.get_running_loop()
    expiry = Expiry()
    waiting = [loop.create_future() for _ in range(10)]
    for future in waiting:
        expiry.add(future, 60)
    for _ in range(100_000):  # answered at once, as on a busy client
        future = loop.create_future()
        expiry.add(future, 60)
        future.set_result(None)
    assert expiry.size <= 2048  # not 100,010
    expiry.clear()
    assert expiry.size == 0
    assert not any(future.done() for future in waiting)


async def test_the_direct_call_sends_what_the_request_model_would(
    make_raw_server: RawServerFactory,
) -> None:
    """`send_request` without middleware skips the Request model: the frames must not differ."""
    frames: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def answering(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await greet(ws)
        async for msg in ws:
            packet = json.loads(msg.data)
            frames.put_nowait(packet)
            await ws.send_str(json.dumps(Response.success(packet["id"], data=1).model_dump()))
        return ws

    url = await make_raw_server(answering)
    recorded: list[str] = []

    async def record(call: ClientCall, call_next: CallNext[ClientCall]) -> Response | None:
        recorded.append(call.packet.id)
        return await call_next(call)

    async with ProtocolClient(url) as direct, ProtocolClient(url) as chained:
        chained.use(record)  # through send_packet and its Request model
        for client in (direct, chained):
            await client.send_request("no_params")
            await client.send_request("with_params", {"a": [1, 2]}, timeout=5)
            with within(0.5):  # inside a handler's budget: the smaller limit goes out
                await client.send_request("budgeted", timeout=30)
        sent = [frames.get_nowait() for _ in range(6)]
    assert len(recorded) == 3
    for made_directly, through_the_model in zip(sent[:3], sent[3:], strict=True):
        assert uuid.UUID(str(made_directly["id"])).version == 4
        assert made_directly.keys() == through_the_model.keys()
        for key in made_directly.keys() - {"id", "meta"}:
            assert made_directly[key] == through_the_model[key]
    assert "params" not in sent[0]
    assert sent[0]["meta"] == {"timeout": 30.0}  # the client's request_timeout
    assert sent[1]["params"] == {"a": [1, 2]}
    assert sent[1]["meta"] == {"timeout": 5}
    for budgeted in (sent[2], sent[5]):
        meta = budgeted["meta"]
        assert isinstance(meta, dict)
        assert 0 < meta["timeout"] <= 0.5


async def test_the_direct_call_fails_as_the_request_model_would(server: ProtocolServer) -> None:
    async with ProtocolClient(f"ws://127.0.0.1:{server.port}") as client:
        with pytest.raises(pydantic.ValidationError):
            await client.send_request("", {})
        with pytest.raises(pydantic.ValidationError):
            await client.send_request("echo", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(NotConnectedError):
        await client.send_request("echo")
