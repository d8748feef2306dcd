"""A session's mailbox: where packets wait while its peer is away, and how they reach it.

`Connection`, the server's handle of one peer's session, is a `Mailbox`: the bounded buffer of
encoded packets (the oldest dropped first), the polls of ``GET /events`` that take from it,
the WebSocket attached now, and the replay of the buffer down it when the peer comes back
(PROTOCOL.md §7). What is sent to the session, and how, is `Connection`'s.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..errors import ConnectionClosedError, NotConnectedError
from ..peer import Peer

__all__ = ["Mailbox"]


class Mailbox:
    """The buffer of one session and the WebSocket its packets go down (see the module).

    Attributes:
        peer: the WebSocket attached now, if any.
        close_code: the close code of its last WebSocket, once one has closed.
        dropped: packets dropped from the buffer since the last replay (oldest first).
        ended: True once the session has ended.
    """

    def __init__(self, buffer_size: int) -> None:
        self.peer: Peer | None = None
        self.close_code: int | None = None
        self.dropped = 0
        self.ended = False
        # Made when first needed, as are the Event and the outbox: a server holds thousands of
        # idle sessions, and an empty deque or Event costs ~760 bytes (its first block) each.
        self._buffer: deque[tuple[str, bytes]] | None = None
        self._buffer_size = buffer_size
        self._arrived: asyncio.Event | None = None
        self._replaying = False

    def direct_peer(self) -> Peer | None:
        """The WebSocket a packet goes straight down now: attached, open, not being replayed to.

        None while there is none, or while a peer that came back is being replayed to: a
        packet then waits in the buffer.
        """
        peer = self.peer
        if peer is not None and not peer.closed and not self._replaying:
            return peer
        return None

    @property
    def buffer_limit(self) -> int:
        """Packets the session keeps while its peer is away (the oldest go first)."""
        return self._buffer_size

    @buffer_limit.setter
    def buffer_limit(self, size: int) -> None:
        self._buffer_size = size
        buf = self._buffer
        while buf and len(buf) > size:
            buf.popleft()
            self.dropped += 1

    @property
    def buffered(self) -> int:
        """Packets waiting in the session's buffer."""
        return len(self._buffer) if self._buffer else 0

    def buffer(self, packet_id: str, frame: bytes) -> None:
        """Keep an encoded packet for the peer's return; the oldest goes when full."""
        if self.ended:
            return
        # Not while a peer that came back is being replayed to: what waits is on its way to a
        # connected peer, whose session event already said how many were dropped.
        buf = self._buffer
        if buf is None:
            buf = self._buffer = deque()
        while not self._replaying and buf and len(buf) >= self._buffer_size:
            buf.popleft()
            self.dropped += 1
        buf.append((packet_id, frame))
        if self._arrived is not None:
            self._arrived.set()

    # Replay and polling ----------------------------------------------------------------------

    async def take(self, after: str | None) -> list[bytes]:
        """What a poll of ``/events`` returns.

        Args:
            after: the id of the last packet the peer handled: it and everything before it
                are dropped, the rest returned and kept until acknowledged. None: return
                everything and drop it.
        """
        buf = self._buffer
        if buf is None:
            if self._arrived is not None:
                self._arrived.clear()
            return []
        if after is None:
            frames = [frame for _, frame in buf]
            buf.clear()
        else:
            if any(pid == after for pid, _ in buf):
                while buf and buf.popleft()[0] != after:
                    pass
            frames = [frame for _, frame in buf]
        if not buf and self._arrived is not None:
            self._arrived.clear()
        return frames

    def wake(self) -> None:
        """Make every poll waiting in `wait_for_packets` return now (the server is stopping)."""
        if self._arrived is not None:
            self._arrived.set()

    async def wait_for_packets(self, timeout: float) -> None:
        """Return when the buffer has something, or after `timeout` seconds."""
        if self._buffer:
            return
        arrived = self._arrived
        if arrived is None:
            arrived = self._arrived = asyncio.Event()
        else:
            arrived.clear()
        try:
            async with asyncio.timeout(timeout):
                await arrived.wait()
        except TimeoutError:
            pass

    def attach(self, peer: Peer) -> Peer | None:
        """Make `peer` the session's WebSocket; packets wait in the buffer until `replay`.

        Returns:
            The WebSocket it replaces, if one was still open (the caller closes it).
        """
        previous = self.peer
        self.peer = peer
        self._replaying = True
        return previous if previous is not None and not previous.closed else None

    def detach(self, peer: Peer) -> bool:
        """Forget `peer` if it is still the session's WebSocket; True if it was."""
        if self.peer is not peer:
            return False
        self.peer = None
        self.close_code = peer.close_code
        self._replaying = False
        return True

    async def replay(self, peer: Peer) -> bool:
        """Send every buffered packet down `peer` in order; then packets go to it directly.

        Packets addressed to the session meanwhile join the end of the buffer, so nothing
        overtakes what was buffered before it.

        Returns:
            False if `peer` dropped (or was replaced) first: the rest stays buffered.
        """
        buf = self._buffer
        while buf:
            if self.peer is not peer:
                return False
            packet_id, frame = buf.popleft()
            try:
                await peer.send_raw(frame)
            except (NotConnectedError, ConnectionClosedError):
                buf.appendleft((packet_id, frame))
                return False
        if self.peer is not peer:
            return False
        # No await between the empty check and this: nothing can slip in between.
        if self._arrived is not None:
            self._arrived.clear()
        self._replaying = False
        return True

    def end(self) -> None:
        """End the session: drop the buffer, wake pollers."""
        self.ended = True
        self._buffer = None
        if self._arrived is not None:
            self._arrived.set()
