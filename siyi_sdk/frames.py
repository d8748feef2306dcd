"""WebSocket text frames written by hand, many in one write, and read without a hop (RFC 6455 §5.2).

A `Peer` batches the frames it can send at once (a server's answers to what it just read, a
client's requests made in one turn of the loop) and writes them together: one system call and
one TCP segment for a burst, where aiohttp's `send_frame` makes one per frame. Only plain text
frames are written this way: a connection with per-message compression keeps aiohttp's writer.

A client's frames are masked (§5.3: a fresh random key per frame); a server's are not.

Reading: `FrameTap` sits in front of aiohttp's frame reader. aiohttp hands every frame it reads
to a queue, and the task reading the WebSocket wakes up for it on the next turn of the event
loop: one trip through the loop (a system call, a task step) per frame read, on both ends of a
round trip. While a `Peer` waits for its next frame and nothing is queued, the tap gives it the
plain frames of each read (final, uncompressed text frames within the size limit) at once,
from the protocol's own callback; everything else (control frames, fragments, compression, a
frame cut by the read, bad UTF-8, a peer that may not read now) goes to aiohttp's reader as
before. On a sequential round trip this took siyi's p50 on 3.13 from 1.21-1.23x raw
aiohttp's to 1.08-1.18x in alternating runs (benchmarks/PROFILE.md, fourth pass).
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, cast

__all__ = ["FrameTaker", "FrameTap", "Tapped", "text_frame", "text_frames", "writable"]

logger = logging.getLogger(__name__)

_HEADER_SHORT = struct.Struct("!BB").pack
_HEADER_MEDIUM = struct.Struct("!BBH").pack
_HEADER_LONG = struct.Struct("!BBQ").pack
_FIN_TEXT = 0x81
_MASKED = 0x80


def _mask_python(key: bytes, data: bytearray) -> None:
    """XOR `data` in place with the 4-byte `key` repeated (one big-integer operation)."""
    size = len(data)
    if not size:
        return
    stream = (key * ((size >> 2) + 1))[:size]
    data[:] = (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        size, "little"
    )


def _find_mask() -> Callable[[bytes, bytearray], None]:
    # aiohttp's own masking is compiled (Cython) and several times faster than ours; it is not
    # public API, so a release that moves it leaves us on the pure-Python one, not broken.
    try:
        from aiohttp._websocket.helpers import websocket_mask
    except ImportError:  # pragma: no cover - depends on aiohttp's internals
        return _mask_python
    mask: Callable[[bytes, bytearray], None] = websocket_mask
    return mask


_mask = _find_mask()
_random_key = random.Random().getrandbits  # masking keys need not be secret, only fresh


_TRANSPORT_API = ("write", "is_closing", "get_write_buffer_size", "get_write_buffer_limits")


def writable(transport: object) -> asyncio.WriteTransport | None:
    """`transport` if frames can be written to it directly, else None.

    An asyncio transport, or one with the same API that does not inherit asyncio's classes
    (uvloop's): without this check by what it does, a server or client on uvloop would
    write through aiohttp's writer one frame per system call and read without the tap.
    """
    if isinstance(transport, asyncio.WriteTransport):
        return transport
    if transport is not None and all(hasattr(transport, name) for name in _TRANSPORT_API):
        return cast(asyncio.WriteTransport, transport)
    return None


def _header(first: int, second: int, size: int) -> bytes:
    if size < 126:
        return _HEADER_SHORT(first, second | size)
    if size < 65536:
        return _HEADER_MEDIUM(first, second | 126, size)
    return _HEADER_LONG(first, second | 127, size)


def text_frame(payload: bytes, *, masked: bool) -> bytes:
    """`payload` as one final text frame: `text_frames` of one, without its list and loop."""
    if not masked:
        return _header(_FIN_TEXT, 0, len(payload)) + payload
    key = _random_key(32).to_bytes(4, "big")
    body = bytearray(payload)
    _mask(key, body)
    return _header(_FIN_TEXT, _MASKED, len(payload)) + key + body


def text_frames(payloads: list[bytes], *, masked: bool) -> bytes:
    """Each payload as one final text frame, all of them in one buffer.

    Args:
        payloads: the UTF-8 payloads (encoded packets), in order.
        masked: mask them, as a client must.

    Returns:
        The frames, ready to be written to the transport.
    """
    parts: list[bytes | bytearray] = []
    append = parts.append
    if masked:
        for payload in payloads:
            key = _random_key(32).to_bytes(4, "big")
            body = bytearray(payload)
            _mask(key, body)
            append(_header(_FIN_TEXT, _MASKED, len(payload)))
            append(key)
            append(body)
    else:
        for payload in payloads:
            append(_header(_FIN_TEXT, 0, len(payload)))
            append(payload)
    return b"".join(parts)


class FrameTaker(Protocol):
    """What a `FrameTap` hands frames to (a `Peer`)."""

    frame_limit: int | None
    """The largest payload taken, in bytes (None: no limit)."""

    def may_take(self) -> bool:
        """True while a frame may be handled now: the reader waits for one and has room."""

    def take_frame(self, text: str) -> None:
        """Handle one text frame's payload, as the reader would have."""


class FrameTap:
    """The payload parser of an upgraded aiohttp connection, in front of aiohttp's reader.

    aiohttp's protocol calls ``feed_data(data)`` for every read. Without a taker attached, or
    while the taker may not take a frame, or while aiohttp's reader holds frames or part of
    one, the bytes go to aiohttp's reader as they are. Otherwise each plain frame at the
    start of the read is given to the taker at once; the rest of the read (from its first
    frame that is not plain) goes to aiohttp's reader. The tap follows the frame boundaries
    of everything it passes on, so it knows when aiohttp's reader is between messages again.

    It must see a connection's bytes from the first one (see `Tapped`).

    Args:
        reader: aiohttp's `WebSocketReader` of the connection.
        queue: the queue that reader fills (aiohttp's `WebSocketDataQueue`).
        masked: True on a server (a client's frames are masked), False on a client.
    """

    __slots__ = (
        "_broken",
        "_fragmented",
        "_head",
        "_left",
        "_mask_bit",
        "_queue",
        "_reader",
        "taken",
        "taker",
    )

    def __init__(self, reader: Any, queue: Any, *, masked: bool) -> None:
        self._reader = reader
        self._queue = queue
        self._mask_bit = _MASKED if masked else 0
        self.taker: FrameTaker | None = None
        """Where plain frames go (None: everything goes to aiohttp's reader)."""
        self.taken = 0
        """Frames handed to the taker so far."""
        self._head = b""  # the start of a frame header cut by the read
        self._left = 0  # payload bytes of the current frame still to come
        self._fragmented = False  # inside a message sent in several frames
        self._broken = False  # retired, or aiohttp's reader failed: it decides from now on

    def retire(self) -> None:
        """Take no frame from now on: every byte goes to aiohttp's reader, unexamined."""
        self.taker = None
        self._broken = True

    def feed_eof(self) -> Any:
        """Pass the end of the stream to aiohttp's reader."""
        return self._reader.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        """Take one read off the socket: what aiohttp's reader returns for it."""
        taker = self.taker
        if (
            taker is None
            or type(data) is not bytes
            or self._left
            or self._head
            or self._fragmented
            or self._broken
            or self._queue._buffer  # frames wait for the reader: they go first
        ):
            return self._pass(data)
        size = len(data)
        pos = 0
        limit = taker.frame_limit
        while pos < size and taker.may_take():
            # A final, uncompressed text frame (0x81) masked as this side expects, whole.
            if (
                size - pos < 2
                or data[pos] != _FIN_TEXT
                or data[pos + 1] & _MASKED != self._mask_bit
            ):
                break
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length >= 126:
                wide = 2 if length == 126 else 8
                if size - start < wide:
                    break
                length = int.from_bytes(data[start : start + wide], "big")
                start += wide
            if self._mask_bit:
                key = data[start : start + 4]
                start += 4
            end = start + length
            if end > size or (limit is not None and length > limit):
                break  # cut by the read, or over the limit: aiohttp's reader says what to do
            try:
                if self._mask_bit:
                    body = bytearray(memoryview(data)[start:end])
                    _mask(key, body)
                    text = body.decode()
                else:
                    text = data[start:end].decode()
            except UnicodeDecodeError:
                break  # aiohttp's reader closes with 1007 (RFC 6455 §8.1)
            pos = end
            self.taken += 1
            taker.take_frame(text)
            if self._queue._buffer:
                break  # the taker put something in the reader's way (it closed): stop here
        if pos == size:
            return False, b""
        return self._pass(data[pos:] if pos else data)

    def _pass(self, data: bytes) -> tuple[bool, bytes]:
        """Give `data` to aiohttp's reader, following the frame boundaries it crosses."""
        if not self._broken and data:
            self._follow(data)
        outcome: tuple[bool, bytes] = self._reader.feed_data(data)
        if outcome[0]:
            self._broken = True
        return outcome

    def _follow(self, data: bytes) -> None:
        size = len(data)
        pos = 0
        while pos < size:
            if self._left:
                step = min(self._left, size - pos)
                self._left -= step
                pos += step
                continue
            head = self._head + data[pos : pos + 14 - len(self._head)]
            need = _header_size(head)
            if need is None or len(head) < need:
                self._head = head  # the rest of the read is the start of a header
                return
            pos += need - len(self._head)
            self._head = b""
            first, second = head[0], head[1]
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(head[2:4], "big")
            elif length == 127:
                length = int.from_bytes(head[2:10], "big")
            if first & 0x0F < 8:  # a data frame or a continuation; control frames interleave
                self._fragmented = not first & 0x80
            self._left = length


def _header_size(head: bytes) -> int | None:
    """The size of the frame header `head` starts with; None when under two bytes."""
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + 4 if head[1] & _MASKED else size


class Tapped:
    """Mixin for aiohttp's WebSocket classes: their connection's bytes pass a `FrameTap`.

    aiohttp makes a connection's `WebSocketReader`, sets it as ``self._parser`` and then gives
    ``self._parser`` to the protocol (``set_parser``), which feeds it what was read after the
    handshake, then every read. Here ``_parser`` hands the protocol a tap around the reader,
    so the tap sees every byte from the first one. aiohttp does so since 3.14.4; a release
    that makes its reader in a local variable (3.11 to 3.14.3) never calls the setter, and
    the connection simply has no tap (`frame_tap` is None): everything goes through aiohttp's
    queue.
    """

    tap_masked: ClassVar[bool] = False
    """True on a server's side (the frames it reads are masked)."""
    frame_tap: FrameTap | None = None
    """The tap of this connection, once aiohttp made its reader."""
    _tapped_reader: Any = None

    @property
    def _parser(self) -> Any:  # aiohttp reads it once, to hand it to the protocol
        return self.frame_tap if self.frame_tap is not None else self._tapped_reader

    @_parser.setter
    def _parser(self, reader: Any) -> None:
        self._tapped_reader = reader
        queue = getattr(self, "_reader", None)
        if reader is None or not hasattr(queue, "_buffer"):
            self.frame_tap = None  # released (closed), or an aiohttp this does not know
            return
        self.frame_tap = FrameTap(reader, queue, masked=self.tap_masked)
