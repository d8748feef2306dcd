"""The HTTP side of uploads: ``POST /upload`` and ``GET /upload/{upload_id}``.

``POST`` carries one part as the raw body; ``GET`` tells where an upload stands. Both
authenticate like ``/general`` (`Gate.open_session`) and answer with one Response packet (the
status, with ``X-Siyi-Session``); a part is taken by the `Receiver`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from ...packets import MAX_ID_LENGTH, SESSION_HEADER, StatusCode
from ...wire import (
    FILE_MD5_HEADER,
    FILE_NAME_HEADER,
    FILE_SHA256_HEADER,
    UPLOAD_ID_HEADER,
    UPLOAD_RECEIVED_HEADER,
)
from ..answers import packet_answer, refusal
from ..auth import Gate
from ..connection import Connection
from ..lifecycle import Lifecycle
from .channels import HttpChannel
from .names import sanitize_filename
from .options import UploadOptions
from .parts import RANGE, UPLOAD_ID, Answer, Refusal, Spec, fail, parse_digests, unknown
from .receiver import Receiver
from .records import wire
from .store import UploadStore

__all__ = ["HttpEndpoints"]


class HttpEndpoints:
    """The HTTP routes of uploads (`Uploads.setup` adds them).

    Args:
        options: the service's settings.
        gate: the server's authentication and sessions.
        lifecycle: the server's lifecycle (a stopping server takes no new upload).
        store: where the uploads are kept.
        receiver: what takes a part.
    """

    def __init__(
        self,
        options: UploadOptions,
        gate: Gate,
        lifecycle: Lifecycle,
        store: UploadStore,
        receiver: Receiver,
    ) -> None:
        self._options = options
        self._gate = gate
        self._lifecycle = lifecycle
        self._store = store
        self._receiver = receiver

    def _answer(
        self, answer: Answer, session: Connection | None, opened_here: bool = False
    ) -> web.Response:
        if opened_here and session is not None and answer.status >= 400:
            # A refused call opens no session (PROTOCOL.md §4): the one this call opened goes.
            self._gate.sessions.discard(session)
            session.end()
            session = None
        reply = packet_answer(answer.response, answer.status, session)
        if answer.received is not None:
            reply.headers[UPLOAD_RECEIVED_HEADER] = str(answer.received)
        return reply

    def _declared_total(self, request: web.BaseRequest) -> int | None:
        match = RANGE.fullmatch(request.headers.get("Content-Range", "").strip())
        if match is not None:
            return int(match.group(3))
        return request.content_length

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """The ``expect_handler`` of ``POST /upload`` (None: go on and read the body)."""
        # "Expect: 100-continue": refuse an oversized upload before its body is sent at all.
        total = self._declared_total(request)
        if total is not None and total > self._options.max_size:
            return self._answer(
                fail(None, 413, f"too large: {total} bytes, the limit is {self._options.max_size}"),
                None,
            )
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers['Expect']}")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    def _http_spec(self, request: web.Request) -> Spec:
        raw_id = request.headers.get(UPLOAD_ID_HEADER)
        if raw_id is not None and not UPLOAD_ID.fullmatch(raw_id):
            raise Refusal(
                400,
                f"bad request: {UPLOAD_ID_HEADER} must be 1 to {MAX_ID_LENGTH} printable "
                "ASCII characters",
            )
        length = request.content_length
        if length is None:
            raise Refusal(411, "bad request: Content-Length is required", code=400)
        name = sanitize_filename(
            unquote(request.headers.get(FILE_NAME_HEADER, ""), errors="replace")
        )
        digests = parse_digests(
            request.headers.get(FILE_MD5_HEADER), request.headers.get(FILE_SHA256_HEADER)
        )
        content_range = request.headers.get("Content-Range")
        if content_range is None:
            start, end, size = 0, length, length
        else:
            match = RANGE.fullmatch(content_range.strip())
            if match is None:
                raise Refusal(400, "bad request: Content-Range must be 'bytes START-END/TOTAL'")
            size = int(match.group(3))
            if match.group(1) is None:  # "bytes */TOTAL": nothing more to send
                start = end = size
            else:
                start, end = int(match.group(1)), int(match.group(2)) + 1
            if end - start != length or start > end or end > size:
                raise Refusal(
                    400,
                    f"bad request: Content-Range {content_range!r} does not fit "
                    f"Content-Length {length}",
                )
        upload_id = raw_id or uuid.uuid4().hex
        return Spec(upload_id, raw_id is not None, name, size, start, end, digests)

    async def post(self, request: web.Request) -> web.StreamResponse:
        """``POST /upload``: one part of an upload as the raw body."""
        if self._lifecycle.stopping:
            return refusal(503, StatusCode.UNAVAILABLE, "unavailable: shutting down")
        opened = await self._gate.open_session(request)
        if isinstance(opened, web.Response):
            return opened
        session, found = opened
        try:
            spec = self._http_spec(request)
        except Refusal as exc:
            return self._answer(fail(None, exc.status, str(exc), exc.code), session, not found)
        channel = HttpChannel(request, self._options.idle_timeout)
        answer = await self._receiver.receive(spec, session, channel, request.transport)
        if answer is None:  # cut off: nobody is left to answer
            answer = fail(spec.upload_id, 400, "bad request: the body was cut short")
        return self._answer(answer, session, not found)

    async def status(self, request: web.Request) -> web.StreamResponse:
        """``GET /upload/{upload_id}``: how much of an upload the server has."""
        opened = await self._gate.open_session(request)
        if isinstance(opened, web.Response):
            return opened
        session, found = opened
        upload_id = request.match_info["upload_id"]
        caller = session.principal
        if not self._store.may_know(upload_id, caller):
            return self._answer(unknown(upload_id), session, not found)
        lock = self._store.running(upload_id)
        if lock is not None and lock.locked():
            # A part is ending (its connection just dropped): report where it stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._options.busy_wait):
                    async with lock:
                        pass
        done = self._store.completed.get(upload_id)
        if done is not None:
            if not done.owner.admits(caller):
                return self._answer(unknown(upload_id), session, not found)
            stored = done.stored
            body: dict[str, Any] = {
                "upload_id": upload_id,
                "received": stored.size,
                "size": stored.size,
                "file": wire(stored),
            }
        else:
            partial = await self._store.find(upload_id) if self._store.partial_directory else None
            if partial is None or not partial.owner.admits(caller):
                return self._answer(unknown(upload_id), session, not found)
            body = partial.status()
        return web.json_response(
            body,
            dumps=lambda o: orjson.dumps(o).decode(),
            headers={SESSION_HEADER: session.session},
        )
