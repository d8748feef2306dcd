"""Connection: the server-side handle of one client, given to every handler."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Literal

from ..errors import NotConnectedError
from ..packets import Event, Request, Response
from ..peer import Peer

__all__ = ["Connection"]

_ids = itertools.count(1)


class Connection:
    """The server's handle of one client: a WebSocket, or the caller of one HTTP request.

    Handlers receive it as their first argument. Connections compare by identity, so they can
    be kept in sets and used as dict keys (as `broadcast_request` does).

    Attributes:
        id: a number unique within this server process.
        remote_address: the client's ``(host, port)``, when known.
        transport: ``"websocket"`` or ``"http"``.
        headers: the HTTP headers of the upgrade request (WebSocket) or of the HTTP request.
    """

    def __init__(
        self,
        *,
        transport: Literal["websocket", "http"],
        remote_address: tuple[str, int] | None,
        headers: Mapping[str, str],
        request_timeout: float | None,
        peer: Peer | None = None,
    ) -> None:
        self.id = next(_ids)
        self.transport = transport
        self.remote_address = remote_address
        self.headers = headers
        self.request_timeout = request_timeout
        self.peer = peer

    def __repr__(self) -> str:
        state = "open" if self.is_connected else "closed"
        return f"<Connection #{self.id} {self.transport} {self.remote_address} {state}>"

    @property
    def is_connected(self) -> bool:
        """True while the client's WebSocket is open (always False for an HTTP caller)."""
        return self.peer is not None and not self.peer.closed

    def _live_peer(self) -> Peer:
        if self.peer is None:
            raise NotConnectedError(f"{self!r} has no WebSocket to send on")
        return self.peer

    async def send_event(self, name: str, data: Any = None) -> None:
        """Send an event to this client.

        Raises:
            NotConnectedError: the client has no open WebSocket.
            ConnectionClosedError: it dropped while sending.
        """
        await self._live_peer().send(Event(name=name, data=data))

    async def send_request(
        self, command: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Response:
        """Send a request to this client and wait for its Response.

        Args:
            command: the command's name.
            params: its arguments.
            timeout: seconds to wait; defaults to the server's `request_timeout`.

        Raises:
            NotConnectedError: the client has no open WebSocket.
            ConnectionClosedError: it dropped before answering.
            RequestTimeoutError: no answer in time (an `asyncio.TimeoutError`).
        """
        return await self._live_peer().request(
            Request(command=command, params=params),
            self.request_timeout if timeout is None else timeout,
        )

    async def close(self, code: int = 1000, message: str = "") -> None:
        """Close the client's WebSocket with `code` (no-op for an HTTP caller)."""
        if self.peer is not None:
            await self.peer.close(code, message)
