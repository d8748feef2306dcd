"""The server: ProtocolServer, its Connection handle, typed routes and shared state."""

from .app import ConnectionHandler, ProtocolServer, ServerEventHandler, ServerRequestHandler
from .connection import Connection
from .routing import Route
from .state import MemoryResponseCache, ResponseCache

__all__ = [
    "Connection",
    "ConnectionHandler",
    "MemoryResponseCache",
    "ProtocolServer",
    "ResponseCache",
    "Route",
    "ServerEventHandler",
    "ServerRequestHandler",
]
