"""Middleware: one seam that every call passes, on the server and on the client.

A middleware is ``async def middleware(call, call_next)``. It may look at `call` (the packet,
where it came from, its `meta`), change what goes on (stamp `call.meta` on an outgoing packet),
answer by itself without calling `call_next` (a 403, a 429), or call ``await call_next(call)``
and look at the outcome: the Response of a request (None for an event), `call.duration`, and
on the server `call.cached` (the at-most-once record answered instead of a run).

Middlewares run in the order they were added, the first added outermost, like aiohttp's and
aiogram's. A chain with no middleware costs one attribute test per call: the call object is
not even built.

Example (a counter per command, on a server)::

    calls: Counter[tuple[str, str]] = Counter()

    async def count(call: ServerCall, call_next: CallNext[ServerCall]) -> Response | None:
        calls[call.name, call.transport] += 1
        return await call_next(call)

    server.use(count)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, TypeAlias, TypeVar

from .packets import Event, Request, Response

__all__ = [
    "Call",
    "CallNext",
    "Chain",
    "ClientCall",
    "Direction",
    "Middleware",
]

Direction: TypeAlias = Literal["in", "out"]
"""``"in"``: a packet that arrived from the peer; ``"out"``: one this side sends."""

CallT = TypeVar("CallT", bound="Call")

CallNext: TypeAlias = Callable[[CallT], Awaitable[Response | None]]
"""What a middleware calls to pass the call on: the rest of the chain, then the handler."""
Middleware: TypeAlias = Callable[[CallT, CallNext[CallT]], Awaitable[Response | None]]
"""``async def middleware(call, call_next) -> Response | None``."""


class Call:
    """One packet on its way through a chain of middleware.

    Attributes:
        packet: the Request or Event (for a broadcast, the one packet every peer gets).
        direction: ``"in"`` (arrived from the peer) or ``"out"`` (being sent to it).
        transport: ``"websocket"`` or ``"http"``: what carries it (None while not known,
            e.g. a broadcast, or an adapter of the user's own).
        arrived: when the call entered the chain (`time.monotonic()`).
        duration: seconds from `arrived` to the answer, set when the handler (or the send)
            returned; None while running, or when a middleware answered by itself.
        state: a dict for middlewares to pass things to each other (and to the handler).
    """

    __slots__ = ("arrived", "direction", "duration", "packet", "state", "transport")

    def __init__(
        self,
        packet: Request | Event,
        direction: Direction,
        transport: Literal["websocket", "http"] | None = None,
    ) -> None:
        self.packet = packet
        self.direction: Direction = direction
        self.transport = transport
        self.arrived = time.monotonic()
        self.duration: float | None = None
        self.state: dict[str, Any] = {}

    @property
    def is_request(self) -> bool:
        """True for a Request (answered by a Response), False for an Event."""
        return isinstance(self.packet, Request)

    @property
    def name(self) -> str:
        """The command of a Request, the name of an Event."""
        packet = self.packet
        return packet.command if isinstance(packet, Request) else packet.name

    @property
    def meta(self) -> dict[str, Any]:
        """The packet's `meta` (PROTOCOL.md §2), made on first use: write to stamp it."""
        packet = self.packet
        meta = packet.meta
        if meta is None:
            meta = packet.meta = {}
        return meta

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.direction} {self.name!r} via {self.transport}>"


class ClientCall(Call):
    """A call on the client side: what an adapter, a manager or a client sent or received.

    Attributes:
        adapter: the object whose chain this is (an adapter, a manager, a client).
        carrier: the adapter that carried it in the end (for a manager: the one that
            answered; for a plain adapter: itself); None until known.
        failovers: for a manager, each adapter that failed first, with its error, in order.
    """

    __slots__ = ("adapter", "carrier", "failovers")

    def __init__(
        self,
        packet: Request | Event,
        direction: Direction,
        adapter: Any,
        transport: Literal["websocket", "http"] | None = None,
    ) -> None:
        super().__init__(packet, direction, transport)
        self.adapter = adapter
        self.carrier: Any = None
        self.failovers: list[tuple[Any, BaseException]] = []


class Chain(Generic[CallT]):
    """An ordered list of middlewares (the first added outermost) and how to run it.

    `run(call, terminal)` passes `call` through every middleware, then to `terminal`, which
    does the real work (run the handler, send the packet). Empty, `bool(chain)` is False, so
    a caller can skip building a call at all.
    """

    __slots__ = ("_middlewares",)

    def __init__(self) -> None:
        self._middlewares: tuple[Middleware[CallT], ...] = ()

    def __bool__(self) -> bool:
        return bool(self._middlewares)

    def __len__(self) -> int:
        return len(self._middlewares)

    def add(self, middleware: Middleware[CallT]) -> Middleware[CallT]:
        """Append a middleware (it runs inside those added before it); returns it."""
        if not callable(middleware):
            raise TypeError(f"a middleware must be callable, not {type(middleware).__name__}")
        self._middlewares = (*self._middlewares, middleware)
        return middleware

    def remove(self, middleware: Middleware[CallT]) -> None:
        """Take a middleware added with `add` out of the chain (no-op if it is not in it).

        Calls already inside it finish through it; calls that start later do not see it.
        """
        self._middlewares = tuple(m for m in self._middlewares if m is not middleware)

    async def run(
        self, call: CallT, terminal: Callable[[CallT], Awaitable[Response | None]]
    ) -> Response | None:
        """Pass `call` through the chain to `terminal`; returns what the outermost returns.

        `call.duration` is set when `terminal` returns (or raises). Each middleware gets the
        next one as a small callable object, made once per call: no closure or coroutine per
        step beyond the middlewares' own.
        """
        middlewares = self._middlewares
        call_next: CallNext[CallT] = _Last(terminal)
        for index in range(len(middlewares) - 1, 0, -1):
            call_next = _Next(middlewares[index], call_next)
        if not middlewares:
            return await call_next(call)
        return await middlewares[0](call, call_next)


class _Next(Generic[CallT]):
    """`call_next` for one middleware: calls the next middleware with its own `call_next`."""

    __slots__ = ("call_next", "middleware")

    def __init__(self, middleware: Middleware[CallT], call_next: CallNext[CallT]) -> None:
        self.middleware = middleware
        self.call_next = call_next

    def __call__(self, call: CallT) -> Awaitable[Response | None]:
        return self.middleware(call, self.call_next)


class _Last(Generic[CallT]):
    """`call_next` for the innermost middleware: the terminal, timed into `call.duration`."""

    __slots__ = ("terminal",)

    def __init__(self, terminal: Callable[[CallT], Awaitable[Response | None]]) -> None:
        self.terminal = terminal

    async def __call__(self, call: CallT) -> Response | None:
        try:
            return await self.terminal(call)
        finally:
            call.duration = time.monotonic() - call.arrived
