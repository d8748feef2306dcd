"""The frame tap (`siyi_sdk.frames.FrameTap`): plain frames skip aiohttp's queue, nothing else.

The tap sits in front of aiohttp's real `WebSocketReader`. These tests feed both the same byte
streams, cut every way, and check that every message comes out once, whole and in order,
whichever of the two delivered it; then that both ends of a real connection use the tap, from
the connection's first byte.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import zlib
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType, web
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp.base_protocol import BaseProtocol

from siyi_sdk import ProtocolServer
from siyi_sdk.frames import FrameTap
from siyi_sdk.peer import Peer
from siyi_sdk.server.ws_endpoint import TappedResponse

from .conftest import (
    ClientFactory,
    RawServerFactory,
    ServerFactory,
    wait_for,
    wait_until,
    ws_url,
)

LIMIT = 70_000
"""The size limit of these tests: above 65,535, so frames of every length form fit under it."""

TEXT, BINARY, CONT, PING, PONG = 0x1, 0x2, 0x0, 0x9, 0xA


def frame(
    opcode: int, payload: bytes, *, masked: bool, fin: bool = True, rsv1: bool = False
) -> bytes:
    """One WebSocket frame, written by hand (RFC 6455 §5.2)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mask_bit = 0x80 if masked else 0
    size = len(payload)
    if size < 126:
        head = bytes([first, mask_bit | size])
    elif size < 65536:
        head = bytes([first, mask_bit | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, mask_bit | 127]) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Taker:
    """What the tap hands frames to: records them in the shared log."""

    frame_limit: int | None = LIMIT

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self.open = True

    def may_take(self) -> bool:
        return self.open

    def take_frame(self, text: str) -> None:
        self.log.append((WSMsgType.TEXT, text))


class Line:
    """A tap over a real aiohttp reader; `feed` also reads what reaches aiohttp's queue."""

    def __init__(self, *, masked: bool, compress: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.queue = WebSocketDataQueue(BaseProtocol(loop), 2**16, loop=loop)
        self.reader = WebSocketReader(self.queue, LIMIT + 1, compress=compress, decode_text=True)
        self.tap = FrameTap(self.reader, self.queue, masked=masked)
        self.log: list[tuple[Any, ...]] = []
        self.taker = Taker(self.log)
        self.tap.taker = self.taker
        self.failed: BaseException | None = None

    async def feed(self, chunk: bytes) -> None:
        self.tap.feed_data(chunk)
        while self.queue._buffer:
            try:
                message = await self.queue.read()
            except Exception as exc:  # what aiohttp's reader raised (then hands the client)
                self.failed = exc
                return
            self.log.append((message.type, message.data))
        if self.queue.exception() is not None:
            self.failed = self.queue.exception()


def messages_of(log: list[tuple[Any, ...]]) -> list[tuple[Any, Any]]:
    return [(kind, bytes(data) if isinstance(data, bytearray) else data) for kind, data in log]


def a_stream(masked: bool) -> tuple[bytes, list[tuple[Any, Any]]]:
    """Frames of every kind the tap must tell apart, and the messages they make."""
    big = ("x" * 300).encode()
    huge = ("y" * 66_000).encode()  # a 64-bit length
    parts = [
        (frame(TEXT, b'{"a": 1}', masked=masked), (WSMsgType.TEXT, '{"a": 1}')),
        (frame(PING, b"p1", masked=masked), (WSMsgType.PING, b"p1")),
        (frame(TEXT, big, masked=masked), (WSMsgType.TEXT, big.decode())),
        (
            frame(TEXT, "é".encode()[:1], masked=masked, fin=False)
            + frame(PONG, b"", masked=masked)
            + frame(CONT, "é".encode()[1:] + b"!", masked=masked),
            None,  # a fragmented message, a pong inside it: listed below
        ),
        (frame(BINARY, b"\x00\x01", masked=masked), (WSMsgType.BINARY, b"\x00\x01")),
        (frame(TEXT, huge, masked=masked), (WSMsgType.TEXT, huge.decode())),
        (frame(TEXT, b"", masked=masked), (WSMsgType.TEXT, "")),
        (frame(TEXT, "ünïcode".encode(), masked=masked), (WSMsgType.TEXT, "ünïcode")),
    ]
    expected: list[tuple[Any, Any]] = []
    for _, message in parts:
        if message is None:
            expected += [(WSMsgType.PONG, b""), (WSMsgType.TEXT, "é!")]
        else:
            expected.append(message)
    return b"".join(data for data, _ in parts), expected


async def test_plain_frames_of_one_read_are_taken_at_once() -> None:
    line = Line(masked=True)
    await line.feed(b"".join(frame(TEXT, f'"{i}"'.encode(), masked=True) for i in range(3)))
    assert line.log == [(WSMsgType.TEXT, '"0"'), (WSMsgType.TEXT, '"1"'), (WSMsgType.TEXT, '"2"')]
    assert line.tap.taken == 3
    assert not line.queue._buffer


@pytest.mark.parametrize("masked", [True, False], ids=["server", "client"])
async def test_a_stream_cut_anywhere_comes_out_whole_and_in_order(masked: bool) -> None:
    stream, expected = a_stream(masked)
    # Every cut in the short frames; a stride through the 66,000-byte one.
    cuts = [*range(1, 400), *range(400, len(stream), 997)]
    for cut in cuts:
        line = Line(masked=masked)
        await line.feed(stream[:cut])
        await line.feed(stream[cut:])
        assert line.failed is None
        assert messages_of(line.log) == expected, f"cut at {cut}"
    # Byte by byte, the hardest case for the tap's own bookkeeping of frame boundaries.
    line = Line(masked=masked)
    for i in range(len(stream) - 66_100):
        await line.feed(stream[i : i + 1])
    await line.feed(stream[len(stream) - 66_100 :])
    assert messages_of(line.log) == expected


@pytest.mark.parametrize("masked", [True, False], ids=["server", "client"])
async def test_random_streams_reads_and_pauses(masked: bool) -> None:
    rng = random.Random(1234)
    for _ in range(150):
        parts: list[bytes] = []
        expected: list[tuple[Any, Any]] = []
        for _ in range(rng.randint(1, 12)):
            kind = rng.random()
            if kind < 0.5:
                text = "".join(rng.choice("ab€{}") for _ in range(rng.choice((0, 5, 130, 700))))
                parts.append(frame(TEXT, text.encode(), masked=masked))
                expected.append((WSMsgType.TEXT, text))
            elif kind < 0.65:
                parts.append(frame(PING, b"x", masked=masked))
                expected.append((WSMsgType.PING, b"x"))
            elif kind < 0.8:
                pieces = [rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(2, 4))]
                parts.append(frame(BINARY, pieces[0], masked=masked, fin=False))
                for piece in pieces[1:-1]:
                    parts.append(frame(CONT, piece, masked=masked, fin=False))
                parts.append(frame(CONT, pieces[-1], masked=masked))
                expected.append((WSMsgType.BINARY, b"".join(pieces)))
            else:
                parts.append(frame(PONG, b"", masked=masked))
                expected.append((WSMsgType.PONG, b""))
        stream = b"".join(parts)
        line = Line(masked=masked)
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 900)
            line.taker.open = rng.random() < 0.7  # the peer may not take frames for a while
            await line.feed(stream[pos : pos + step])
            pos += step
        assert line.failed is None
        assert messages_of(line.log) == expected


async def test_a_frame_of_exactly_the_limit_is_taken_one_more_byte_is_aiohttps() -> None:
    line = Line(masked=True)
    await line.feed(frame(TEXT, b"a" * LIMIT, masked=True))
    assert line.tap.taken == 1
    await line.feed(frame(TEXT, b"a" * (LIMIT + 1), masked=True))
    assert line.tap.taken == 1
    assert getattr(line.failed, "code", None) == 1009  # MESSAGE_TOO_BIG: the peer closes so


async def test_bad_utf8_is_left_to_aiohttp_which_refuses_it() -> None:
    line = Line(masked=True)
    await line.feed(frame(TEXT, b'"ok"', masked=True) + frame(TEXT, b"\xff\xfe", masked=True))
    assert line.log == [(WSMsgType.TEXT, '"ok"')]
    assert line.failed is not None  # aiohttp's reader fails it: the peer closes with 1007
    await line.feed(frame(TEXT, b'"after"', masked=True))
    assert line.tap.taken == 1  # once aiohttp's reader failed, the tap takes nothing more


async def test_a_compressed_frame_is_left_to_aiohttp() -> None:
    compressor = zlib.compressobj(wbits=-15)
    body = compressor.compress(b'{"z": 1}') + compressor.flush(zlib.Z_SYNC_FLUSH)
    line = Line(masked=True, compress=True)
    await line.feed(frame(TEXT, body[:-4], masked=True, rsv1=True) + frame(TEXT, b"1", masked=True))
    assert messages_of(line.log) == [(WSMsgType.TEXT, '{"z": 1}'), (WSMsgType.TEXT, "1")]
    assert line.tap.taken == 0  # the plain frame came after one for aiohttp: it followed it


async def test_a_frame_masked_the_wrong_way_is_left_to_aiohttp() -> None:
    line = Line(masked=True)  # a server's side: a client's unmasked frame is not plain
    await line.feed(frame(TEXT, b'"x"', masked=False))
    assert line.tap.taken == 0
    assert messages_of(line.log) == [(WSMsgType.TEXT, '"x"')]  # aiohttp's own answer to it


async def test_frames_wait_while_aiohttp_holds_one() -> None:
    line = Line(masked=False)
    line.tap.feed_data(frame(PING, b"", masked=False) + frame(TEXT, b'"1"', masked=False))
    line.tap.feed_data(frame(TEXT, b'"2"', masked=False))  # the ping is still unread
    assert line.tap.taken == 0
    assert len(line.queue._buffer) == 3


# Over real sockets --------------------------------------------------------------------------


async def test_both_ends_of_a_connection_take_their_frames_from_the_tap(
    server: ProtocolServer, make_client: ClientFactory
) -> None:
    @server.command("echo")
    def echo(connection: Any, params: dict[str, Any]) -> Any:
        return params

    got: list[Any] = []
    arrived = asyncio.Event()
    client = await make_client(ws_url(server))

    def on_event(event: Any) -> None:
        got.append(event.data)
        arrived.set()

    client.on_event(on_event)
    results = await asyncio.gather(*(client.send_request("echo", {"n": i}) for i in range(50)))
    assert [r.data for r in results] == [{"n": i} for i in range(50)]
    [connection] = server.connections
    await connection.send_event("hello", 1)
    await wait_for(arrived.wait())
    assert got == [1]
    peer = client._peer
    assert peer is not None
    assert connection.peer is not None
    client_tap = peer._ws.frame_tap  # type: ignore[attr-defined]
    server_tap = connection.peer._ws.frame_tap  # type: ignore[attr-defined]
    assert client_tap.taker is peer
    assert server_tap.taker is connection.peer
    assert client_tap.taken >= 50  # the answers
    assert server_tap.taken >= 1  # the requests (their reads: some may hold several)


async def handshake(
    port: int, after: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a WebSocket by hand; `after` goes in the same write as the upgrade request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        + after
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def read_packets(reader: asyncio.StreamReader, count: int) -> list[dict[str, Any]]:
    """`count` packets from a server's (unmasked, unfragmented text) frames."""
    packets: list[dict[str, Any]] = []
    while len(packets) < count:
        first, second = await reader.readexactly(2)
        assert first == 0x81
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2), "big")
        packets.append(orjson.loads(await reader.readexactly(size)))
    return packets


def request(rid: str) -> bytes:
    return frame(
        TEXT,
        orjson.dumps({"id": rid, "type": "request", "command": "echo", "params": {"id": rid}}),
        masked=True,
    )


async def test_frames_sent_with_the_upgrade_request_are_read_in_step(
    make_server: ServerFactory,
) -> None:
    server = await make_server()

    @server.command("echo")
    def echo(connection: Any, params: dict[str, Any]) -> Any:
        return params

    # Two requests in the upgrade's own write, the second cut: the tap follows from byte one.
    second = request("r2")
    reader, writer = await wait_for(handshake(server.port, request("r1") + second[:5]))
    writer.write(second[5:] + request("r3"))
    packets = await wait_for(read_packets(reader, 4))
    assert packets[0]["name"] == "session"
    assert sorted(p["id"] for p in packets[1:]) == ["r1", "r2", "r3"]
    assert all(p["data"] == {"id": p["id"]} for p in packets[1:])
    writer.close()


async def test_a_request_cut_between_reads_is_answered(server: ProtocolServer) -> None:
    @server.command("echo")
    def echo(connection: Any, params: dict[str, Any]) -> Any:
        return params

    reader, writer = await wait_for(handshake(server.port))
    assert (await wait_for(read_packets(reader, 1)))[0]["name"] == "session"
    [connection] = server.connections
    assert connection.peer is not None
    tap = connection.peer._ws.frame_tap  # type: ignore[attr-defined]
    whole = request("cut") + request("next")
    for cut in (1, 3, 9):  # inside the header, inside the mask key, inside the payload
        writer.write(whole[:cut])
        await wait_until(lambda: bool(tap._head or tap._left))  # the server read the start
        writer.write(whole[cut:])
        packets = await wait_for(read_packets(reader, 2))
        assert sorted(p["id"] for p in packets) == ["cut", "next"]
        # The request that followed in the same read was taken by the tap again.
        await wait_until(lambda: not tap._head and not tap._left)
    writer.close()


async def test_a_compressed_connection_leaves_every_frame_to_aiohttp(
    server: ProtocolServer,
) -> None:
    @server.command("echo")
    def echo(connection: Any, params: dict[str, Any]) -> Any:
        return params

    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server), compress=15) as ws:
        assert (await wait_for(ws.receive_json()))["name"] == "session"
        await ws.send_json({"id": "z", "type": "request", "command": "echo", "params": {"a": 1}})
        answer = await wait_for(ws.receive_json())
        assert answer["data"] == {"a": 1}
        [connection] = server.connections
        assert connection.peer is not None
        tap = connection.peer._ws.frame_tap  # type: ignore[attr-defined]
        assert tap.taker is None  # retired: the peer writes through aiohttp's compressor
        assert tap.taken == 0


async def test_a_frame_the_peer_fails_on_closes_that_connection_with_1011(
    make_raw_server: RawServerFactory,
) -> None:
    """A bug in handling a tapped frame ends its connection, as it would end the reader."""

    def broken(request: Any) -> bytes:
        raise RuntimeError("a bug")

    taps: list[FrameTap | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = TappedResponse(autoping=False, autoclose=False)
        await ws.prepare(request)
        taps.append(ws.frame_tap)
        transport = request.transport
        assert transport is not None
        peer = Peer(ws, on_request=broken, on_event=no_events, transport=transport)
        await peer.run()
        return ws

    url = await make_raw_server(handler)
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_str('{"id": "1", "type": "request", "command": "x"}')
        closed = await wait_for(ws.receive())
        assert closed.type is WSMsgType.CLOSE
        assert closed.data == 1011
    [tap] = taps
    assert tap is not None
    assert tap.taken == 1  # the tap's path, not the reader's


async def no_events(event: Any) -> None:
    return None
