"""The heartbeat of a WebSocket (PROTOCOL.md §5), one timer per connection.

Every `interval` seconds a `Liveness` pings the other side and, half an interval later, looks at
whether anything was read since the ping (the pong, or any other frame). If nothing was, the
connection is dead and `on_dead` cuts it: a dead peer is noticed within 1.5 intervals.

Why not aiohttp's own ``heartbeat=``: it re-arms its timer for every chunk read, with a
``call_soon`` per read, which is a measurable part of a small request's cost. Here the reader
only counts what it reads (a `Peer` counts its frames anyway) and the timer compares counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Liveness"]

logger = logging.getLogger(__name__)


class Liveness:
    """Pings a connection every `interval` seconds; calls `on_dead` when it stops answering.

    Args:
        interval: seconds between pings; the answer is awaited for half of it.
        heard: how much has been read so far (any count that grows with every frame read,
            pongs included).
        ping: sends a ping frame.
        on_dead: cuts the connection: nothing was read within half an interval of a ping.
        label: how logs name the connection.
    """

    __slots__ = ("_handle", "_heard", "_interval", "_label", "_on_dead", "_ping", "_seen")

    def __init__(
        self,
        interval: float,
        *,
        heard: Callable[[], int],
        ping: Callable[[], Coroutine[Any, Any, None]],
        on_dead: Callable[[], None],
        label: str,
    ) -> None:
        self._interval = interval
        self._heard = heard
        self._ping = ping
        self._on_dead = on_dead
        self._label = label
        self._seen = 0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Send the first ping an interval from now (again after `stop`: restarts)."""
        self.stop()
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._send_ping)

    def stop(self) -> None:
        """No more pings, and no verdict on the last one."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _send_ping(self) -> None:
        loop = asyncio.get_running_loop()
        self._seen = self._heard()
        # A ping a heartbeat interval: the task is no cost that matters; failing to send it
        # means the connection is going, which the reader learns by itself.
        loop.create_task(self._ping()).add_done_callback(_ignore_failure)
        self._handle = loop.call_later(self._interval / 2, self._check)

    def _check(self) -> None:
        if self._heard() != self._seen:
            self._handle = asyncio.get_running_loop().call_later(
                self._interval / 2, self._send_ping
            )
            return
        self._handle = None
        logger.info(
            "%s: no answer to a ping within %g s: the connection is dead",
            self._label,
            self._interval / 2,
        )
        self._on_dead()


def _ignore_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
