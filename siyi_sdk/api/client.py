"""Api: typed commands and events over any Adapter."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

from pydantic import ValidationError

from ..adapters.base import Adapter
from ..adapters.upload_source import UploadProgress, UploadSource
from ..calls import DEFAULT_WINDOW, aclose, within
from ..errors import InvalidResultError, RequestTimeoutError, error_for_response
from ..logs import call_extra
from ..packets import Event, Request, Response, format_validation_error
from ..pipeline import ClientCall, Middleware
from ..wire import FileInfo
from .command import Command, EventModel, ResultT

__all__ = ["Api"]

logger = logging.getLogger(__name__)

EventT = TypeVar("EventT", bound=EventModel)
TypedEventHandler: TypeAlias = Callable[[Any], Awaitable[None] | None]
TypedHandler: TypeAlias = Callable[[EventT], Awaitable[None] | None]


class Api:
    """Typed calls over any Adapter.

    The adapter may be a WebSocketAdapter, an HttpAdapter, a MockAdapter, an AdapterManager,
    or your own.

    ``await api.call(cmd)`` sends a `Command`, raises the typed `ApiError` for an error
    Response, and returns the result validated into the command's result type. Declare your
    commands as `Command` subclasses and, if you like, give them methods on a subclass::

        class GameApi(Api):
            async def get_player_list(self, world: str = "overworld") -> list[str]:
                return await self.call(GetPlayerList(world=world))

    (the demo game's `siyi_sdk.demo.GameApi` is one).

    Args:
        sender: the adapter packets go through.
        timeout: default seconds per call, across any failover (None: the adapter's own).
    """

    def __init__(self, sender: Adapter, *, timeout: float | None = None) -> None:
        self.sender = sender
        self.timeout = timeout
        self._typed_handlers: dict[str, list[tuple[type[EventModel], TypedEventHandler]]] = {}

    def use(self, middleware: Middleware[ClientCall]) -> Middleware[ClientCall]:
        """Add a client middleware to the sender's chain (`Adapter.use`); returns it.

        The Api keeps no chain of its own: ``api.use(m)`` is ``api.sender.use(m)``, so the
        middleware sees every packet the sender carries, whether it came through the Api or
        not, with the carrier and failovers an `AdapterManager` reports, and what the server
        sends. The Api's own `timeout` cancels the call from outside the chain: a middleware
        then sees `asyncio.CancelledError` from `call_next` (the caller gets
        `RequestTimeoutError`); an adapter's or manager's own timeout reaches it as
        `RequestTimeoutError`.
        """
        return self.sender.use(middleware)

    async def send_packet(self, packet: Request, *, timeout: float | None = None) -> Response:
        """Send a raw Request through the adapter, within `timeout` (default `self.timeout`).

        Raises:
            TransportError: no adapter could carry it.
            RequestTimeoutError: no answer in time.
        """
        timeout = self.timeout if timeout is None else timeout
        if timeout is None:
            return await self.sender.send_packet(packet)
        try:
            with within(timeout):  # the request carries this budget (meta.timeout, §9)
                async with asyncio.timeout(timeout):
                    return await self.sender.send_packet(packet)
        except TimeoutError as exc:
            if isinstance(exc, RequestTimeoutError):
                raise
            raise RequestTimeoutError(
                f"no response to {packet.command!r} within {timeout:g} s"
            ) from None

    async def call(self, command: Command[ResultT], *, timeout: float | None = None) -> ResultT:
        """Send a typed command and return its validated result.

        Raises:
            ApiError: (a subclass per code) the server answered with an error.
            InvalidResultError: the answer's data does not fit the command's result type.
            TransportError: no adapter could carry it.
            RequestTimeoutError: no answer in time (an `asyncio.TimeoutError`).
        """
        if command.streams():
            raise TypeError(
                f"{type(command).__name__} streams: use `api.stream(...)` for its items as they "
                "come, or `api.collect(...)` for the list of them"
            )
        response = await self.send_packet(command.to_request(), timeout=timeout)
        if not response.ok:
            raise error_for_response(response)
        try:
            result: ResultT = command.result_adapter().validate_python(response.data)
        except ValidationError as exc:
            raise InvalidResultError(
                f"the result of {command.command_name()!r} does not fit its type: "
                f"{format_validation_error(exc)}",
                response=response,
            ) from None
        return result

    async def collect(
        self, command: Command[ResultT], *, timeout: float | None = None
    ) -> list[ResultT]:
        """Send a streaming command asking for no stream: every item at once, validated.

        The server answers with one array (413 when it is over its size limit: then use
        `stream`).

        Raises:
            ApiError: (a subclass per code) the server answered with an error.
            InvalidResultError: the answer does not fit a list of the command's item type.
            TransportError: no adapter could carry it.
            RequestTimeoutError: no answer in time.
        """
        response = await self.send_packet(command.to_request(), timeout=timeout)
        if not response.ok:
            raise error_for_response(response)
        try:
            items: list[ResultT] = command.result_adapter().validate_python(response.data)
        except ValidationError as exc:
            raise InvalidResultError(
                f"the items of {command.command_name()!r} do not fit their type: "
                f"{format_validation_error(exc)}",
                response=response,
            ) from None
        return items

    async def stream(
        self,
        command: Command[ResultT],
        *,
        window: int = DEFAULT_WINDOW,
        timeout: float | None = None,
    ) -> AsyncIterator[ResultT]:
        """Send a streaming command; yield its items, validated, as they come (§10).

        ``async for line in api.stream(TailLog(lines=100)): ...``. Over a WebSocket the
        server sends at most `window` items ahead of what the loop consumed; over HTTP they
        arrive as NDJSON. Leaving the loop early (``break``, an exception) or cancelling the
        task withdraws the request: the server's generator is closed. An adapter of your own
        that implements only `send_packet` gets every item at once, as one array.

        Args:
            command: a command declared with ``stream=True`` (others answer one array too).
            window: items in flight at most (WebSocket).
            timeout: seconds the whole stream may take (default: none; `self.timeout` is for
                single answers).

        Raises:
            ApiError: (a subclass per code) the stream ended with an error, after its items.
            InvalidResultError: an item does not fit the command's item type.
            TransportError: no adapter could carry it.
            RequestTimeoutError: the stream did not end within `timeout`.
        """
        adapter = command.item_adapter()
        name = command.command_name()
        items = self.sender.stream_packet(command.to_request(), window=window, timeout=timeout)
        try:
            async for item in items:
                try:
                    value: ResultT = adapter.validate_python(item)
                except ValidationError as exc:
                    raise InvalidResultError(
                        f"an item of {name!r} does not fit its type: "
                        f"{format_validation_error(exc)}",
                        response=None,
                    ) from None
                yield value
        finally:
            await aclose(items)

    async def request(
        self, command: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Send an untyped command and return its data.

        Raises:
            ApiError: the server answered with an error.
            TransportError: no adapter could carry it.
            RequestTimeoutError: no answer in time.
        """
        response = await self.send_packet(Request.make(command, params), timeout=timeout)
        if not response.ok:
            raise error_for_response(response)
        return response.data

    async def send_event(self, event: EventModel | str, data: Any = None) -> None:
        """Send an event: a typed `EventModel`, or a name and its data.

        Raises:
            TransportError: no adapter could carry it.
        """
        if isinstance(event, EventModel):
            packet = Event(name=event.event_name(), data=event.model_dump(mode="json"))
        else:
            packet = Event(name=event, data=data)
        await self.sender.send_event(packet)

    async def upload(
        self,
        source: UploadSource,
        *,
        name: str | None = None,
        progress: UploadProgress | None = None,
        upload_id: str | None = None,
    ) -> FileInfo:
        """Upload a file through the adapter (`sender.upload`), on a connection of its own.

        Arguments, result and errors: as `Adapter.upload`.
        """
        return await self.sender.upload(source, name=name, progress=progress, upload_id=upload_id)

    def on_event(
        self, model: type[EventT]
    ) -> Callable[[TypedHandler[EventT]], TypedHandler[EventT]]:
        """Register a handler for one typed event; a decorator.

        The handler receives the event's data validated into `model`; data that does not fit
        is logged and skipped.

        Example::

            @api.on_event(PlayerJoined)
            async def joined(event: PlayerJoined) -> None:
                logger.info("%s joined", event.player_name)
        """

        def register(handler: TypedHandler[EventT]) -> TypedHandler[EventT]:
            if not self._typed_handlers:
                self.sender.on_event(self._dispatch_typed)
            self._typed_handlers.setdefault(model.event_name(), []).append((model, handler))
            return handler

        return register

    async def _dispatch_typed(self, event: Event) -> None:
        for model, handler in self._typed_handlers.get(event.name, ()):
            try:
                payload = model.model_validate(event.data if event.data is not None else {})
            except ValidationError as exc:
                logger.warning(
                    "event %r does not fit %s: %s",
                    event.name,
                    model.__name__,
                    format_validation_error(exc),
                    extra=call_extra(event),
                )
                continue
            result = handler(payload)
            if inspect.isawaitable(result):
                await result
