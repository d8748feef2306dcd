"""The server: ProtocolServer, its Connection handle, typed routes, backplanes, uploads.

The Redis backplane (`RedisBackplane`, `RedisResponseCache`, `SharedConnection`) loads on
first use, so that a server without Redis never loads its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name stays an error

    def __getattr__(name: str) -> Any:
        """Import a Redis name on first use; it is then a plain attribute of the package."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
