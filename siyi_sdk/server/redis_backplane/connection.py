"""`SharedConnection`: a session handle whose buffer is in Redis, its peer on any node.

It decides, for each packet, whether this process sends it down the session's WebSocket,
holds it while Redis answers (an attach or a detach under way), or hands it to the backplane
to route (to the node holding the WebSocket, else into the shared buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, Protocol

from ...errors import BackplaneUnavailableError, ConnectionClosedError, NotConnectedError
from ...peer import Peer
from ..connection import Connection
from .messages import Numbered

__all__ = ["SharedBuffers", "SharedConnection"]


class SharedBuffers(Protocol):
    """What a `SharedConnection` needs of its backplane (a `RedisBackplane` is one)."""

    async def route(
        self, connection: Connection, packet_id: str, frame: bytes, seq: int | None = None
    ) -> None:
        """Send a packet to the node holding the session's WebSocket, else buffer it."""

    async def take(self, connection: Connection, after: str | None) -> list[bytes]:
        """What a poll of ``/events`` returns, from the shared buffer."""

    async def pop(self, connection: Connection, count: int) -> list[Numbered]:
        """Take up to `count` packets off the front of the shared buffer."""

    async def push_back(self, connection: Connection, entries: list[Numbered]) -> None:
        """Return packets a replay could not send to the shared buffer."""

    async def start_poll(self, connection: Connection) -> bool:
        """This node long-polls the session now; True if packets are already waiting."""

    async def end_poll(self, connection: Connection) -> None:
        """This node's long poll of the session is over."""

    async def expect_answer(
        self, connection: Connection, request_id: str, timeout: float | None
    ) -> None:
        """Note that this node waits for the answer to `request_id`."""


class SharedConnection(Connection):
    """A session handle whose buffer lives in Redis and whose peer may be on another node.

    What it does differently from `Connection`: a packet for a peer that has no WebSocket in
    this process is routed by the backplane (to the node holding it, else into the shared
    buffer); polls and replays read the shared buffer.
    """

    def __init__(self, *, backplane: SharedBuffers, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._backplane = backplane
        # Packets carry their number in Redis's order (`seq`) when they have one, so that
        # a packet buffered late still takes its place in the shared buffer.
        # Packets for a peer that is being replayed to: they follow the shared buffer.
        self._late: deque[Numbered] = deque()
        # Broadcasts are numbered (see the package docstring). From the moment this process
        # asks Redis to route the session here until Redis confirms it no longer does, this
        # process delivers (or buffers) the broadcasts numbered after `claim_seq`; the others
        # went to the shared buffer. Packets whose fate depends on an answer still on its way
        # from Redis wait in `_held`, with their kind: b(roadcast) or d(irect).
        self.here = False
        self.claim_seq: int | None = None
        self._releasing = False
        self._held: list[tuple[str, int | None, str, bytes]] = []
        self._claim_done: asyncio.Event | None = None
        self.refreshed = 0.0
        """When the session's clock in Redis was last restarted (`time.monotonic`)."""

    @property
    def buffered(self) -> int:
        """Packets held in this process for the peer (the shared buffer is in Redis)."""
        return len(self._late)

    async def deliver(self, packet_id: str, frame: bytes, seq: int | None = None) -> None:
        """See `Connection.deliver`; `seq` is the packet's number when Redis gave it one."""
        peer = self.peer
        if self.ended or (peer is not None and not peer.closed and not self._replaying):
            await super().deliver(packet_id, frame)
        else:
            await self.keep(seq, packet_id, frame)

    async def _keep(self, packet_id: str, frame: bytes) -> None:
        await self.keep(None, packet_id, frame)

    async def keep(self, seq: int | None, packet_id: str, frame: bytes) -> None:
        """A packet the peer cannot take now: after the replay, held, or routed."""
        peer = self.peer
        if peer is not None and not peer.closed:
            if not self._replaying:
                # The replay ended while this packet waited (a request waits for Redis to note
                # which node asks): nothing is queued before it, it goes down the socket.
                await super().deliver(packet_id, frame)
                return
            self._late.append((seq, packet_id, frame))  # being replayed to: after the buffer
            if self._arrived is not None:
                self._arrived.set()
            return
        if self.here:
            # Its WebSocket here just closed: Redis routes to this process until `release`
            # says otherwise, which then buffers this in order with the broadcasts held.
            self._held.append(("d", seq, packet_id, frame))
            return
        await self._backplane.route(self, packet_id, frame, seq)

    async def _expect_answer(self, request_id: str, timeout: float | None) -> None:
        await self._backplane.expect_answer(self, request_id, timeout)

    def on_broadcast(self, seq: int, packet_id: str, frame: bytes) -> bool:
        """Whether a numbered broadcast is this process's to deliver now (else held or not)."""
        if not self.here:
            return False
        if self.claim_seq is None or self._releasing:
            self._held.append(("b", seq, packet_id, frame))
            return False
        return seq > self.claim_seq

    def claiming(self) -> None:
        """Redis is being asked to route the session to this process."""
        self.here = True
        self.claim_seq = None
        self._held.clear()
        self._claim_done = asyncio.Event()

    def claimed(self, seq: int) -> None:
        """The attach is recorded in Redis at broadcast number `seq`."""
        self.claim_seq = seq
        held, self._held = self._held, []
        self._late.extend(
            (n, pid, frame) for kind, n, pid, frame in held if kind == "d" or (n or 0) > seq
        )
        if self._claim_done is not None:
            self._claim_done.set()

    async def releasing(self, timeout: float) -> None:
        """Redis is about to be told the peer left this process (after any claim finished)."""
        if self._claim_done is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._claim_done.wait()
        self._releasing = True

    def released(self, seq: int) -> list[Numbered]:
        """Redis routed here up to number `seq`: what this process must still buffer."""
        claimed = self.claim_seq if self.claim_seq is not None else seq
        held, self._held = self._held, []
        self.here = False
        self._releasing = False
        late = list(self._late)
        self._late.clear()
        return late + [
            (n, pid, frame)
            for kind, n, pid, frame in held
            if kind == "d" or claimed < (n or 0) <= seq
        ]

    async def take(self, after: str | None) -> list[bytes]:
        """See `Connection.take` (the shared buffer, atomically)."""
        return await self._backplane.take(self, after)

    async def wait_for_packets(self, timeout: float) -> None:
        """See `Connection.wait_for_packets` (woken by whichever node buffers a packet)."""
        arrived = self._arrived
        if arrived is None:
            arrived = self._arrived = asyncio.Event()
        else:
            arrived.clear()
        try:
            if await self._backplane.start_poll(self):
                return
        except BackplaneUnavailableError:
            pass  # only this node can wake it now
        try:
            async with asyncio.timeout(timeout):
                await arrived.wait()
        except TimeoutError:
            pass
        finally:
            await self._backplane.end_poll(self)

    async def replay(self, peer: Peer) -> bool:
        """See `Connection.replay`: the shared buffer first, then what came meanwhile."""
        while True:
            if self.peer is not peer:
                return False
            entries = await self._backplane.pop(self, 100)
            if not entries:
                break
            for i, (_, _, frame) in enumerate(entries):
                try:
                    await peer.send_raw(frame)
                except (NotConnectedError, ConnectionClosedError):
                    await self._backplane.push_back(self, entries[i:])
                    return False
        late = self._late
        while late:
            if self.peer is not peer:
                return False
            numbered = late.popleft()
            try:
                await peer.send_raw(numbered[2])
            except (NotConnectedError, ConnectionClosedError):
                late.appendleft(numbered)
                return False
        if self.peer is not peer:
            return False
        self._replaying = False
        return True

    def end(self) -> None:
        """See `Connection.end`: this process's handle only.

        `RedisBackplane.end_session` forgets the shared state.
        """
        self._late.clear()
        self._held.clear()
        super().end()
