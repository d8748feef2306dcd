"""The outbox of a session's WebSocket: frames for a peer that does not read fast enough.

A `Connection` sends a frame straight down its WebSocket when the peer can take it at once;
otherwise into its `Outbox`, from which one writer task sends the frames in order, so that a
slow peer never makes a sender (a broadcast) wait. The queued bytes count with the peer's other
unsent bytes (`Peer.max_outbox_bytes`): a frame that would overflow them closes the peer with
1013 (its session stays resumable, PROTOCOL.md §4), and what was queued goes back to the
session's buffer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from ..errors import ConnectionClosedError, NotConnectedError
from ..logs import call_extra
from ..peer import Peer

__all__ = ["Keep", "Outbox"]

# The logger of `Connection`, whose outbox this is: what a user configures for it covers this.
logger = logging.getLogger("siyi_sdk.server.connection")

_TRY_AGAIN_LATER = 1013
"""The close code for a peer whose outbox a packet would overflow (PROTOCOL.md §4)."""

_OVERFLOW_CLOSE_TIMEOUT = 10.0
"""Seconds such a peer gets to read up to the close frame before its connection is cut."""

Keep = Callable[[str, bytes], Awaitable[None]]
"""``keep(packet_id, frame)``: where a packet goes when the peer cannot take it (its session)."""


class Outbox:
    """The frames queued for a session's WebSocket, and the one task that sends them in order.

    A session has one once it first needs one; its frames are for one WebSocket at a time
    (`queue` for a newer one starts afresh, and the earlier one's writer sees to what it
    holds). The queue itself is made when needed and dropped once sent.
    """

    __slots__ = ("_frames", "_peer", "_writer")

    def __init__(self) -> None:
        self._frames: deque[tuple[str, bytes]] | None = None
        self._peer: Peer | None = None  # the WebSocket `_frames` are for
        self._writer: asyncio.Task[None] | None = None

    def __bool__(self) -> bool:
        """True while frames wait to be handed to a socket."""
        return bool(self._frames)

    def queue(
        self, peer: Peer, packet_id: str, frame: bytes, *, keep: Keep, owner: object
    ) -> list[tuple[str, bytes]] | None:
        """Queue a frame for `peer`, sent in order by one writer task.

        The queued bytes count in the peer's `unsent`, with its answers on their way out.
        When this frame would take them over the peer's `max_outbox_bytes`, the peer is
        closed with 1013 (its session stays resumable) and nothing is queued.

        Args:
            peer: the session's WebSocket.
            packet_id: the packet's id.
            frame: the encoded packet.
            keep: where the writer puts what a drop leaves unsent (the session's buffer).
            owner: the session, named in the log.

        Returns:
            None once queued; on overflow, what must wait in the buffer instead, in order:
            the frames queued and not yet handed to the socket, then this one.
        """
        outbox = self._frames
        if outbox is not None and self._peer is not peer:
            outbox = None  # an earlier WebSocket's: its own writer sees to it
        size = len(frame)
        if peer.outbox_bytes + size > peer.max_outbox_bytes:
            waiting = list(outbox) if outbox else []
            if outbox:
                peer.release_bytes(sum(len(queued) for _, queued in outbox))
                outbox.clear()  # its writer stops after the frame it is sending
            self._frames = self._peer = self._writer = None
            logger.info(
                "%r: a packet of %d bytes would overflow the outbox (%d of %d bytes): "
                "closing with 1013",
                owner,
                size,
                peer.outbox_bytes,
                peer.max_outbox_bytes,
                extra=call_extra(session=peer.session, transport="websocket"),
            )
            peer.shut(
                _TRY_AGAIN_LATER,
                "outbox full: resume the session to receive the rest",
                _OVERFLOW_CLOSE_TIMEOUT,
            )
            waiting.append((packet_id, frame))
            return waiting
        if outbox is None:
            outbox = self._frames = deque()
            self._peer = peer
            self._writer = None
        outbox.append((packet_id, frame))
        peer.hold_bytes(size)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write(peer, outbox, keep))
        return None

    async def _write(self, peer: Peer, outbox: deque[tuple[str, bytes]], keep: Keep) -> None:
        task = asyncio.current_task()
        try:
            while outbox:
                packet_id, frame = outbox.popleft()
                try:
                    await peer.send_raw(frame)
                except (NotConnectedError, ConnectionClosedError):
                    # Dropped: what was still queued waits in the buffer for its return.
                    rest = list(outbox)
                    outbox.clear()
                    peer.release_bytes(sum(len(queued) for _, queued in rest))
                    if outbox is self._frames:
                        await keep(packet_id, frame)
                    # else an overflow (or a newer WebSocket) took over: this frame had
                    # reached the socket, which delivers it or not with what it holds.
                    for item in rest:
                        await keep(*item)
                    return
                finally:
                    peer.release_bytes(len(frame))
        finally:
            if self._writer is task:
                self._writer = None
            if self._frames is outbox and not outbox:
                self._frames = self._peer = None  # made again when next needed
