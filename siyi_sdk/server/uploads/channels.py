"""How the bytes of one part arrive: an HTTP body, or binary WebSocket frames."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, ClassVar, Literal

import orjson
from aiohttp import WSMsgType, web

from .parts import Interrupted, Refusal, Spec, parse_digests
from .records import Partial

__all__ = ["Channel", "HttpChannel", "WebSocketChannel"]


class Channel:
    """How the bytes of one part arrive.

    Attributes:
        transport: what carries it, as logs and a middleware's `ServerCall` name it.
    """

    transport: ClassVar[Literal["websocket", "http"]]

    def chunks(self, spec: Spec) -> AsyncGenerator[bytes, None]:
        """The part's bytes as they come (`Interrupted` when they stop before the end)."""
        raise NotImplementedError

    async def final_digests(self, spec: Spec, partial: Partial) -> dict[str, str]:
        """Digests that come after the bytes (none over HTTP)."""
        return {}


class HttpChannel(Channel):
    """A part as the body of ``POST /upload``."""

    transport = "http"

    def __init__(self, request: web.Request, idle_timeout: float) -> None:
        self.request = request
        self.idle_timeout = idle_timeout

    async def chunks(self, spec: Spec) -> AsyncGenerator[bytes, None]:
        """See `Channel.chunks`."""
        remaining = spec.end - spec.start
        content = self.request.content
        while remaining > 0:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    chunk = await content.readany()
            except TimeoutError:
                raise Interrupted(f"no bytes for {self.idle_timeout:g} s", stalled=True) from None
            except Exception as exc:  # whatever the transport raises, the part is over
                raise Interrupted(f"{type(exc).__name__}: {exc}") from None
            if not chunk:
                raise Interrupted(f"the body ended {remaining} bytes early")
            remaining -= len(chunk)
            yield chunk


class WebSocketChannel(Channel):
    """A part as the binary frames of a WebSocket at ``/upload``, and its digest frame."""

    transport = "websocket"

    def __init__(self, ws: web.WebSocketResponse, idle_timeout: float) -> None:
        self.ws = ws
        self.idle_timeout = idle_timeout

    async def _receive(self) -> Any:
        try:
            return await self.ws.receive(timeout=self.idle_timeout)
        except TimeoutError:
            raise Interrupted(f"no frame for {self.idle_timeout:g} s", stalled=True) from None

    async def chunks(self, spec: Spec) -> AsyncGenerator[bytes, None]:
        """See `Channel.chunks`."""
        remaining = spec.end - spec.start
        while remaining > 0:
            message = await self._receive()
            if message.type == WSMsgType.BINARY:
                remaining -= len(message.data)
                yield message.data
            elif message.type == WSMsgType.TEXT:
                raise Refusal(
                    400, f"bad request: {remaining} bytes were still due in binary frames"
                )
            else:
                raise Interrupted(f"the WebSocket closed ({message.type.name})")

    async def final_digests(self, spec: Spec, partial: Partial) -> dict[str, str]:
        """The digest frame that follows the bytes, unless the header gave the digests."""
        if spec.digests:
            return {}  # given up front: nothing more to wait for
        message = await self._receive()
        if message.type == WSMsgType.BINARY:
            raise Refusal(
                400,
                f"bad request: size mismatch: more than the declared {partial.size} bytes; "
                "nothing was kept",
                discard=True,
            )
        if message.type != WSMsgType.TEXT:
            raise Interrupted(f"the WebSocket closed ({message.type.name}) before the digest")
        try:
            frame = orjson.loads(message.data)
        except orjson.JSONDecodeError:
            raise Refusal(400, "bad request: the digest frame is not JSON") from None
        if not isinstance(frame, dict):
            raise Refusal(400, "bad request: the digest frame must be a JSON object")
        return parse_digests(frame.get("md5"), frame.get("sha256"))
