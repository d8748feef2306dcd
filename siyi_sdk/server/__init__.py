"""The server: ProtocolServer, its Connection handle, typed routes, backplanes, uploads.

The Redis backplane (`RedisBackplane`, `RedisResponseCache`, `SharedConnection`) loads on
first use, so that a server without Redis never loads its module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names as _lazy_names
from .app import ProtocolServer
from .backplane import Backplane, MemoryBackplane
from .connection import Connection, ServerCall
from .dispatch import (
    ConnectionHandler,
    ServerEventHandler,
    ServerMiddleware,
    ServerRequestHandler,
)
from .routing import Route
from .state import MemoryResponseCache, ResponseCache
from .uploads import StoredFile, UploadHandler, Uploads, sanitize_filename

if TYPE_CHECKING:
    from .redis_backplane import RedisBackplane, RedisResponseCache, SharedConnection

_LAZY: dict[str, str] = {
    "RedisBackplane": ".redis_backplane",
    "RedisResponseCache": ".redis_backplane",
    "SharedConnection": ".redis_backplane",
}

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
    "ServerCall",
    "ServerEventHandler",
    "ServerMiddleware",
    "ServerRequestHandler",
    "SharedConnection",
    "StoredFile",
    "UploadHandler",
    "Uploads",
    "sanitize_filename",
]


_getattr, __dir__ = _lazy_names(__name__, globals(), _LAZY, __all__)
if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name stays an error
    __getattr__ = _getattr  # a Redis name is imported on first use
