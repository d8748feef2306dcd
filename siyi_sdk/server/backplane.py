"""The backplane: everything of a server's state and traffic that may cross processes.

One `ProtocolServer` process serves one core. To serve more, run several processes (on one
machine or many) behind a load balancer and give each the same shared backplane; a client may
then reach any of them, and each process behaves as if the clients of all were its own:

- **sessions** (PROTOCOL.md §7): a session key opened on one node is known to every node; its
  replay buffer is shared, so a client that moves from node A's WebSocket to node B's
  ``GET /events`` gets what was buffered for it;
- **the at-most-once response cache** (§6): a retried request reaching another node is answered
  from the first run instead of running again;
- **routing**: `send_event` / `send_request` through a `Connection` whose WebSocket is attached
  to another node go there, and the answer comes back;
- **fan-out**: `broadcast_event` and `broadcast_request` reach the clients of every node.

Two implementations: `MemoryBackplane` (the default: one process, nothing shared, no cost) and
`RedisBackplane` (in `siyi_sdk.server.redis`, the optional ``redis`` extra).

A backplane serves one server; the server calls it at the points below and nowhere else.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ..packets import Response
from .connection import Connection
from .state import MemoryResponseCache, ResponseCache

if TYPE_CHECKING:
    from .sessions import SessionRegistry

__all__ = ["Backplane", "BackplaneHost", "MemoryBackplane"]

logger = logging.getLogger(__name__)


class BackplaneHost(Protocol):
    """What a backplane needs of the server it serves (a `ProtocolServer` is one)."""

    @property
    def sessions(self) -> SessionRegistry:
        """The server's local session handles."""

    def local_targets(self, exclude: Iterable[str]) -> list[Connection]:
        """The sessions a broadcast reaches in this process (`exclude`: session keys)."""

    async def deliver_all(
        self, targets: Iterable[Connection], packet_id: str, frame: bytes
    ) -> None:
        """Deliver one encoded packet to each of `targets`, never waiting for a slow peer."""

    async def ask_all(
        self,
        targets: list[Connection],
        command: str,
        params: dict[str, Any] | None,
        timeout: float | None,
    ) -> list[Response | Exception]:
        """Send a request to each of `targets` at once; their answers, in order."""

    def session_ended(self, connection: Connection) -> None:
        """Run the server's session-end handlers for `connection`."""


class Backplane(ABC):
    """Where a server keeps what may cross processes; one instance serves one server.

    The server calls `start` before it listens and `stop` after its last connection closed.
    Every other method is called by the server at one point of its work, documented on each.
    """

    shared: bool = False
    """True when other processes see this state (a broadcast then goes through the backplane
    to every node, and sessions are looked up there when this process does not know them)."""

    node_id: str = "local"
    """This process's name among the nodes (random for shared backplanes)."""

    round_trip: float | None = None
    """Seconds the latest round trip to a shared backplane's service took (None: not
    measured); read by `siyi_sdk.metrics`."""

    outages: int = 0
    """Times a shared backplane's service became unreachable; read by `siyi_sdk.metrics`."""

    _host: BackplaneHost | None = None

    def bind(self, host: BackplaneHost) -> None:
        """Serve `host` (the server calls this when it is built with this backplane).

        Raises:
            ValueError: the backplane already serves another server.
        """
        if self._host is not None and self._host is not host:
            raise ValueError("a backplane serves one server: give each server its own")
        self._host = host

    async def start(self) -> None:
        """Connect (the server is about to listen).

        Must not fail for an unreachable service: log, keep retrying in the background, and
        let the server serve its own clients meanwhile.
        """

    async def stop(self) -> None:
        """Release what `start` took. Idempotent."""

    @abstractmethod
    def response_cache(self, ttl: float) -> ResponseCache:
        """The at-most-once cache the server should use (§6)."""

    @abstractmethod
    def session_factory(self) -> Callable[..., Connection]:
        """What the registry builds a session handle with (``Connection``'s keywords)."""

    async def save_session(self, connection: Connection) -> None:
        """A session was opened here: make it known to every node."""

    async def touch_session(self, connection: Connection) -> None:
        """The peer was active here (an HTTP call, a detach): the session's idle clock restarts."""

    async def claim(self, connection: Connection) -> int:
        """`connection` got a WebSocket in this process (already attached locally).

        Makes this node the one packets for the session are routed to, has any other node
        holding an older WebSocket of the session close it with 4001 (takeover), and returns
        the number of packets dropped from the buffer while the peer was away (the `session`
        event's ``dropped``), resetting it.
        """
        dropped = connection.dropped
        connection.dropped = 0
        return dropped

    async def release(self, connection: Connection) -> None:
        """`connection`'s WebSocket here closed (already detached locally)."""

    async def end_session(self, connection: Connection) -> None:
        """The session ended for good (clean close, expiry, eviction): forget it everywhere."""

    async def retire(self, connection: Connection) -> bool:
        """This process forgets an idle handle (expiry, `max_sessions`).

        Returns:
            True if the session lives on elsewhere (only the local handle goes); False if it
            ended (the server then runs its session-end handlers).
        """
        return False

    async def broadcast_event(self, packet_id: str, frame: bytes, exclude: Iterable[str]) -> None:
        """Deliver one encoded event to every client of every node except `exclude` (keys)."""
        assert self._host is not None
        host = self._host
        await host.deliver_all(host.local_targets(exclude), packet_id, frame)

    async def broadcast_request(
        self,
        command: str,
        params: dict[str, Any] | None,
        timeout: float | None,
        exclude: Iterable[str],
    ) -> dict[Connection, Response | Exception]:
        """Ask every client of every node except `exclude` (keys); every answer, per client."""
        assert self._host is not None
        targets = self._host.local_targets(exclude)
        answers = await self._host.ask_all(targets, command, params, timeout)
        return dict(zip(targets, answers, strict=True))

    async def find_session(self, key: str) -> Connection | None:
        """The handle of a live session by its key, opened here or on another node."""
        assert self._host is not None
        return self._host.sessions.get(key)

    def forward_response(self, connection: Connection, response: Response) -> bool:
        """A Response arrived here that no request of this process waits for.

        Returns:
            True if it was taken care of (sent on to the node that asked).
        """
        return False


class MemoryBackplane(Backplane):
    """The default: one process, everything in its memory, nothing shared.

    Sessions, buffers and the response cache are plain Python objects, and broadcasts go
    straight to this process's clients. It costs nothing on the hot path.
    """

    def response_cache(self, ttl: float) -> ResponseCache:
        """See `Backplane.response_cache`."""
        return MemoryResponseCache(ttl=ttl)

    def session_factory(self) -> Callable[..., Connection]:
        """See `Backplane.session_factory`."""
        return Connection
