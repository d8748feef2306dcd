"""How an adapter's middleware chain runs around what it sends and receives (`Adapter.use`).

Outward: `install_chain`, called by `Adapter.__init_subclass__`, wraps the `send_packet` and
`send_event` a class defines itself. The wrapper tests the adapter's chain: empty, it returns
the method's own coroutine (no call object, no context variable); otherwise the call passes
the chain to the method. While the method runs, `SENDING` holds the call and the task, so that
an override's ``super().send_packet(...)`` (same adapter, same task) does not run the chain a
second time, and so that a manager finds the call to tell its carrier and failovers.

Inward: `Adapter.handle_request`/`handle_event` run the chain themselves; an adapter that hands
a packet on to a parent with middleware sets `RECEIVED_BY`, so the parent's call names the
adapter that received it.

The adapters here are typed `Any`: this module sits below `adapters.base`, which imports it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from ..packets import Event, Request, Response
from ..pipeline import ClientCall

__all__ = [
    "carrier",
    "current_call",
    "forward_event",
    "forward_request",
    "incoming_call",
    "install_chain",
]

SENDING: ContextVar[tuple[ClientCall, asyncio.Task[Any] | None] | None] = ContextVar(
    "siyi_sending", default=None
)
"""The call whose send method runs now, and its task; set only by a non-empty chain."""
RECEIVED_BY: ContextVar[tuple[Any, Request | Event] | None] = ContextVar(
    "siyi_received_by", default=None
)
"""The adapter that handed a received packet to its parent, and the packet."""

# The methods whose calls pass an adapter's chain outward, and the packet type each one sends.
_CHAINED: dict[str, type[Request] | type[Event]] = {"send_packet": Request, "send_event": Event}
_ABSENT: Any = object()  # no packet given positionally
_mark_coroutine: Callable[[Any], Any] | None = getattr(inspect, "markcoroutinefunction", None)


def current_call(adapter: Any) -> ClientCall | None:
    """The call `adapter`'s chain runs, from inside its `send_packet`/`send_event`."""
    current = SENDING.get()
    return current[0] if current is not None and current[0].adapter is adapter else None


def carrier(adapter: Any, packet: Request | Event) -> Any:
    """The adapter that received `packet`: the child that handed it to `adapter`, if one did."""
    received = RECEIVED_BY.get()
    return received[0] if received is not None and received[1] is packet else adapter


def incoming_call(adapter: Any, packet: Request | Event) -> ClientCall:
    """The call for a received packet; its carrier is the adapter that received it."""
    by = carrier(adapter, packet)
    call = ClientCall(packet, "in", adapter, by._call_transport)
    call.carrier = by
    return call


async def forward_request(adapter: Any, parent: Any, request: Request) -> Response:
    """`parent.handle_request(request)`, naming `adapter` as the one that received it."""
    token = RECEIVED_BY.set((adapter, request))
    try:
        response: Response = await parent.handle_request(request)
        return response
    finally:
        RECEIVED_BY.reset(token)


async def forward_event(adapter: Any, parent: Any, event: Event) -> None:
    """`parent.handle_event(event)`, naming `adapter` as the one that received it."""
    token = RECEIVED_BY.set((adapter, event))
    try:
        await parent.handle_event(event)
    finally:
        RECEIVED_BY.reset(token)


async def send_through_chain(
    adapter: Any,
    impl: Callable[..., Awaitable[Any]],
    packet: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    kind: type[Request] | type[Event],
) -> Any:
    """Run `impl` (an adapter's own send method) inside `adapter`'s chain.

    Raises:
        TypeError: a middleware returned something other than a Response for a request.
    """
    if not isinstance(packet, kind):
        # Not a packet yet (ProtocolClient.send_event("name", data)): the call it makes with
        # the Event runs the chain.
        return await impl(adapter, packet, *args, **kwargs)
    current = SENDING.get()
    if (
        current is not None
        and current[0].adapter is adapter
        and current[1] is asyncio.current_task()
    ):
        # An override's super().send_packet(...): the chain is already running this call.
        return await impl(adapter, packet, *args, **kwargs)

    async def terminal(call: ClientCall) -> Response | None:
        call.carrier = adapter
        token = SENDING.set((call, asyncio.current_task()))
        try:
            result: Response | None = await impl(adapter, call.packet, *args, **kwargs)
            return result
        finally:
            SENDING.reset(token)

    call = ClientCall(packet, "out", adapter, adapter._call_transport)
    result = await adapter._middleware.run(call, terminal)
    if kind is Request and not isinstance(result, Response):
        raise TypeError(
            f"a middleware of {adapter.name} returned {type(result).__name__} for a request, "
            "not a Response"
        )
    return result


def chained(
    impl: Callable[..., Awaitable[Any]], kind: type[Request] | type[Event]
) -> Callable[..., Awaitable[Any]]:
    """Wrap an adapter's own send method so that its calls pass the adapter's chain.

    Without middleware the wrapper returns the method's own coroutine: no call object, no
    context variable, no extra coroutine; one truthiness test.
    """
    params = list(inspect.signature(impl).parameters)
    first = params[1] if len(params) > 1 else None  # the packet's name, after self

    @functools.wraps(impl)
    def entry(self: Any, packet: Any = _ABSENT, /, *args: Any, **kwargs: Any) -> Any:
        if not self._middleware:
            if not args and not kwargs and packet is not _ABSENT:
                return impl(self, packet)  # the common call, without unpacking
            if packet is _ABSENT:
                return impl(self, *args, **kwargs)
            return impl(self, packet, *args, **kwargs)
        if packet is _ABSENT:
            if first is None or first not in kwargs:
                return impl(self, *args, **kwargs)  # let the method itself refuse the call
            packet = kwargs.pop(first)
        return send_through_chain(self, impl, packet, args, kwargs, kind)

    entry.__siyi_chained__ = True  # type: ignore[attr-defined]
    if _mark_coroutine is not None:
        _mark_coroutine(entry)  # inspect.iscoroutinefunction stays true (3.12+)
    return entry


def install_chain(cls: type) -> None:
    """Wrap the send methods `cls` defines itself (not inherited, not abstract, not wrapped)."""
    for name, kind in _CHAINED.items():
        impl = cls.__dict__.get(name)
        if (
            inspect.isfunction(impl)
            and not getattr(impl, "__isabstractmethod__", False)
            and not getattr(impl, "__siyi_chained__", False)
        ):
            setattr(cls, name, chained(impl, kind))
