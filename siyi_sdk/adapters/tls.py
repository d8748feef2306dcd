"""The client's TLS setting: how every adapter and upload checks a ``wss://``/``https://`` server.

One setting, `SSLOption`, taken as ``ssl=`` by `WebSocketAdapter` (so `ProtocolClient`) and
`HttpAdapter`, and used by their uploads too. Every HTTP session they open comes from
`client_session`, so the setting reaches every connection (the packet channel, ``/about``,
``/events``, ``/upload``) in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from ssl import SSLContext
from typing import TypeAlias

import aiohttp

from ..errors import CertificateError
from ..frames import Tapped

__all__ = ["SSLOption", "TappedClientWebSocket", "certificate_error", "client_session"]

SSLOption: TypeAlias = SSLContext | bool | None
"""How a client verifies the server's TLS certificate.

None (or True): the system's default verification (its trusted CAs). An `ssl.SSLContext`:
yours, e.g. ``ssl.create_default_context(cafile="ca.pem")`` to trust a private CA. False: no
verification at all — for testing only, since anyone on the path can then read and change the
traffic. Plain ``ws://``/``http://`` URLs ignore it.
"""


def client_session(
    ssl: SSLOption, *, headers: Mapping[str, str] | None = None
) -> aiohttp.ClientSession:
    """Open an aiohttp session whose connections verify TLS as `ssl` says.

    Must be called with an event loop running (aiohttp's connector binds to it).

    Args:
        ssl: the client's TLS setting (see `SSLOption`).
        headers: headers sent on every request of the session.
    """
    # On the connector rather than on each request: no call site can forget it.
    connector = aiohttp.TCPConnector(ssl=True if ssl is None else ssl)
    return aiohttp.ClientSession(
        headers=headers, connector=connector, ws_response_class=TappedClientWebSocket
    )


class TappedClientWebSocket(Tapped, aiohttp.ClientWebSocketResponse):
    """aiohttp's client WebSocket with a `frames.FrameTap` before its reader.

    What a `Peer` reads on it skips a trip through the event loop; anything else is aiohttp's.
    """


def certificate_error(exc: aiohttp.ClientConnectorCertificateError, url: str) -> CertificateError:
    """The SDK's error for a server certificate that did not verify, saying what to do.

    Args:
        exc: what aiohttp raised.
        url: the URL being reached (for the message).
    """
    cause = exc.certificate_error
    reason = getattr(cause, "verify_message", None) or str(cause) or type(cause).__name__
    return CertificateError(
        f"{url}: the server's TLS certificate did not verify ({reason}); if the server is yours, "
        "trust its CA with ssl=ssl.create_default_context(cafile=...) (siyi: --cafile FILE)"
    )
