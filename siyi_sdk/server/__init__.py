"""The server: ProtocolServer, its Connection handle, typed routes, shared state, uploads."""

from .app import ConnectionHandler, ProtocolServer, ServerEventHandler, ServerRequestHandler
from .connection import Connection
from .routing import Route
from .state import MemoryResponseCache, ResponseCache
from .uploads import StoredFile, UploadHandler, Uploads, sanitize_filename

__all__ = [
    "Connection",
    "ConnectionHandler",
    "MemoryResponseCache",
    "ProtocolServer",
    "ResponseCache",
    "Route",
    "ServerEventHandler",
    "ServerRequestHandler",
    "StoredFile",
    "UploadHandler",
    "Uploads",
    "sanitize_filename",
]
