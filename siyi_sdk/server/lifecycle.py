"""What every part of one server shares: its settings, whether it is stopping, its tasks.

`ServerSettings` holds the values the parts read (the `ProtocolServer` keywords of the same
names); `Lifecycle` knows whether the server is stopping, which WebSockets are open, and which
background tasks and HTTP calls run, so that stopping can wait for them and then end them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, overload

from .stats import ServerStats

if TYPE_CHECKING:
    from ..peer import Peer

__all__ = ["Lifecycle", "ServerSettings", "Setting"]

T = TypeVar("T")


@dataclass(slots=True)
class ServerSettings:
    """The settings the parts of a server read; see `ProtocolServer` for each one."""

    heartbeat_interval: float | None
    max_message_size: int
    max_in_flight: int
    max_pending_events: int
    max_outbox_bytes: int
    request_timeout: float | None
    handler_timeout: float | None
    shutdown_timeout: float
    path: str
    general_path: str
    about_path: str
    events_path: str


class Lifecycle:
    """Whether the server is stopping, and what it must wait for or end when it does.

    Attributes:
        stopping: True from the start of a stop until the next start.
        peers: every open packet WebSocket (attached to its session, or replaying).
        background: tasks started with `spawn` (handlers of connects, session ends, ...).
        http_calls: the tasks of HTTP calls being answered (a stop waits for them too).
        stats: the server's traffic counters (`ServerStats`), which every part adds to.
    """

    def __init__(self) -> None:
        self.stopping = False
        self.peers: set[Peer] = set()
        self.background: set[asyncio.Task[Any]] = set()
        self.http_calls: set[asyncio.Task[Any]] = set()
        self.stats = ServerStats()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run `coro` in the background; a stop waits for it, then cancels it."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def running_requests(self) -> set[asyncio.Task[Any]]:
        """The tasks answering requests now, on every transport."""
        return {t for peer in self.peers for t in peer.handling} | self.http_calls


class Setting(Generic[T]):
    """An attribute of the owner that reads and writes the field of its `settings`."""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...

    @overload
    def __get__(self, obj: object, owner: type[Any]) -> T: ...

    def __get__(self, obj: object | None, owner: type[Any]) -> Self | T:
        if obj is None:
            return self
        value: T = getattr(obj.settings, self.name)  # type: ignore[attr-defined]
        return value

    def __set__(self, obj: object, value: T) -> None:
        setattr(obj.settings, self.name, value)  # type: ignore[attr-defined]
