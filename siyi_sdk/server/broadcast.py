"""Sending to many peers at once: broadcasts of events and requests (PROTOCOL.md §6-§7).

`Broadcaster` is what the backplane calls back into (`BackplaneHost`): the peers of this
process a broadcast reaches, and how one encoded packet is handed to each without waiting for
a slow one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import NotConnectedError
from ..packets import Event, Response, encode, kept
from .backplane import Backplane
from .connection import Connection, ServerCall
from .dispatch import Dispatcher
from .sessions import SessionRegistry

__all__ = ["Broadcaster"]


class Broadcaster:
    """Broadcasts through the backplane, and this process's side of them.

    Args:
        sessions: the sessions of this process.
        backplane: where broadcasts cross processes.
        dispatcher: whose middleware chain sees each broadcast once (direction "out").
        session_ended: runs the session-end handlers (the backplane calls it).
    """

    def __init__(
        self,
        sessions: SessionRegistry,
        backplane: Backplane,
        dispatcher: Dispatcher,
        session_ended: Callable[[Connection], None],
    ) -> None:
        self.sessions = sessions
        self.backplane = backplane
        self.dispatcher = dispatcher
        self.session_ended = session_ended

    def local_targets(self, exclude: Iterable[str]) -> list[Connection]:
        """The sessions a broadcast reaches in this process (`exclude`: session keys).

        Attached peers, and with the in-memory backplane detached ones that take packets
        (they get them on return; a shared backplane buffers for those itself).
        """
        skip = set(exclude)
        away_too = not self.backplane.shared
        return [
            c
            for c in self.sessions
            if c.session not in skip and (c.is_connected or (away_too and c.receives))
        ]

    async def deliver_all(
        self, targets: Iterable[Connection], packet_id: str, frame: bytes
    ) -> None:
        """Deliver one encoded packet to each of `targets`, never waiting for a slow peer."""
        for connection in targets:
            # One after the other, no task per client (that doubled the time of a broadcast):
            # deliver() writes straight to the socket, or queues behind a peer that does not
            # read, or buffers for one that is away. It never waits for a peer.
            with contextlib.suppress(NotConnectedError):
                await connection.deliver(packet_id, frame)

    async def ask_all(
        self,
        targets: list[Connection],
        command: str,
        params: dict[str, Any] | None,
        timeout: float | None,
    ) -> list[Response | Exception]:
        """Send a request to each of `targets` at once; their answers (or errors), in order."""
        results = await asyncio.gather(
            *(c.send_request(command, params, timeout=timeout) for c in targets),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation: do not swallow it
        return results  # type: ignore[return-value]

    async def broadcast_event(
        self, name: str, data: Any = None, exclude: Iterable[Connection] | None = None
    ) -> None:
        """See `ProtocolServer.broadcast_event`."""
        event = Event(name=name, data=data)
        skip = [c.session for c in exclude] if exclude else ()
        if not self.dispatcher.chain:
            await self._broadcast_event(event, skip)
            return

        async def send(call: ServerCall) -> None:
            assert isinstance(call.packet, Event)
            await self._broadcast_event(call.packet, skip)

        await self.dispatcher.outgoing(event, None, send)

    async def _broadcast_event(self, event: Event, skip: Iterable[str]) -> None:
        frame = kept(encode(event))  # one copy, shared by every buffer that keeps it
        await self.backplane.broadcast_event(event.id, frame, skip)

    async def broadcast_request(
        self,
        command: str,
        params: dict[str, Any] | None,
        timeout: float | None,
        exclude: Iterable[Connection] | None = None,
    ) -> dict[Connection, Response | Exception]:
        """See `ProtocolServer.broadcast_request`."""
        skip = [c.session for c in exclude] if exclude else ()
        return await self.backplane.broadcast_request(command, params, timeout, skip)
