"""Connecting the client's packet WebSocket: the attempts, each an upgrade and a greeting.

`WebSocketAdapter` makes each connection attempt with `upgrade_headers`, `open_websocket`
(the upgrade, with the refusals that no retry can help told apart) and `read_greeting` (the
server's `session` event, §7: the protocol it speaks, the session key to adopt, what was
dropped while away); `connect_retrying` repeats the attempts with backoff until one opens.
The `Peer` that serves the connection, the reconnection loop and its state stay with the
adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import aiohttp
from tenacity import RetryCallState

from ..errors import ForbiddenError, ProtocolError, TransportError, UnauthorizedError
from ..packets import SESSION_EVENT, Event, parse_message
from ..retry import backoff
from .base import SessionRef, check_protocol
from .tls import certificate_error

__all__ = [
    "RETRYABLE",
    "connect_retrying",
    "open_websocket",
    "read_greeting",
    "take_session_event",
    "upgrade_headers",
]

# The adapter's logger: what a user configures for `siyi_sdk.adapters.websocket` covers this.
logger = logging.getLogger("siyi_sdk.adapters.websocket")

T = TypeVar("T")

RETRYABLE = (OSError, aiohttp.ClientError, TimeoutError, TransportError)
"""What a failed connection attempt can raise; anything else is a bug and stops the loop."""


def upgrade_headers(
    headers: Mapping[str, str], token: str | None, session: SessionRef
) -> dict[str, str]:
    """The headers of an upgrade request: `headers`, the key, the session key.

    Args:
        headers: the adapter's extra headers.
        token: the server's key, sent as ``Authorization: Bearer <token>`` (None: none).
        session: the client's session key holder (its key, once the server gave one).
    """
    merged = dict(headers)
    if token is not None:
        merged["Authorization"] = f"Bearer {token}"
    merged.update(session.header())
    return merged


async def connect_retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    initial: float,
    maximum: float,
    sleep: Callable[[float], Awaitable[None]],
    on_retry: Callable[[RetryCallState], None],
) -> T:
    """Make connection attempts with backoff (`siyi_sdk.retry.backoff`) until one succeeds.

    Args:
        attempt: one connection attempt.
        initial: the first delay in seconds.
        maximum: the delay's ceiling.
        sleep: how to wait between attempts.
        on_retry: called after each failed attempt (for logging and the caller's state).

    Returns:
        What the first successful attempt returned.

    Raises:
        Exception: what an attempt raised that is not `RETRYABLE` (or is a
            `CertificateError`): no retry can help.
    """
    retrying = backoff(initial, maximum, sleep, RETRYABLE, on_retry)
    async for each in retrying:
        with each:
            return await attempt()
    raise AssertionError("unreachable: tenacity retries until success")  # pragma: no cover


async def open_websocket(
    http: aiohttp.ClientSession,
    url: str,
    *,
    headers: dict[str, str],
    max_message_size: int,
) -> aiohttp.ClientWebSocketResponse:
    """The upgrade to a WebSocket at `url` (no timeout of its own: the caller bounds it).

    Pings are left to the `Peer` that reads it (its ``heartbeat``): no aiohttp heartbeat,
    no automatic pong.

    Args:
        http: the HTTP session to connect with.
        url: the server's WebSocket URL.
        headers: the upgrade request's headers (key, session).
        max_message_size: the largest frame accepted from the server.

    Raises:
        UnauthorizedError: the server refused the key (not retried).
        ForbiddenError: the session key belongs to another principal (not retried).
        CertificateError: the server's TLS certificate is not trusted (not retried).
        aiohttp.ClientError, OSError: the upgrade failed otherwise.
    """
    try:
        return await http.ws_connect(
            url,
            # aiohttp refuses a frame of exactly max_msg_size; the limit is allowed.
            max_msg_size=max_message_size + 1,
            headers=headers,
            autoclose=True,
            autoping=False,
        )
    except aiohttp.ClientConnectorCertificateError as exc:
        raise certificate_error(exc, url) from exc
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == 401:
            raise UnauthorizedError(f"{url} refused the key: {exc.message}") from exc
        if exc.status == 403:
            # The session key belongs to another principal: retrying cannot help.
            raise ForbiddenError(
                f"{url} refused the session key: it belongs to another principal"
            ) from exc
        raise


async def read_greeting(
    ws: aiohttp.ClientWebSocketResponse, session: SessionRef, name: str
) -> str | bytes | None:
    """Read the first frame of a new WebSocket and take the server's `session` event.

    The WebSocket is closed if this fails (or is cancelled).

    Args:
        ws: the WebSocket, just opened.
        session: the client's session key holder (adopts the key the server gives).
        name: how logs name the adapter.

    Returns:
        The first frame when it was not a `session` event (a server that does not open
        sessions): the peer handles it before anything else. None otherwise.

    Raises:
        ProtocolVersionError: the server speaks another protocol (not retried).
    """
    first: str | bytes | None = None
    try:
        msg = await ws.receive()
        while msg.type is aiohttp.WSMsgType.PING:  # no autoping: the Peer answers later ones
            await ws.pong(msg.data)
            msg = await ws.receive()
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            first = msg.data
            if take_session_event(first, session, name):
                first = None
    except BaseException:
        await ws.close()
        raise
    return first


def take_session_event(frame: str | bytes, session: SessionRef, name: str) -> bool:
    """Consume the server's `session` event (PROTOCOL.md §7); False if `frame` is not one.

    Args:
        frame: a frame from the server.
        session: the client's session key holder (adopts the key the event gives).
        name: how logs name the adapter.

    Raises:
        ProtocolVersionError: the server speaks another protocol.
    """
    try:
        packet = parse_message(frame)
    except ProtocolError:
        return False
    if not isinstance(packet, Event) or packet.name != SESSION_EVENT:
        return False
    info = packet.data if isinstance(packet.data, dict) else {}
    check_protocol(info.get("protocol"))
    session.update(info.get("session"), name)
    if info.get("resumed"):
        logger.info(
            "%s: session resumed; %s packets were dropped while away",
            name,
            info.get("dropped", 0),
        )
    return True
