"""Command[ResultT]: a typed command, whose fields are its params.

Declare one per command, on both sides of the wire::

    class GetPlayerList(Command[list[str]]):
        __command__ = "get_player_list"   # optional: defaults to the snake_case class name
        world: str = "overworld"

The client sends it with ``await api.call(GetPlayerList(world="nether"))`` and gets a validated
``list[str]``; the server routes it with ``@server.command(GetPlayerList)``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter

from ..packets import Request

__all__ = ["Command", "EventModel", "ResultT"]

ResultT = TypeVar("ResultT")

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """``GetPlayerList`` -> ``get_player_list``."""
    return _CAMEL.sub("_", name).lower()


class _ResultAdapters:
    """Per-class cache of the TypeAdapter validating a command's result."""

    cache: ClassVar[dict[type[Any], TypeAdapter[Any]]] = {}
    items: ClassVar[dict[type[Any], TypeAdapter[Any]]] = {}


class Command(BaseModel, Generic[ResultT]):
    """Base class of typed commands: fields are the params, `ResultT` the result's type.

    A command whose handler yields its results one by one declares ``stream=True``; its
    `ResultT` is then the type of one item::

        class TailLog(Command[LogLine], stream=True):
            lines: int = 10

    ``async for line in api.stream(TailLog())`` gets them as they come, typed ``LogLine``
    (PROTOCOL.md §10); ``await api.call(TailLog())`` gets them all at once, as a list.

    Class attributes:
        __command__: the wire name (defaults to the class name in snake_case).
    """

    model_config = ConfigDict(extra="forbid")

    __command__: ClassVar[str] = ""
    __result_type__: ClassVar[Any] = Any
    __stream__: ClassVar[bool] = False

    def __init_subclass__(cls, stream: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if stream is not None:
            cls.__stream__ = stream

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # The result type is the argument of the Command[...] base this class derives from.
        for klass in cls.__mro__:
            meta = getattr(klass, "__pydantic_generic_metadata__", None)
            if meta and meta.get("origin") is Command and meta.get("args"):
                cls.__result_type__ = meta["args"][0]
                break

    @classmethod
    def command_name(cls) -> str:
        """The wire name of this command."""
        return cls.__command__ or snake_case(cls.__name__)

    @classmethod
    def streams(cls) -> bool:
        """True for a command declared with ``stream=True``."""
        return cls.__stream__

    @classmethod
    def result_adapter(cls) -> TypeAdapter[Any]:
        """The TypeAdapter that validates this command's result (built once per class).

        For a streaming command, the result of `Api.call` is the list of its items.
        """
        adapter = _ResultAdapters.cache.get(cls)
        if adapter is None:
            result = list[cls.__result_type__] if cls.__stream__ else cls.__result_type__  # type: ignore[name-defined]
            adapter = _ResultAdapters.cache[cls] = TypeAdapter(result)
        return adapter

    @classmethod
    def item_adapter(cls) -> TypeAdapter[Any]:
        """The TypeAdapter that validates one item of a streaming command."""
        adapter = _ResultAdapters.items.get(cls)
        if adapter is None:
            adapter = _ResultAdapters.items[cls] = TypeAdapter(cls.__result_type__)
        return adapter

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, params JSON Schema and result JSON Schema (what `/about` lists).

        A streaming command has ``"stream": true`` and its `result` describes one item.
        """
        described: dict[str, Any] = {
            "name": cls.command_name(),
            "params": cls.model_json_schema(),
            "result": cls.item_adapter().json_schema(),
        }
        if cls.__stream__:
            described["stream"] = True
        return described

    def params(self) -> dict[str, Any]:
        """The params as a JSON-ready dict."""
        return self.model_dump(mode="json")

    def to_request(self) -> Request:
        """Build the Request packet for this command (with a fresh id)."""
        return Request.make(self.command_name(), self.params())


class EventModel(BaseModel):
    """Base class of typed events: fields are the event's data.

    Class attributes:
        __event__: the wire name (defaults to the class name in snake_case).
    """

    model_config = ConfigDict(extra="ignore")

    __event__: ClassVar[str] = ""

    @classmethod
    def event_name(cls) -> str:
        """The wire name of this event."""
        return cls.__event__ or snake_case(cls.__name__)
