"""Typed routes: a handler per command, its params validated into the command's model."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..api.command import Command
from ..packets import Request, Response, StatusCode, format_validation_error
from .connection import Connection

__all__ = ["Route"]


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

    def describe(self) -> dict[str, Any]:
        """What `/about` lists for this route."""
        if self.command is not None:
            return self.command.describe()
        return {"name": self.name}

    async def __call__(self, connection: Connection, request: Request) -> Response:
        """Validate the params, run the handler, wrap its result (exceptions propagate)."""
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
        result = self.handler(connection, params)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, Response):
            return result
        return Response.success(request.id, result)
