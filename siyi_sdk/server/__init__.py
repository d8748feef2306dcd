"""The server: ProtocolServer, its Connection handle, typed routes, backplanes, uploads."""

from .app import ConnectionHandler, ProtocolServer, ServerEventHandler, ServerRequestHandler
from .backplane import Backplane, MemoryBackplane
from .connection import Connection
from .redis_backplane import RedisBackplane, RedisResponseCache, SharedConnection
from .routing import Route
from .state import MemoryResponseCache, ResponseCache
from .uploads import StoredFile, UploadHandler, Uploads, sanitize_filename

__all__ = [
    "Backplane",
    "Connection",
    "ConnectionHandler",
    "MemoryBackplane",
    "MemoryResponseCache",
    "ProtocolServer",
    "RedisBackplane",
    "RedisResponseCache",
    "ResponseCache",
    "Route",
    "ServerEventHandler",
    "ServerRequestHandler",
    "SharedConnection",
    "StoredFile",
    "UploadHandler",
    "Uploads",
    "sanitize_filename",
]
