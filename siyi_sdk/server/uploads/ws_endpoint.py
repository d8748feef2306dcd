"""The WebSocket side of uploads, at ``/upload``.

A header text frame, binary frames, and (when the header had no digest) a last text frame with
the digests; one Response frame back.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import orjson
from aiohttp import WSMsgType, web
from pydantic import ValidationError

from ...outcome import encode_response
from ...packets import MAX_ID_LENGTH, SESSION_HEADER, StatusCode, format_validation_error
from ..answers import refusal
from ..auth import Gate
from ..connection import Connection
from ..lifecycle import Lifecycle, ServerSettings
from .channels import WebSocketChannel
from .names import sanitize_filename
from .options import UploadOptions
from .parts import UPLOAD_ID, Answer, Refusal, Spec, WsHeader, fail, parse_digests
from .receiver import Receiver

__all__ = ["WebSocketEndpoint"]


class WebSocketEndpoint:
    """The WebSocket route of uploads (`Uploads.setup` adds it).

    Args:
        options: the service's settings.
        settings: the server's settings (the heartbeat of the socket).
        gate: the server's authentication and sessions.
        lifecycle: the server's lifecycle (a stopping server takes no new upload).
        receiver: what takes a part.
    """

    def __init__(
        self,
        options: UploadOptions,
        settings: ServerSettings,
        gate: Gate,
        lifecycle: Lifecycle,
        receiver: Receiver,
    ) -> None:
        self._options = options
        self._settings = settings
        self._gate = gate
        self._lifecycle = lifecycle
        self._receiver = receiver

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /upload``: a WebSocket carrying one upload (426 for a plain GET)."""
        ws = web.WebSocketResponse(
            heartbeat=self._settings.heartbeat_interval,
            max_msg_size=self._options.frame_limit,
            autoping=True,
        )
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {"error": f"POST a file to {self._options.path}, or open a WebSocket here"},
                status=426,
                headers={"Upgrade": "websocket"},
            )
        if self._lifecycle.stopping:
            return refusal(503, StatusCode.UNAVAILABLE, "unavailable: shutting down")
        opened = await self._gate.open_session(request)
        if isinstance(opened, web.Response):
            return opened
        session, _ = opened
        ws.headers[SESSION_HEADER] = session.session
        await ws.prepare(request)
        try:
            answer = await self._websocket_upload(ws, session, request.transport)
            if answer is not None and not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(encode_response(answer.response).decode())
        finally:
            await ws.close()
        return ws

    async def _websocket_upload(
        self, ws: web.WebSocketResponse, session: Connection, transport: asyncio.Transport | None
    ) -> Answer | None:
        try:
            message = await ws.receive(timeout=self._options.idle_timeout)
        except TimeoutError:
            return fail(None, 408, "timeout: no header frame", StatusCode.TIMEOUT)
        if message.type != WSMsgType.TEXT:
            if message.type == WSMsgType.BINARY:
                return fail(None, 400, "bad request: the first frame must be the header")
            return None
        try:
            header = WsHeader.model_validate(orjson.loads(message.data))
            digests = parse_digests(header.md5, header.sha256)
        except orjson.JSONDecodeError as exc:
            return fail(None, 400, f"bad request: the header is not JSON: {exc}")
        except ValidationError as exc:
            return fail(None, 400, f"bad request: invalid header: {format_validation_error(exc)}")
        except Refusal as exc:
            return fail(None, exc.status, str(exc), exc.code)
        if header.upload_id is not None and not UPLOAD_ID.fullmatch(header.upload_id):
            return fail(
                None,
                400,
                f"bad request: upload_id must be 1 to {MAX_ID_LENGTH} printable ASCII characters",
            )
        if header.offset > header.size:
            return fail(header.upload_id, 400, "bad request: offset is past size")
        spec = Spec(
            upload_id=header.upload_id or uuid.uuid4().hex,
            resumable=header.upload_id is not None,
            name=sanitize_filename(header.name),
            size=header.size,
            start=header.offset,
            end=header.size,
            digests=digests,
        )
        return await self._receiver.receive(
            spec, session, WebSocketChannel(ws, self._options.idle_timeout), transport
        )
