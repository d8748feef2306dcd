"""Uploads on their own connection: streamed, checksummed, resumable (PROTOCOL.md §8).

The client's upload engine. `WebSocketAdapter.upload` and `HttpAdapter.upload` describe where
and how they upload (an `UploadTarget`) and call `run_upload`:

- over a WebSocket at ``ws(s)://host:port/upload`` beside the packet one: a header frame, the
  bytes in binary frames, and the MD5 in a last text frame; it hashes while it streams, so a
  file is read once;
- or with ``POST {base_url}/upload`` and the raw body; the digest travels in a header, before
  the body, so the file is hashed first (read twice).

Both name the upload with an id (a UUID4 unless the caller gives one) and resume after a drop:
they ask ``GET /upload/{id}`` how much arrived and send the rest, from that offset. The digest
covers the whole file: the WebSocket path keeps MD5 states at chunk boundaries (a bounded set)
and continues from the one at or before the server's offset, re-reading only the gap. What the
server shares with this module (header names, `FileInfo`) is in `siyi_sdk.wire`; where the
endpoint is and how its answers read is in `siyi_sdk.adapters.upload_endpoint`.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import orjson
from tenacity import RetryCallState, stop_after_attempt

from ..errors import BadRequestError, BusyError, TransportError, UnauthorizedError
from ..logs import call_extra
from ..retry import backoff
from ..wire import FILE_MD5_HEADER, FILE_NAME_HEADER, UPLOAD_ID_HEADER, FileInfo
from .tls import certificate_error, client_session
from .upload_endpoint import (
    MisplacedError,
    UploadTarget,
    fetch_status,
    read_answer,
    upload_urls,
)
from .upload_source import (
    CHUNK_SIZE,
    Hasher,
    Snapshots,
    Source,
    UploadProgress,
    UploadSource,
    hash_range,
    open_source,
    read_and_hash,
)

# UploadTarget and upload_urls live in upload_endpoint; they stay importable from here.
__all__ = ["UploadTarget", "run_upload", "upload_urls"]

logger = logging.getLogger(__name__)


_RETRY_ON = (TransportError, BusyError, MisplacedError)


class _Upload:
    """One upload through one target, with its resumes."""

    def __init__(
        self,
        target: UploadTarget,
        source: Source,
        progress: UploadProgress | None,
        upload_id: str | None,
    ) -> None:
        self.target = target
        self.source = source
        self.progress = progress
        self.upload_id = upload_id or str(uuid.uuid4())
        # A caller-given id may name an upload that already began (in another process, or
        # through another adapter): ask the server before sending anything.
        self._ask_first = upload_id is not None
        self._snapshots = Snapshots()
        self._md5: str | None = None
        self._http: aiohttp.ClientSession | None = None

    async def run(self) -> FileInfo:
        retrying = backoff(
            self.target.reconnect_interval,
            self.target.max_reconnect_interval,
            self.target.sleep,
            _RETRY_ON,
            self._log_retry,
        ).copy(stop=stop_after_attempt(max(1, self.target.attempts)))
        async with client_session(self.target.ssl) as self._http:
            ask = self._ask_first
            async for attempt in retrying:
                with attempt:
                    offset = 0
                    if ask:
                        status = await fetch_status(self.target, self._http, self.upload_id)
                        if status is not None:
                            if status.size != self.source.size:
                                raise BadRequestError(
                                    f"upload {self.upload_id!r} is a different file on the "
                                    f"server ({status.size} bytes, not {self.source.size})"
                                )
                            if status.file is not None:
                                return status.file  # it completed; the answer was lost
                            offset = status.received
                    ask = True  # from now on every attempt is a resume
                    try:
                        if self.target.ws_url is not None:
                            return await self._websocket_part(offset)
                        return await self._http_part(offset)
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        if isinstance(exc, TransportError):
                            raise
                        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
                            raise certificate_error(
                                exc, self.target.ws_url or self.target.url
                            ) from exc
                        raise TransportError(
                            f"{self.target.label}: upload interrupted: {type(exc).__name__}: {exc}"
                        ) from exc
        raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        transport = "websocket" if self.target.ws_url is not None else "http"
        logger.info(
            "%s: upload %s of %r interrupted (%s); resuming in %.2f s",
            self.target.label,
            self.upload_id,
            self.source.name,
            exc,
            delay,
            extra=call_extra(
                session=self.target.session, transport=transport, upload_id=self.upload_id
            ),
        )

    async def _report(self, sent: int) -> None:
        if self.progress is not None:
            result = self.progress(sent, self.source.size)
            if inspect.isawaitable(result):
                await result

    # HTTP ------------------------------------------------------------------------------------

    async def _http_part(self, offset: int) -> FileInfo:
        assert self._http is not None
        size = self.source.size
        if self._md5 is None:
            # The digest header goes before the body: hash the whole source first.
            hasher = hashlib.md5(usedforsecurity=False)
            await asyncio.to_thread(hash_range, self.source, hasher, 0, size)
            self._md5 = hasher.hexdigest()
        headers = {
            **self.target.headers(),
            UPLOAD_ID_HEADER: self.upload_id,
            FILE_NAME_HEADER: quote(self.source.name, safe=""),
            FILE_MD5_HEADER: self._md5,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size - offset),
        }
        if offset:
            headers["Content-Range"] = (
                f"bytes {offset}-{size - 1}/{size}" if offset < size else f"bytes */{size}"
            )
        # No answer timeout while the body goes out (that takes what it takes); once it is
        # out, the answer must come within `answer_timeout`.
        async with asyncio.timeout(None) as deadline:

            async def body() -> AsyncIterator[bytes]:
                position = offset
                while position < size:
                    chunk = await asyncio.to_thread(self.source.read, position, CHUNK_SIZE)
                    yield chunk
                    position += len(chunk)
                    await self._report(position)
                if self.target.answer_timeout is not None:
                    loop = asyncio.get_running_loop()
                    deadline.reschedule(loop.time() + self.target.answer_timeout)

            async with self._http.post(
                self.target.url,
                data=body() if offset < size else b"",
                headers=headers,
                expect100=offset < size,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.target.connect_timeout),
            ) as reply:
                self.target.session.adopt(reply.headers, self.target.label)
                answer = await reply.read()
        return read_answer(self.target.label, f"HTTP {reply.status}", answer)

    # WebSocket -------------------------------------------------------------------------------

    async def _hasher_at(self, offset: int) -> Hasher:
        base, hasher = self._snapshots.at_or_before(offset)
        if base < offset:
            await asyncio.to_thread(hash_range, self.source, hasher, base, offset)
        return hasher

    async def _websocket_part(self, offset: int) -> FileInfo:
        assert self._http is not None
        assert self.target.ws_url is not None
        size = self.source.size
        hasher = await self._hasher_at(offset)
        try:
            ws = await self._http.ws_connect(
                self.target.ws_url,
                headers=self.target.headers(),
                heartbeat=self.target.heartbeat,
                timeout=aiohttp.ClientWSTimeout(ws_close=10.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise UnauthorizedError(f"{self.target.ws_url} refused the key") from exc
            raise TransportError(
                f"{self.target.ws_url}: the upload WebSocket was refused (HTTP {exc.status})"
            ) from exc
        async with ws:
            header = {
                "upload_id": self.upload_id,
                "name": self.source.name,
                "size": size,
                "offset": offset,
            }
            await ws.send_str(orjson.dumps(header).decode())
            # The server may answer early (a refusal): listen while sending.
            answer = asyncio.ensure_future(ws.receive())
            loop = asyncio.get_running_loop()
            reading: asyncio.Future[tuple[bytes, Hasher]] | None = None
            try:
                position = offset
                if position < size:
                    reading = loop.run_in_executor(
                        None, read_and_hash, self.source, position, hasher
                    )
                while reading is not None and not answer.done():
                    chunk, state = await reading
                    reading = None
                    after = position + len(chunk)
                    if after < size:  # read the next chunk while this one goes out
                        reading = loop.run_in_executor(
                            None, read_and_hash, self.source, after, hasher
                        )
                    try:
                        await ws.send_bytes(chunk)
                    except (aiohttp.ClientError, OSError):
                        if answer.done():
                            break  # the server said why it stopped reading
                        raise
                    position = after
                    self._snapshots.add(position, state)
                    await self._report(position)
                if not answer.done():
                    await ws.send_str(orjson.dumps({"md5": hasher.hexdigest()}).decode())
                async with asyncio.timeout(self.target.answer_timeout):
                    message = await answer
            finally:
                if not answer.done():
                    answer.cancel()
                if reading is not None:
                    # A worker thread cannot be cancelled: let it finish with the hasher.
                    await asyncio.gather(reading, return_exceptions=True)
        if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return read_answer(self.target.label, "WebSocket", message.data)
        raise TransportError(
            f"{self.target.ws_url}: the upload connection closed before the answer "
            f"({message.type.name}, code {ws.close_code})"
        )


async def run_upload(
    target: UploadTarget,
    source: UploadSource,
    *,
    name: str | None,
    progress: UploadProgress | None,
    upload_id: str | None,
) -> FileInfo:
    """Upload `source` to `target`, resuming after drops: the body of the adapters' ``upload``.

    Arguments, result and errors: as `Adapter.upload`.
    """
    async with open_source(source, name) as src:
        return await _Upload(target, src, progress, upload_id).run()
