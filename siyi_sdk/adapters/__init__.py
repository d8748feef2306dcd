"""Adapters: ways to reach a server behind one method, `send_packet`."""

from .base import Adapter, AdapterMode, ClientEventHandler, ClientRequestHandler
from .http import HttpAdapter
from .manager import AdapterManager
from .mock import MockAdapter
from .websocket import WebSocketAdapter

__all__ = [
    "Adapter",
    "AdapterManager",
    "AdapterMode",
    "ClientEventHandler",
    "ClientRequestHandler",
    "HttpAdapter",
    "MockAdapter",
    "WebSocketAdapter",
]
