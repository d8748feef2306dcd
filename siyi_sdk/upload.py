"""Uploads on their own connection: streamed, checksummed, resumable (PROTOCOL.md §8).

The client side of uploads, and what both sides share: the `FileInfo` a server answers with,
and the names of the headers. Adapters call in here from their ``upload()`` methods:

- `WebSocketAdapter.upload` (so `ProtocolClient.upload`) opens a WebSocket at
  ``ws(s)://host:port/upload`` beside the packet one, sends a header frame, the bytes in binary
  frames, and the MD5 in a last text frame: it hashes while it streams, so a file is read once.
- `HttpAdapter.upload` POSTs the raw body to ``{base_url}/upload``; the digest travels in a
  header, before the body, so the file is hashed first (read twice).

Both name the upload with an id (a UUID4 unless the caller gives one) and resume after a drop:
they ask ``GET /upload/{id}`` how much arrived and send the rest, from that offset. The digest
covers the whole file: the WebSocket path keeps MD5 states at chunk boundaries (a bounded set)
and continues from the one at or before the server's offset, re-reading only the gap.

A source is a path, bytes, a binary file object, or an async iterator of bytes. A file object
that cannot seek and an async iterator are first spooled to a temporary file (on disk, never in
memory), so that their size is known and a resume can re-read them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import inspect
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TypeAlias, cast
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from tenacity import RetryCallState, stop_after_attempt

from .adapters.base import SessionRef, backoff
from .adapters.tls import SSLOption, certificate_error, client_session
from .errors import (
    BadRequestError,
    BusyError,
    ProtocolError,
    TransportError,
    UnauthorizedError,
    error_for_response,
)
from .packets import Response, parse_message

if TYPE_CHECKING:
    from .adapters.http import HttpAdapter
    from .adapters.websocket import WebSocketAdapter

__all__ = [
    "FILE_MD5_HEADER",
    "FILE_NAME_HEADER",
    "FILE_SHA256_HEADER",
    "RESUME_FROM",
    "UPLOAD_ID_HEADER",
    "UPLOAD_PATH",
    "UPLOAD_RECEIVED_HEADER",
    "FileInfo",
    "UploadProgress",
    "UploadSource",
    "http_upload",
    "websocket_upload",
]

logger = logging.getLogger(__name__)

UPLOAD_PATH: Final = "/upload"
"""The default path of the upload endpoints (POST, WebSocket, and GET ``/upload/{id}``)."""
UPLOAD_ID_HEADER: Final = "X-Siyi-Upload-Id"
"""The client-chosen id of an upload (needed to resume it)."""
FILE_NAME_HEADER: Final = "X-Siyi-File-Name"
"""The file's name, percent-encoded UTF-8."""
FILE_MD5_HEADER: Final = "X-Siyi-File-MD5"
"""The whole file's MD5, hex."""
FILE_SHA256_HEADER: Final = "X-Siyi-File-SHA256"
"""The whole file's SHA-256, hex."""
UPLOAD_RECEIVED_HEADER: Final = "X-Siyi-Upload-Received"
"""Sent by the server with a 400 for a part that starts elsewhere: the bytes it has."""
RESUME_FROM: Final = "resume from byte"
"""How the error message of that 400 begins (``resume from byte N: ...``)."""

CHUNK_SIZE: Final = 256 * 1024
"""Bytes per WebSocket frame and per read from the source."""
DEFAULT_ATTEMPTS: Final = 5
"""Attempts at one upload (the first and the resumes) before giving up."""

UploadSource: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | AsyncIterable[bytes]
)
"""What can be uploaded: a path, bytes, a binary file object, or an async iterator of bytes."""
UploadProgress: TypeAlias = Callable[[int, int], Awaitable[None] | None]
"""``progress(sent_bytes, total_bytes)``, sync or async, called as bytes go out."""


class FileInfo(BaseModel):
    """A file the server stored: the data of the answer to a successful upload.

    Attributes:
        file_id: the server's id of the stored file.
        name: the name it is stored under: sanitised, so it may differ from the name sent.
        size: its size in bytes.
        md5: the MD5 of its content, hex.
        sha256: the SHA-256 of its content, hex.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    file_id: str
    name: str
    size: int
    md5: str
    sha256: str


# Sources -------------------------------------------------------------------------------------


class _Source:
    """Bytes of a known size that can be read from any offset, in a worker thread."""

    def __init__(
        self,
        name: str,
        size: int,
        read_at: Callable[[int, int], bytes],
        close: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.size = size
        self._read_at = read_at
        self._close = close

    def read(self, offset: int, length: int) -> bytes:
        """Blocking: `length` bytes from `offset` (fewer only at the end)."""
        data = self._read_at(offset, min(length, self.size - offset))
        if len(data) < min(length, self.size - offset):
            raise EOFError(f"{self.name}: the source ended early, at byte {offset + len(data)}")
        return data

    def close(self) -> None:
        """Blocking: release what the source opened."""
        if self._close is not None:
            self._close()


def _file_reader(file: IO[bytes], base: int) -> Callable[[int, int], bytes]:
    def read_at(offset: int, length: int) -> bytes:
        file.seek(base + offset)
        parts: list[bytes] = []
        while length > 0:
            data = file.read(length)
            if not data:
                break
            if not isinstance(data, bytes | bytearray):
                raise TypeError("upload() needs a binary file object (opened with 'rb')")
            parts.append(bytes(data))
            length -= len(data)
        return b"".join(parts)

    return read_at


def _open_path(path: Path, name: str | None) -> _Source:
    file = path.open("rb")
    size = os.fstat(file.fileno()).st_size
    return _Source(name or path.name, size, _file_reader(file, 0), file.close)


def _default_name(source: object) -> str | None:
    if isinstance(source, str | os.PathLike):
        return Path(source).name or None
    raw = getattr(source, "name", None)
    return Path(raw).name if isinstance(raw, str) and raw else None


def _too_kind(source: object) -> TypeError:
    return TypeError(
        "upload() takes a path, bytes, a binary file object or an async iterator of bytes, "
        f"not {type(source).__name__}"
    )


@contextlib.asynccontextmanager
async def open_source(source: UploadSource, name: str | None) -> AsyncIterator[_Source]:
    """Turn what the caller passed into a re-readable `_Source`; release it on exit.

    Raises:
        TypeError: `source` is none of the supported kinds.
        OSError: a path cannot be opened.
    """
    name = name or _default_name(source)
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        yield _Source(name or "upload", len(view), lambda o, n: bytes(view[o : o + n]))
        return
    if isinstance(source, str | os.PathLike):
        src = await asyncio.to_thread(_open_path, Path(source), name)
    elif hasattr(source, "read"):
        file = cast(IO[bytes], source)
        if await asyncio.to_thread(file.seekable):
            base = await asyncio.to_thread(file.tell)
            end = await asyncio.to_thread(file.seek, 0, os.SEEK_END)
            # The caller's file: read, never closed.
            src = _Source(name or "upload", end - base, _file_reader(file, base))
        else:
            src = await _spooled(_read_chunks(file), name)
    elif hasattr(source, "__aiter__"):
        src = await _spooled(source, name)
    else:
        raise _too_kind(source)
    try:
        yield src
    finally:
        await asyncio.to_thread(src.close)


@contextlib.asynccontextmanager
async def replayable(
    source: UploadSource, name: str | None
) -> AsyncIterator[tuple[UploadSource, str | None, Callable[[], None]]]:
    """Make `source` readable by several uploads in turn (an AdapterManager's failover).

    Paths and bytes already are. A seekable file object is rewound to where it stood before
    each attempt. Anything else is spooled once to a temporary file.

    Yields:
        The source to hand to each adapter, its name, and ``rewind()`` to call before each.
    """
    name = name or _default_name(source)
    if isinstance(source, bytes | bytearray | memoryview | str | os.PathLike):
        yield source, name, lambda: None
        return
    if hasattr(source, "read"):
        file = cast(IO[bytes], source)
        if await asyncio.to_thread(file.seekable):
            start = await asyncio.to_thread(file.tell)

            def rewind_file() -> None:
                file.seek(start)

            yield file, name, rewind_file
            return
        chunks: AsyncIterable[bytes] = _read_chunks(file)
    elif hasattr(source, "__aiter__"):
        chunks = source
    else:
        raise _too_kind(source)
    spool = await _spool(chunks)

    def rewind_spool() -> None:
        spool.seek(0)

    try:
        yield spool, name, rewind_spool
    finally:
        await asyncio.to_thread(spool.close)


async def _read_chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    while data := await asyncio.to_thread(file.read, CHUNK_SIZE):
        yield data


async def _spool(chunks: AsyncIterable[bytes]) -> IO[bytes]:
    """Copy a stream to a temporary file (on disk, never in memory), positioned at 0."""
    spool = await asyncio.to_thread(tempfile.TemporaryFile)
    try:
        async for chunk in chunks:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"an upload stream must yield bytes, not {type(chunk).__name__}")
            await asyncio.to_thread(spool.write, chunk)
        await asyncio.to_thread(spool.seek, 0)
    except BaseException:
        await asyncio.to_thread(spool.close)
        raise
    return spool


async def _spooled(chunks: AsyncIterable[bytes], name: str | None) -> _Source:
    spool = await _spool(chunks)
    size = await asyncio.to_thread(spool.seek, 0, os.SEEK_END)
    return _Source(name or "upload", size, _file_reader(spool, 0), spool.close)


# Digests -------------------------------------------------------------------------------------

_Hasher: TypeAlias = "hashlib._Hash"


class _Snapshots:
    """MD5 states at chunk boundaries, to continue hashing from where the server stopped.

    Bounded: every state within the last `window` bytes sent (where a cut can leave the
    server), plus one every `spacing` bytes before that. A resume at an offset between two
    states starts from the one before it and re-reads the gap.
    """

    def __init__(self, window: int = 32 * 1024 * 1024, spacing: int = 16 * 1024 * 1024) -> None:
        self._window = window
        self._spacing = spacing
        self._offsets: list[int] = [0]
        self._states: dict[int, _Hasher] = {0: hashlib.md5(usedforsecurity=False)}
        self._checkpoints: set[int] = {0}

    def add(self, offset: int, state: _Hasher) -> None:
        """Keep `state`, the MD5 of the first `offset` bytes (offsets come in increasing)."""
        last = self._offsets[-1]
        if offset <= last:
            return
        if offset // self._spacing != last // self._spacing:
            self._checkpoints.add(offset)
        self._offsets.append(offset)
        self._states[offset] = state
        horizon = offset - self._window
        keep = [o for o in self._offsets if o >= horizon or o in self._checkpoints]
        if len(keep) != len(self._offsets):
            for dropped in set(self._offsets) - set(keep):
                del self._states[dropped]
            self._offsets = keep

    def at_or_before(self, offset: int) -> tuple[int, _Hasher]:
        """The latest state at or before `offset` (a copy), and the offset it stands for.

        The states after `offset` are forgotten: sending resumes from there.
        """
        index = bisect.bisect_right(self._offsets, offset) - 1
        base = self._offsets[index]
        for dropped in self._offsets[index + 1 :]:
            del self._states[dropped]
            self._checkpoints.discard(dropped)
        self._offsets = self._offsets[: index + 1]
        return base, self._states[base].copy()


def _hash_range(source: _Source, hasher: _Hasher, start: int, end: int) -> None:
    """Blocking: feed bytes ``start:end`` of `source` to `hasher`."""
    while start < end:
        data = source.read(start, min(1024 * 1024, end - start))
        hasher.update(data)
        start += len(data)


def _read_and_hash(source: _Source, offset: int, hasher: _Hasher) -> tuple[bytes, _Hasher]:
    """Blocking: the chunk at `offset`, fed to `hasher`; returns it and the state after it."""
    data = source.read(offset, CHUNK_SIZE)
    hasher.update(data)
    return data, hasher.copy()


# The upload ----------------------------------------------------------------------------------


@dataclass
class _Target:
    """Where and how one adapter uploads."""

    label: str
    url: str  # POST here; GET {url}/{id} for the status
    ws_url: str | None  # the WebSocket channel, None to POST
    headers: Callable[[], dict[str, str]]
    session: SessionRef
    sleep: Callable[[float], Awaitable[None]]
    reconnect_interval: float
    max_reconnect_interval: float
    attempts: int
    connect_timeout: float | None
    answer_timeout: float | None
    heartbeat: float | None = None
    ssl: SSLOption = None  # the adapter's TLS setting: an upload trusts what its adapter does


@dataclass
class _Status:
    received: int
    size: int
    file: FileInfo | None


class _Misplaced(BadRequestError):
    """The server has a different number of bytes than the part started from: ask again."""


_RETRY_ON = (TransportError, BusyError, _Misplaced)


class _Upload:
    """One upload through one target, with its resumes."""

    def __init__(
        self,
        target: _Target,
        source: _Source,
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
        self._snapshots = _Snapshots()
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
                        status = await self._status()
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
        logger.info(
            "%s: upload %s of %r interrupted (%s); resuming in %.2f s",
            self.target.label,
            self.upload_id,
            self.source.name,
            exc,
            delay,
        )

    async def _report(self, sent: int) -> None:
        if self.progress is not None:
            result = self.progress(sent, self.source.size)
            if inspect.isawaitable(result):
                await result

    def _answer(self, status: int | str, body: bytes | str) -> FileInfo:
        """The FileInfo of an ok answer; raise the typed error of any other."""
        try:
            packet = parse_message(body)
        except ProtocolError as exc:
            raise TransportError(f"{self.target.label}: {status} with no packet ({exc})") from None
        if not isinstance(packet, Response):
            raise TransportError(f"{self.target.label}: the server answered a {packet.type}")
        if not packet.ok:
            if packet.code == 400 and (packet.error or "").startswith(RESUME_FROM):
                raise _Misplaced(packet.error or "", response=packet)
            raise error_for_response(packet)
        try:
            return FileInfo.model_validate(packet.data)
        except ValidationError:
            raise TransportError(
                f"{self.target.label}: the answer is not a file description: {packet.data!r}"
            ) from None

    async def _status(self) -> _Status | None:
        """What the server has of this upload; None when it knows nothing of it."""
        assert self._http is not None
        url = f"{self.target.url}/{quote(self.upload_id, safe='')}"
        try:
            async with self._http.get(
                url,
                headers=self.target.headers(),
                timeout=aiohttp.ClientTimeout(
                    total=self.target.answer_timeout, sock_connect=self.target.connect_timeout
                ),
            ) as reply:
                self.target.session.adopt(reply.headers, self.target.label)
                body = await reply.read()
        except aiohttp.ClientConnectorCertificateError as exc:
            raise certificate_error(exc, url) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransportError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
        if reply.status == 200:
            try:
                obj: Any = orjson.loads(body)
                file = obj.get("file")
                return _Status(
                    int(obj["received"]),
                    int(obj["size"]),
                    FileInfo.model_validate(file) if file is not None else None,
                )
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
                raise TransportError(f"GET {url}: not an upload status: {body[:200]!r}") from None
        try:
            packet = parse_message(body)
        except ProtocolError:
            raise TransportError(f"GET {url}: HTTP {reply.status} (no upload endpoint?)") from None
        if isinstance(packet, Response) and not packet.ok:
            if reply.status == 404:
                return None
            raise error_for_response(packet)
        raise TransportError(f"GET {url}: HTTP {reply.status}")

    # HTTP ------------------------------------------------------------------------------------

    async def _http_part(self, offset: int) -> FileInfo:
        assert self._http is not None
        size = self.source.size
        if self._md5 is None:
            # The digest header goes before the body: hash the whole source first.
            hasher = hashlib.md5(usedforsecurity=False)
            await asyncio.to_thread(_hash_range, self.source, hasher, 0, size)
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
        return self._answer(f"HTTP {reply.status}", answer)

    # WebSocket -------------------------------------------------------------------------------

    async def _hasher_at(self, offset: int) -> _Hasher:
        base, hasher = self._snapshots.at_or_before(offset)
        if base < offset:
            await asyncio.to_thread(_hash_range, self.source, hasher, base, offset)
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
            reading: asyncio.Future[tuple[bytes, _Hasher]] | None = None
            try:
                position = offset
                if position < size:
                    reading = loop.run_in_executor(
                        None, _read_and_hash, self.source, position, hasher
                    )
                while reading is not None and not answer.done():
                    chunk, state = await reading
                    reading = None
                    after = position + len(chunk)
                    if after < size:  # read the next chunk while this one goes out
                        reading = loop.run_in_executor(
                            None, _read_and_hash, self.source, after, hasher
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
            return self._answer("WebSocket", message.data)
        raise TransportError(
            f"{self.target.ws_url}: the upload connection closed before the answer "
            f"({message.type.name}, code {ws.close_code})"
        )


# Entry points for the adapters ----------------------------------------------------------------


def _http_base(ws_url: str) -> tuple[str, str]:
    """``(scheme, netloc)`` of the HTTP side of a WebSocket URL."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    return scheme, parts.netloc


async def websocket_upload(
    adapter: WebSocketAdapter,
    source: UploadSource,
    *,
    name: str | None,
    progress: UploadProgress | None,
    upload_id: str | None,
) -> FileInfo:
    """Upload through a WebSocket at ``ws(s)://host:port{upload_path}``: see `upload`."""
    scheme, netloc = _http_base(adapter.url)
    ws_scheme = "wss" if scheme == "https" else "ws"
    path = adapter.upload_path
    target = _Target(
        label=f"{adapter.name} upload",
        url=urlunsplit((scheme, netloc, path, "", "")),
        ws_url=urlunsplit((ws_scheme, netloc, path, "", "")),
        headers=adapter._upgrade_headers,
        session=adapter.session,
        sleep=adapter._sleep,
        reconnect_interval=adapter.reconnect_interval,
        max_reconnect_interval=adapter.max_reconnect_interval,
        attempts=adapter.upload_attempts,
        connect_timeout=adapter.connect_timeout,
        answer_timeout=adapter.request_timeout,
        heartbeat=adapter.heartbeat_interval,
        ssl=adapter.ssl,
    )
    async with open_source(source, name) as src:
        return await _Upload(target, src, progress, upload_id).run()


async def http_upload(
    adapter: HttpAdapter,
    source: UploadSource,
    *,
    name: str | None,
    progress: UploadProgress | None,
    upload_id: str | None,
) -> FileInfo:
    """Upload with ``POST {base_url}{upload_path}``: see `upload`."""

    def headers() -> dict[str, str]:
        found = {k: v for k, v in adapter.headers.items() if k.lower() != "content-type"}
        found.update(adapter.session.header())
        return found

    target = _Target(
        label=f"{adapter.name} upload",
        url=adapter.base_url + adapter.upload_path,
        ws_url=None,
        headers=headers,
        session=adapter.session,
        sleep=adapter._sleep,
        reconnect_interval=adapter.reconnect_interval,
        max_reconnect_interval=adapter.max_reconnect_interval,
        attempts=adapter.upload_attempts,
        connect_timeout=adapter.request_timeout,
        answer_timeout=adapter.request_timeout,
        ssl=adapter.ssl,
    )
    async with open_source(source, name) as src:
        return await _Upload(target, src, progress, upload_id).run()
