"""WebSocket text frames written by hand, many in one write (RFC 6455 §5.2).

A `Peer` batches the frames it can send at once (a server's answers to what it just read, a
client's requests made in one turn of the loop) and writes them together: one system call and
one TCP segment for a burst, where aiohttp's `send_frame` makes one per frame. Only plain text
frames are written this way: a connection with per-message compression keeps aiohttp's writer.

A client's frames are masked (§5.3: a fresh random key per frame); a server's are not.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

__all__ = ["text_frames"]

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


def _header(first: int, second: int, size: int) -> bytes:
    if size < 126:
        return _HEADER_SHORT(first, second | size)
    if size < 65536:
        return _HEADER_MEDIUM(first, second | 126, size)
    return _HEADER_LONG(first, second | 127, size)


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
