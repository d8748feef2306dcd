"""Adapters: ways to reach a server behind one method, `send_packet`."""

from .base import Adapter, AdapterMode, ClientEventHandler, ClientRequestHandler
from .websocket import WebSocketAdapter

__all__ = [
    "Adapter",
    "AdapterMode",
    "ClientEventHandler",
    "ClientRequestHandler",
    "WebSocketAdapter",
]
