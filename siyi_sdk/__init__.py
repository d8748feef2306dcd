"""siyi-sdk: two-way request/response and events over WebSocket and HTTP, for asyncio.

The public names are all importable from here; see the README for a tour. The server's names
(`ProtocolServer`, `Connection`, the backplanes, `StoredFile`) load on first use, so that a
client never loads aiohttp's server side or Redis; so does `Tracing` (OpenTelemetry, the `otel`
extra), which loads OpenTelemetry only when one is made. The demo game's commands and `GameApi` are
in `siyi_sdk.demo`.
"""

import typing

from ._lazy import lazy_names as _lazy_names
from ._version import __version__
from .adapters import (
    Adapter,
    AdapterManager,
    AdapterMode,
    HttpAdapter,
    MockAdapter,
    WebSocketAdapter,
)
from .api import Api, Command, EventModel
from .client import ProtocolClient
from .errors import (
    AllAdaptersFailedError,
    ApiError,
    BackplaneUnavailableError,
    BadRequestError,
    BusyError,
    CertificateError,
    ConnectionClosedError,
    ForbiddenError,
    GoneError,
    HandlerFailedError,
    HandlerTimeoutError,
    InternalServerError,
    InvalidResultError,
    NotConnectedError,
    ProtocolError,
    ProtocolVersionError,
    RequestCancelledError,
    RequestTimeoutError,
    SiyiError,
    TooLargeError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
    UnknownCommandError,
)
from .packets import (
    PROTOCOL_VERSION,
    Event,
    Packet,
    Request,
    RequestPacket,
    Response,
    ResponsePacket,
    StatusCode,
    encode,
    parse_message,
)
from .pipeline import CallNext, ClientCall
from .wire import FileInfo

if typing.TYPE_CHECKING:
    from .server import Connection, MemoryBackplane, ProtocolServer, RedisBackplane, StoredFile
    from .telemetry import Tracing

# The server's names and OpenTelemetry's `Tracing` (the `otel` extra), imported on first use
# (PEP 562): name -> the module that defines it.
_LAZY: dict[str, str] = {
    "Connection": ".server",
    "MemoryBackplane": ".server",
    "ProtocolServer": ".server",
    "RedisBackplane": ".server",
    "StoredFile": ".server",
    "Tracing": ".telemetry",
}

__all__ = [
    "PROTOCOL_VERSION",
    "Adapter",
    "AdapterManager",
    "AdapterMode",
    "AllAdaptersFailedError",
    "Api",
    "ApiError",
    "BackplaneUnavailableError",
    "BadRequestError",
    "BusyError",
    "CallNext",
    "CertificateError",
    "ClientCall",
    "Command",
    "Connection",
    "ConnectionClosedError",
    "Event",
    "EventModel",
    "FileInfo",
    "ForbiddenError",
    "GoneError",
    "HandlerFailedError",
    "HandlerTimeoutError",
    "HttpAdapter",
    "InternalServerError",
    "InvalidResultError",
    "MemoryBackplane",
    "MockAdapter",
    "NotConnectedError",
    "Packet",
    "ProtocolClient",
    "ProtocolError",
    "ProtocolServer",
    "ProtocolVersionError",
    "RedisBackplane",
    "Request",
    "RequestCancelledError",
    "RequestPacket",
    "RequestTimeoutError",
    "Response",
    "ResponsePacket",
    "SiyiError",
    "StatusCode",
    "StoredFile",
    "TooLargeError",
    "Tracing",
    "TransportError",
    "UnauthorizedError",
    "UnavailableError",
    "UnknownCommandError",
    "WebSocketAdapter",
    "__version__",
    "encode",
    "parse_message",
]


_getattr, __dir__ = _lazy_names(__name__, globals(), _LAZY, __all__)
if not typing.TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name stays an error
    __getattr__ = _getattr  # a server name is imported on first use
