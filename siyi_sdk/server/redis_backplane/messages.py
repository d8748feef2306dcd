"""How the Redis backplane lays out what it keeps in Redis and what nodes tell each other.

A buffered packet is one sorted-set member, ``<len(id)>:<id><frame>`` (`entry`), scored by its
number. A message between nodes is one letter, a JSON header line and, for packets, the
encoded packet as it goes on the wire (`message`): encoded once, never re-encoded on the way.
`Gather` collects the answers other nodes send back for one broadcast request.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from ...errors import (
    ConnectionClosedError,
    NotConnectedError,
    RequestTimeoutError,
    SiyiError,
)
from ...packets import Response, parse_message
from ..owners import owner_key

__all__ = [
    "REMOTE_ERRORS",
    "Gather",
    "Numbered",
    "entry",
    "message",
    "principal_json",
    "split_entry",
]


Numbered = tuple[int | None, str, bytes]
"""(the packet's number in Redis's order if it has one, its id, its encoded frame)"""


def entry(packet_id: str, frame: bytes) -> bytes:
    """A buffered packet: ``<len(id)>:<id><frame>``, so the id is found without parsing."""
    pid = packet_id.encode()
    return b"%d:%s%s" % (len(pid), pid, frame)


def split_entry(entry: bytes) -> tuple[str, bytes]:
    """A buffered packet's id and frame (see `entry`)."""
    colon = entry.index(b":")
    end = colon + 1 + int(entry[:colon])
    return entry[colon + 1 : end].decode(), entry[end:]


def message(op: bytes, header: dict[str, Any], payload: bytes = b"") -> bytes:
    """A message to other nodes: its letter, its JSON header line, its payload."""
    return op + orjson.dumps(header) + b"\n" + payload


def principal_json(principal: Any) -> bytes:
    """A session's principal as it crosses nodes."""
    # The principal crosses nodes as its owner key (JSON), so ownership compares alike on all.
    return owner_key(principal)


REMOTE_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (RequestTimeoutError, ConnectionClosedError, NotConnectedError, SiyiError)
}
"""The errors a node sends back for a client's failed answer, rebuilt by name."""


class Gather:
    """The answers other nodes send back for one broadcast request."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, Any, Response | Exception]] = []
        self._expected: int | None = None  # answers may come before the count is known
        self._answered = 0
        self._done = asyncio.Event()

    def expect(self, nodes: int) -> None:
        """The number of nodes that will answer (known once the request was published)."""
        self._expected = nodes
        if self._answered >= nodes:
            self._done.set()

    def add(self, rows: list[list[Any]]) -> None:
        """One node's answers: ``[session key, principal, kind, payload]`` per client."""
        for key, principal, kind, payload in rows:
            answer: Response | Exception
            if kind == "r":
                parsed = parse_message(payload)
                assert isinstance(parsed, Response)
                answer = parsed
            else:
                answer = REMOTE_ERRORS.get(kind, SiyiError)(payload)
            self.rows.append((key, principal, answer))
        self._answered += 1
        if self._expected is not None and self._answered >= self._expected:
            self._done.set()

    async def wait(self, timeout: float) -> list[tuple[str, Any, Response | Exception]]:
        """Every answer, once each node answered or `timeout` seconds passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._done.wait()
        return self.rows
