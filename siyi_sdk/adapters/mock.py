"""MockAdapter: answers packets with a function you give it, for your own tests."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from ..packets import Event, RequestPacket, ResponsePacket
from .base import Adapter, AdapterMode

__all__ = ["MockAdapter"]

MockHandler = Callable[[RequestPacket], Awaitable[ResponsePacket] | ResponsePacket]


class MockAdapter(Adapter):
    """An adapter whose "server" is a function: ``handler(request) -> Response``.

    It records what it was sent (`requests`, `events`) and can play server events to its
    handlers with `push_event`. The handler may raise, e.g. `ConnectionError`, to simulate a
    transport failure.

    Example::

        api = Api(MockAdapter(lambda req: Response.success(req.id, ["Steve"])))
        assert await api.request("get_player_list") == ["Steve"]

    Args:
        handler: turns a RequestPacket into a ResponsePacket (sync or async).
        priority: preference within an AdapterManager.
        mode: SEND and RECEIVE by default (so `push_event` reaches handlers).
    """

    mode = AdapterMode.SEND | AdapterMode.RECEIVE

    def __init__(
        self,
        handler: MockHandler,
        *,
        priority: int | None = None,
        mode: AdapterMode | None = None,
    ) -> None:
        self.handler = handler
        if priority is not None:
            self.priority = priority
        if mode is not None:
            self.mode = mode
        self.requests: list[RequestPacket] = []
        self.events: list[Event] = []

    async def send_packet(self, packet: RequestPacket) -> ResponsePacket:
        """Record the packet and return the handler's Response.

        Raises:
            TypeError: the handler returned something other than a Response.
        """
        self.requests.append(packet)
        result = self.handler(packet)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, ResponsePacket):
            raise TypeError(f"MockAdapter handler returned {type(result).__name__}, not a Response")
        return result

    async def send_event(self, event: Event) -> None:
        """Record the event."""
        self.events.append(event)

    async def push_event(self, event: Event) -> None:
        """Deliver an event as if the server had sent it."""
        await self.handle_event(event)
