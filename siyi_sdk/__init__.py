"""siyi-sdk: two-way request/response and events over WebSocket and HTTP, for asyncio.

The public names are all importable from here; see the README for a tour.
"""

from ._version import __version__
from .adapters import Adapter, AdapterMode, WebSocketAdapter
from .api import Command, EventModel
from .client import ProtocolClient
from .errors import (
    AllAdaptersFailedError,
    ApiError,
    BadRequestError,
    BusyError,
    ConnectionClosedError,
    ForbiddenError,
    HandlerFailedError,
    HandlerTimeoutError,
    InternalServerError,
    NotConnectedError,
    ProtocolError,
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
from .server import Connection, ProtocolServer

__all__ = [
    "PROTOCOL_VERSION",
    "Adapter",
    "AdapterMode",
    "AllAdaptersFailedError",
    "ApiError",
    "BadRequestError",
    "BusyError",
    "Command",
    "Connection",
    "ConnectionClosedError",
    "Event",
    "EventModel",
    "ForbiddenError",
    "HandlerFailedError",
    "HandlerTimeoutError",
    "InternalServerError",
    "NotConnectedError",
    "Packet",
    "ProtocolClient",
    "ProtocolError",
    "ProtocolServer",
    "Request",
    "RequestPacket",
    "RequestTimeoutError",
    "Response",
    "ResponsePacket",
    "SiyiError",
    "StatusCode",
    "TooLargeError",
    "TransportError",
    "UnauthorizedError",
    "UnavailableError",
    "UnknownCommandError",
    "WebSocketAdapter",
    "__version__",
    "encode",
    "parse_message",
]
