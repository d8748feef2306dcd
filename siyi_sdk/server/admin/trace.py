"""A live trace of one session's packets, on demand (the dashboard's operators start it).

Off by default, and free while off. While on, a middleware is in the server's chain, so the
server's requests leave its flat path (about 20–40 µs more each, on every session) until the
trace stops: a trace is for looking at one peer for a while, not to be left on. What it keeps
is bounded (`Trace.limit` entries, oldest dropped) and holds each packet's kind, name, id,
direction and size; its params or data only when the operator asked for bodies (`bodies`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson

from ...packets import Event, Request, Response, encode
from ...pipeline import CallNext

if TYPE_CHECKING:
    from ..connection import Connection, ServerCall
    from ..dispatch import Dispatcher

__all__ = ["Trace"]

logger = logging.getLogger(__name__)

BODY_LIMIT = 2000
"""Characters of a body kept at most (longer ones are cut)."""


def _size(packet: Request | Event | Response) -> int:
    try:
        return len(encode(packet))
    except TypeError:
        return 0


def _body(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= BODY_LIMIT else text[:BODY_LIMIT] + "…"


class Trace:
    """The trace of one session at a time (see the module).

    Args:
        dispatcher: whose middleware chain the trace joins while on.
        limit: entries kept at most.
    """

    def __init__(self, dispatcher: Dispatcher, limit: int = 500) -> None:
        self.dispatcher = dispatcher
        self.limit = limit
        self.session: Connection | None = None
        self.tag = ""
        """The tag of the traced session ("" while off)."""
        self.bodies = False
        self.entries: deque[dict[str, Any]] = deque(maxlen=limit)
        self.sequence = 0
        """Entries recorded since the trace started (the page asks for those past its own)."""
        # One bound method, kept: the chain takes out the very object it was given.
        self._hook = self._middleware

    @property
    def on(self) -> bool:
        """True while a session is traced."""
        return self.session is not None

    def start(self, session: Connection, bodies: bool) -> None:
        """Trace `session` from now on (ending the trace of any other)."""
        if self.session is None:
            self.dispatcher.chain.add(self._hook)
        self.session = session
        self.tag = session.log_session
        self.bodies = bodies
        self.entries.clear()
        self.sequence = 0

    def stop(self) -> None:
        """End the trace: the middleware leaves the chain, the flat path is back."""
        if self.session is not None:
            self.dispatcher.chain.remove(self._hook)
        self.session = None
        self.tag = ""

    def since(self, sequence: int) -> list[dict[str, Any]]:
        """The entries recorded after the one numbered `sequence` that are still kept."""
        return [entry for entry in self.entries if entry["seq"] > sequence]

    def _add(self, direction: str, packet: Request | Event | Response, note: str = "") -> None:
        self.sequence += 1
        entry: dict[str, Any] = {
            "seq": self.sequence,
            "time": round(time.time(), 3),
            "dir": direction,
            "kind": type(packet).__name__.lower(),
            "id": packet.id or "",
            "size": _size(packet),
        }
        if isinstance(packet, Request):
            entry["name"] = packet.command
            if self.bodies and packet.params is not None:
                entry["body"] = _body(packet.params)
        elif isinstance(packet, Event):
            entry["name"] = packet.name
            if self.bodies and packet.data is not None:
                entry["body"] = _body(packet.data)
        else:
            entry["name"] = f"{packet.status} {packet.code}"
            if self.bodies:
                entry["body"] = _body(packet.data if packet.status == "ok" else packet.error)
        if note:
            entry["note"] = note
        self.entries.append(entry)

    async def _middleware(
        self, call: ServerCall, call_next: CallNext[ServerCall]
    ) -> Response | None:
        session = self.session
        if session is None:
            return await call_next(call)
        mine = call.connection is session
        broadcast = call.connection is None and call.direction == "out"
        if not mine and not broadcast:
            return await call_next(call)
        self._add(call.direction, call.packet, "broadcast" if broadcast else "")
        answer = await call_next(call)
        if isinstance(answer, Response) and call.is_request:
            # The answer goes the other way: the server's answer out, a peer's answer in.
            self._add("out" if call.direction == "in" else "in", answer)
        return answer
