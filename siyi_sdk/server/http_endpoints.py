"""The HTTP endpoints of a server: ``POST /general``, ``GET /events``, ``GET /about``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from .._version import __version__
from ..calls import Sink
from ..errors import BackplaneUnavailableError, ConnectionClosedError, ProtocolError
from ..logs import bad_packet_extra
from ..packets import (
    PROTOCOL_VERSION,
    SESSION_HEADER,
    Event,
    Request,
    Response,
    StatusCode,
    parse_message,
)
from ..wire import NDJSON
from .answers import JSON, packet_answer, refusal
from .auth import Gate
from .connection import Connection
from .dispatch import Dispatcher
from .lifecycle import Lifecycle, ServerSettings

__all__ = ["MAX_POLL_WAIT", "HttpEndpoints"]

logger = logging.getLogger(__name__)

MAX_POLL_WAIT = 60.0
"""The longest wait of one ``GET /events`` poll, in seconds (PROTOCOL.md §7)."""


class _TooLarge(Exception):
    def __init__(self, size: int | None) -> None:
        self.size = size


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body of `request`, decompressed, if it is at most `limit` bytes.

    Read here rather than by `request.read()`, whose bound is the application's
    `client_max_size` (a mounted server does not own its application).

    Raises:
        _TooLarge: the body is over `limit` (before reading it when its length says so).
        RequestPayloadError: it cannot be read (e.g. a gzip body that does not inflate).
    """
    length = request.content_length
    if length is not None and length > limit and "Content-Encoding" not in request.headers:
        raise _TooLarge(length)
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise _TooLarge(None)
    return bytes(body)


class HttpEndpoints:
    """The aiohttp handlers of the packet endpoints over HTTP."""

    def __init__(
        self, settings: ServerSettings, gate: Gate, dispatcher: Dispatcher, lifecycle: Lifecycle
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.dispatcher = dispatcher
        self.lifecycle = lifecycle

    def _too_large(self, size: int | None = None) -> web.Response:
        said = f"{size} bytes, " if size is not None else ""
        return refusal(
            413,
            StatusCode.TOO_LARGE,
            f"too large: {said}the limit is {self.settings.max_message_size} bytes",
        )

    async def general(self, request: web.Request) -> web.StreamResponse:
        """``POST /general``: one packet in, one Response out."""
        # Counted beside the request tasks of WebSockets, for stop().
        task = asyncio.current_task()
        calls = self.lifecycle.http_calls
        if task is not None:
            calls.add(task)
        try:
            reply = await self._general(request)
        finally:
            if task is not None:
                calls.discard(task)
        if type(reply) is web.Response and isinstance(reply.body, bytes):
            stats = self.lifecycle.stats  # one Response packet (a stream counts none)
            stats.http_sent += 1
            stats.http_sent_bytes += len(reply.body)
        return reply

    async def _general(self, request: web.Request) -> web.StreamResponse:
        # Everything that can refuse the call comes before its session: a refused call (401,
        # 403, 413, 400) opens none and answers no X-Siyi-Session (PROTOCOL.md §4).
        caller = await self.gate.caller(request)
        if isinstance(caller, web.Response):
            return caller
        try:
            body = await read_body(request, self.settings.max_message_size)
        except _TooLarge as exc:
            return self._too_large(exc.size)
        except RequestPayloadError as exc:
            return refusal(400, StatusCode.BAD_REQUEST, f"bad request: unreadable body: {exc}")
        stats = self.lifecycle.stats
        stats.http_received += 1
        stats.http_received_bytes += len(body)
        try:
            packet = parse_message(body)
        except ProtocolError as exc:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "bad packet in POST %s: %s",
                    request.path,
                    exc,
                    extra=bad_packet_extra(exc.packet_id, exc.packet_type, caller.session, "http"),
                )
            return packet_answer(Response.fail(exc.packet_id, str(exc), exc.code), 400)
        # Opened here, a session is provisional (§7) until its key is presented again.
        opened = await self.gate.session_of(request, caller, provisional=True)
        if isinstance(opened, web.Response):
            return opened
        session, _ = opened
        if isinstance(packet, Request):
            # Ids are scoped by session only (§6): a caller without a key has a new session,
            # so two callers can never see each other's answers, whatever ids they pick.
            if NDJSON in request.headers.get("Accept", "") and self.dispatcher.streams(packet):
                return await self._stream(request, session, packet)
            answer = self.dispatcher.answer(session, packet, "http")
            frame = answer if isinstance(answer, bytes) else await answer
            return packet_answer(frame, 200, session)
        if isinstance(packet, Event):
            await self.dispatcher.deliver(session, packet, "http")
        elif not session.resolve(packet):  # the answer to a request sent via /events
            self.gate.backplane.forward_response(session, packet)
        return packet_answer(Response.success(packet.id), 200, session)

    async def _stream(
        self, request: web.Request, session: Connection, packet: Request
    ) -> web.StreamResponse:
        """A streaming command asked for NDJSON (§10): chunk Events, then the Response.

        One packet per line, written as produced: TCP's flow control holds the generator back
        while the caller does not read.
        """
        reply = web.StreamResponse(
            headers={"Content-Type": NDJSON, SESSION_HEADER: session.session}
        )
        await reply.prepare(request)

        async def send(chunk: bytes) -> None:
            try:
                await reply.write(chunk + b"\n")
            except ConnectionError as exc:  # the caller went away: the stream ends (499)
                raise ConnectionClosedError(f"the caller of {packet.command!r} left") from exc

        frame = await self.dispatcher.handle_frame(session, packet, "http", Sink(send, None))
        with contextlib.suppress(ConnectionError):
            await reply.write(frame + b"\n")
            await reply.write_eof()
        return reply

    async def events(self, request: web.Request) -> web.Response:
        """``GET /events``: the long poll of an HTTP-only peer (§7)."""
        caller = await self.gate.caller(request)
        if isinstance(caller, web.Response):
            return caller
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            wait = math.nan
        if math.isnan(wait):
            return refusal(400, StatusCode.BAD_REQUEST, "bad request: 'wait' is seconds")
        wait = min(max(wait, 0.0), MAX_POLL_WAIT)
        opened = await self.gate.session_of(request, caller)
        if isinstance(opened, web.Response):
            return opened
        session, _ = opened
        # An empty `after` acknowledges nothing yet: unlike no `after`, it consumes nothing.
        after = request.query.get("after")
        session.receives = True
        session.polls += 1  # a poll under way is activity: the session cannot expire
        try:
            frames = await session.take(after)
            if not frames and wait > 0 and not self.lifecycle.stopping:
                await session.wait_for_packets(wait)
                frames = await session.take(None if after is None else "")
        except BackplaneUnavailableError as exc:
            return refusal(503, StatusCode.UNAVAILABLE, f"unavailable: {exc}")
        finally:
            session.polls -= 1
            self.gate.touch(session)
        stats = self.lifecycle.stats
        stats.http_sent += len(frames)
        stats.http_sent_bytes += sum(map(len, frames))
        return web.Response(
            body=b"[" + b",".join(frames) + b"]",
            content_type=JSON,
            headers={SESSION_HEADER: session.session},
        )

    async def about(self, request: web.Request) -> web.Response:
        """``GET /about``: the protocol, the version and (to a caller with the key) the API."""
        body: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "version": __version__}
        # §11: the version is open to anyone (a client checks it before authenticating); the
        # API only to a caller that presents the key.
        if self.gate.open or await self.gate.is_authorized(request):
            dispatcher = self.dispatcher
            body["commands"] = [route.describe() for route in dispatcher.routes.values()]
            # What the server takes (typed events) and what it sends (declared events and
            # commands), so that a description lists both directions.
            body["events"] = [
                {"name": name, "data": typed.model.model_json_schema()}
                for name, typed in dispatcher.typed_events.items()
            ]
            body["sends"] = {
                "events": [
                    {"name": name} | ({"data": model.model_json_schema()} if model else {})
                    for name, model in dispatcher.sends_events.items()
                ],
                "commands": [
                    model.describe() if model else {"name": name}
                    for name, model in dispatcher.sends_commands.items()
                ],
            }
        return web.Response(body=orjson.dumps(body), content_type=JSON)
