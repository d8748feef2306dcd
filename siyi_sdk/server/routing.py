"""Typed routes: a handler per command, its params validated into the command's model."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..api.command import Command
from ..packets import Request, Response, StatusCode, format_validation_error
from .connection import Connection

__all__ = ["Route", "is_async"]


@dataclass(frozen=True, slots=True)
class Route:
    """One command's handler.

    With a `command` model, the handler is called as ``handler(connection, params)`` where
    `params` is an instance of the model; with only a name, as ``handler(connection, params)``
    where `params` is the raw dict. Its return value becomes the Response's data (a Response it
    returns is sent as is).
    """

    name: str
    handler: Callable[..., Any]
    command: type[Command[Any]] | None = None
    plain: bool = field(init=False)
    """True when the handler is a plain function (not ``async def``): it may run inline."""
    stream: bool = field(init=False)
    """True when the handler is an ``async def`` generator: its items are streamed (§10)."""

    def describe(self) -> dict[str, Any]:
        """What `/about` lists for this route."""
        described: dict[str, Any] = self.command.describe() if self.command else {"name": self.name}
        if self.stream:
            described["stream"] = True
        return described

    def __post_init__(self) -> None:
        stream = inspect.isasyncgenfunction(self.handler) or inspect.isasyncgenfunction(
            type(self.handler).__call__
        )
        if self.command is not None and self.command.streams() and not stream:
            raise TypeError(
                f"{self.command.__name__} streams: its handler must be an async generator "
                "(an `async def` that yields its items)"
            )
        object.__setattr__(self, "stream", stream)
        object.__setattr__(self, "plain", not stream and not is_async(self.handler))

    def invoke(self, connection: Connection, request: Request) -> Any:
        """Validate the params and call the handler (exceptions propagate).

        Returns:
            What the handler returned (awaitable for an ``async def`` one), or the 400
            Response when the params do not fit the command's model.
        """
        params: Any = request.params or {}
        if self.command is not None:
            try:
                params = self.command.model_validate(params)
            except ValidationError as exc:
                return Response.fail(
                    request.id,
                    f"invalid params for {self.name!r}: {format_validation_error(exc)}",
                    StatusCode.BAD_REQUEST,
                )
        return self.handler(connection, params)

    async def __call__(self, connection: Connection, request: Request) -> Response:
        """Validate the params, run the handler, wrap its result (exceptions propagate)."""
        result = self.invoke(connection, request)
        if inspect.isawaitable(result):
            return await self.finish(request, result)
        return self.wrap(request, result)

    @staticmethod
    def wrap(request: Request, result: object) -> Response:
        """A handler's result as its answer: a Response as it is, else the data of an ok one."""
        return result if isinstance(result, Response) else Response.success(request.id, result)

    async def finish(self, request: Request, pending: Awaitable[Any]) -> Response:
        """`wrap` the result of a handler's run still going (exceptions propagate)."""
        return self.wrap(request, await pending)


def is_async(handler: Callable[..., Any]) -> bool:
    """True when calling `handler` starts a coroutine (an ``async def``, or its partial)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        type(handler).__call__
    )
