"""Uploads on their own connection, the server side: streamed, checksummed, resumable (§8).

`Uploads` adds three routes to a ProtocolServer's application, beside the packet ones:

- ``POST /upload``: the raw body, with ``X-Siyi-Upload-Id``, ``X-Siyi-File-Name``
  (percent-encoded UTF-8), ``Content-Length``, ``X-Siyi-File-MD5`` and/or
  ``X-Siyi-File-SHA256``; a resumed part carries ``Content-Range: bytes START-END/TOTAL``.
- a WebSocket at ``/upload``: a header text frame
  ``{"upload_id", "name", "size", "md5", "sha256", "offset"}``, binary frames, and (when no
  digest came in the header) a last text frame ``{"md5": ..., "sha256": ...}``.
- ``GET /upload/{upload_id}``: ``{"upload_id", "received", "size"}``, where to resume (plus
  ``"file"`` once the upload completed, for a client whose answer was lost).

Both upload channels authenticate like ``/general`` and answer with one Response packet.

An upload belongs to the principal that started it (§8): the ``principal`` of the session
that sent its first part, compared with `same_owner`, never the session itself, so its owner
may go on from another session or another process. To any other principal its status, its
resumption and a repeat of its id (a finished upload's file included) are answered with what
the status of an unknown id gets, 404 ``unknown upload '<id>'``, on both channels; that answer
is given before its size, progress or name is compared, without waiting for a running part,
and without touching its bytes. (That the id is taken shows, since a new id would be
accepted; nothing else about the upload does.) The owner is recorded as its owner key in memory
and in ``state.json``, so a partial upload found on disk (after a restart, or by another
process sharing the directory) keeps it. A ``state.json`` written before owners were recorded
is taken as owned by ``None``, the one principal of a server without keys: on such a server it
resumes as before, on a server with keys nobody can claim it and it expires.

Storage, under `directory` (``upload_dir``)::

    <file_id>/<name>              a completed upload; file_id is a fresh UUID4 (hex) per
                                  file, name the sanitised name (`sanitize_filename`)
    .partial/<key>/data           the bytes received so far of an upload in progress
    .partial/<key>/state.json     {"upload_id", "name", "size", "owner"}; key = SHA-256 of
                                  the id, owner = the owner key (`owner_key`) as text

Bytes go to disk in batches (about 1 MiB) from a worker thread, hashed (MD5 and SHA-256) as
they are written: a file is never held in memory, and the event loop never waits on the disk.
The hasher states of a partial upload stay in memory, so a resume continues them; a partial
upload found on disk without them (after a restart) is re-hashed once. A partial upload not
resumed within `resume_ttl` seconds is removed; one that fails its digest or size check is
removed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
import unicodedata
import uuid
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal, TypeAlias
from urllib.parse import unquote

import orjson
from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..outcome import call_event_handler, encode_response
from ..packets import (
    MAX_ID_LENGTH,
    SESSION_HEADER,
    Request,
    Response,
    StatusCode,
    format_validation_error,
)
from ..wire import (
    FILE_MD5_HEADER,
    FILE_NAME_HEADER,
    FILE_SHA256_HEADER,
    RESUME_FROM,
    UPLOAD_ID_HEADER,
    UPLOAD_RECEIVED_HEADER,
    FileInfo,
)
from .answers import packet_answer, refusal
from .auth import Gate
from .connection import Connection, ServerCall
from .dispatch import Dispatcher
from .lifecycle import Lifecycle, ServerSettings
from .owners import owner_key, same_owner

__all__ = ["MAX_NAME_BYTES", "StoredFile", "UploadHandler", "Uploads", "sanitize_filename"]

logger = logging.getLogger(__name__)

MAX_NAME_BYTES: Final = 200
"""The longest stored name, in UTF-8 bytes (filesystems allow 255; this leaves room)."""

_PARTIAL: Final = ".partial"
_MiB: Final = 1024 * 1024


class StoredFile(FileInfo):
    """A completed upload, as `on_upload` handlers receive it: a `FileInfo` and its path.

    Attributes:
        path: where the file is stored: ``upload_dir/<file_id>/<name>``.
    """

    path: Path


UploadHandler: TypeAlias = Callable[[Connection, StoredFile], Awaitable[None] | None]
"""``handler(connection, stored_file)``, sync or async, run after each successful upload."""


# File names ----------------------------------------------------------------------------------

_FORBIDDEN = frozenset('<>:"/\\|?*')  # reserved on Windows; the slashes on every system
_DROPPED_CATEGORIES = frozenset(
    {
        "Cc",  # control characters, NUL included
        "Cf",  # format: bidi overrides and isolates, zero-width characters, BOM
        "Cs",  # lone surrogates
        "Co",  # private use
        "Cn",  # unassigned
        "Zl",  # line separator
        "Zp",  # paragraph separator
    }
)
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"{kind}{n}" for kind in ("COM", "LPT") for n in "123456789\u00b9\u00b2\u00b3"}
)


def sanitize_filename(name: str, default: str = "upload") -> str:
    r"""Make a client's file name safe to store: one plain component, never a path.

    The rules, in order: Unicode NFC; keep what follows the last ``/`` or ``\\`` (so
    ``../../etc/passwd`` is ``passwd`` and ``C:\\docs\\a.txt`` is ``a.txt``); drop control,
    format (bidi overrides, zero-width), surrogate, private-use and unassigned characters and
    line/paragraph separators; any other space becomes a plain space, runs of spaces one;
    characters Windows reserves (``<>:"|?*``) become ``_``; leading and trailing dots and
    spaces go (no ``..``, no hidden files); a Windows device name (``CON``, ``nul.txt``, ...)
    gets a ``_`` in front; a name over `MAX_NAME_BYTES` UTF-8 bytes is shortened, keeping its
    extension. What is left empty becomes `default`.

    Args:
        name: the name the client sent (already percent-decoded).
        default: the name to use when nothing usable is left.

    Returns:
        A name with no separator, no control character, not ``.`` or ``..``.
    """
    name = unicodedata.normalize("NFC", name)
    name = re.split(r"[/\\]", name)[-1]
    kept: list[str] = []
    for char in name:
        category = unicodedata.category(char)
        if category in _DROPPED_CATEGORIES:
            continue
        if category == "Zs":
            char = " "
        elif char in _FORBIDDEN:
            char = "_"
        kept.append(char)
    name = re.sub(" {2,}", " ", "".join(kept)).strip(" .")
    if not name:
        return default
    if name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        name = "_" + name
    if len(name.encode()) > MAX_NAME_BYTES:
        stem, dot, extension = name.rpartition(".")
        if not dot or not stem or len(extension.encode()) > 16:
            stem, extension = name, ""
        suffix = "." + extension if extension else ""
        room = MAX_NAME_BYTES - len(suffix.encode())
        stem = stem.encode()[:room].decode("utf-8", "ignore").rstrip(" .")
        name = (stem + suffix) if stem else default
    return name


# Owners --------------------------------------------------------------------------------------

_UNKNOWN: Final[Any] = object()
"""The principal of an owner read from disk: only its owner key is known."""
_NOBODY: Final = b""
"""An owner key no principal has (`owner_key` is never empty): for an unreadable owner."""


@dataclass(frozen=True, eq=False)  # never compared whole: see `admits`
class _Owner:
    """Who an upload belongs to: its owner key, and the principal while this process has it."""

    key: bytes
    principal: Any = _UNKNOWN

    @classmethod
    def of(cls, principal: Any) -> _Owner:
        return cls(owner_key(principal), principal)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Owner:
        """The owner a ``state.json`` records."""
        if "owner" not in state:
            # Written before owners were recorded: only a server without keys (one
            # principal, None) ever wrote those, so None is the one who may claim it.
            return cls(owner_key(None))
        recorded = state["owner"]
        return cls(recorded.encode() if isinstance(recorded, str) else _NOBODY)

    def admits(self, caller: Any) -> bool:
        """True when `caller` (a session's principal) is this owner."""
        if self.principal is not _UNKNOWN:
            return same_owner(self.principal, caller)
        return owner_key(caller) == self.key


@dataclass
class _Done:
    """A completed upload, kept `resume_ttl` seconds so its owner can ask for its answer."""

    stored: StoredFile
    at: float
    owner: _Owner


# One upload in progress ----------------------------------------------------------------------

_Hasher: TypeAlias = "hashlib._Hash"


@dataclass(eq=False)
class _Partial:
    """An upload in progress: where its bytes are, how many, and the hashes so far."""

    upload_id: str
    name: str
    size: int
    directory: Path
    resumable: bool
    owner: _Owner
    received: int = 0
    md5: _Hasher | None = None  # of the first `received` bytes; None: re-hash the file
    sha256: _Hasher | None = None
    declared: dict[str, str] = field(default_factory=dict)
    last_active: float = field(default_factory=time.monotonic)

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def state(self) -> Path:
        return self.directory / "state.json"

    def status(self) -> dict[str, Any]:
        return {"upload_id": self.upload_id, "received": self.received, "size": self.size}


class _Sink:
    """Appends a part's bytes to a partial upload's file off the event loop, hashing them.

    Bytes are batched to about `batch` bytes, and a batch is written while the next one is
    read (at most one write in flight): memory stays bounded by two batches.
    """

    def __init__(self, partial: _Partial, executor: ThreadPoolExecutor, batch: int) -> None:
        self.partial = partial
        self.accepted = 0  # bytes taken by write(), written or not yet
        self.written = 0
        self._executor = executor
        self._batch = batch
        self._file: IO[bytes] | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._pending: asyncio.Future[int] | None = None

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def open(self) -> None:
        """Open the file where the partial upload stands (re-hashing it when needed)."""
        await self._run(self._open)
        self.accepted = self.partial.received

    def _open(self) -> None:
        partial = self.partial
        partial.directory.mkdir(parents=True, exist_ok=True)
        file = partial.data.open("r+b" if partial.data.exists() else "w+b")
        try:
            length = file.seek(0, os.SEEK_END)
            if partial.md5 is None or partial.sha256 is None or length < partial.received:
                # No hasher state (a restart): the file is the truth; hash it once.
                md5 = hashlib.md5(usedforsecurity=False)
                sha256 = hashlib.sha256()
                file.seek(0)
                while data := file.read(_MiB):
                    md5.update(data)
                    sha256.update(data)
                partial.md5, partial.sha256, partial.received = md5, sha256, length
            elif length > partial.received:
                file.truncate(partial.received)  # a write that failed half way
                file.seek(partial.received)
        except BaseException:
            file.close()
            raise
        self._file = file

    def _append(self, data: bytes) -> int:
        assert self._file is not None
        assert self.partial.md5 is not None
        assert self.partial.sha256 is not None
        self._file.write(data)
        self.partial.md5.update(data)
        self.partial.sha256.update(data)
        return len(data)

    async def _settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            written = await pending
            self.partial.received += written
            self.written += written
            self.partial.last_active = time.monotonic()

    async def _submit(self) -> None:
        await self._settle()
        if self._buffered:
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            loop = asyncio.get_running_loop()
            self._pending = loop.run_in_executor(self._executor, self._append, data)

    async def write(self, data: bytes) -> None:
        """Take `data`; it is on disk by the time `close()` returns."""
        self._buffer.append(data)
        self._buffered += len(data)
        self.accepted += len(data)
        self.partial.last_active = time.monotonic()
        if self._buffered >= self._batch:
            await self._submit()

    async def close(self) -> None:
        """Write what is buffered, and close the file. Idempotent."""
        try:
            await self._submit()
            await self._settle()
        finally:
            file, self._file = self._file, None
            self._buffer.clear()
            if file is not None:
                await self._run(file.close)


# Wire shapes ---------------------------------------------------------------------------------


class _WsHeader(BaseModel):
    """The first text frame of a WebSocket upload."""

    model_config = ConfigDict(extra="ignore")

    upload_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    name: str = ""
    size: int = Field(ge=0)
    md5: str | None = None
    sha256: str | None = None
    offset: int = Field(default=0, ge=0)


@dataclass
class _Spec:
    """One part of an upload, as its request declared it."""

    upload_id: str
    resumable: bool
    name: str
    size: int
    start: int
    end: int  # exclusive: the part carries bytes start..end
    digests: dict[str, str]


@dataclass
class _Answer:
    """The one Response a part gets, its HTTP status, and where to resume when that helps."""

    response: Response
    status: int
    received: int | None = None


class _Refusal(Exception):
    """Answer the part with this error (and maybe drop the partial upload)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: int | None = None,
        discard: bool = False,
        received: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code if code is not None else status
        self.discard = discard
        self.received = received


class _Interrupted(Exception):
    """The part ended before its last byte: the connection dropped, or it stalled."""

    def __init__(self, reason: str, *, stalled: bool = False) -> None:
        super().__init__(reason)
        self.stalled = stalled


_DIGEST_LENGTHS: Final = {"md5": 32, "sha256": 64}
_HEX = re.compile(r"[0-9a-fA-F]+")
_UPLOAD_ID = re.compile(rf"[!-~]{{1,{MAX_ID_LENGTH}}}")  # printable ASCII, no spaces
_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+)")


def _digest(algorithm: str, value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value) != _DIGEST_LENGTHS[algorithm]
        or not _HEX.fullmatch(value)
    ):
        raise _Refusal(
            400, f"bad request: {algorithm} must be {_DIGEST_LENGTHS[algorithm]} hex digits"
        )
    return value.lower()


def _digests(md5: object, sha256: object) -> dict[str, str]:
    found = {}
    if md5 is not None:
        found["md5"] = _digest("md5", md5)
    if sha256 is not None:
        found["sha256"] = _digest("sha256", sha256)
    return found


# The channels --------------------------------------------------------------------------------


class _Channel:
    """How the bytes of one part arrive."""

    def chunks(self, spec: _Spec) -> AsyncGenerator[bytes, None]:
        raise NotImplementedError

    async def final_digests(self, spec: _Spec, partial: _Partial) -> dict[str, str]:
        """Digests that come after the bytes (none over HTTP)."""
        return {}


class _HttpChannel(_Channel):
    def __init__(self, request: web.Request, idle_timeout: float) -> None:
        self.request = request
        self.idle_timeout = idle_timeout

    async def chunks(self, spec: _Spec) -> AsyncGenerator[bytes, None]:
        remaining = spec.end - spec.start
        content = self.request.content
        while remaining > 0:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    chunk = await content.readany()
            except TimeoutError:
                raise _Interrupted(f"no bytes for {self.idle_timeout:g} s", stalled=True) from None
            except Exception as exc:  # whatever the transport raises, the part is over
                raise _Interrupted(f"{type(exc).__name__}: {exc}") from None
            if not chunk:
                raise _Interrupted(f"the body ended {remaining} bytes early")
            remaining -= len(chunk)
            yield chunk


class _WebSocketChannel(_Channel):
    def __init__(self, ws: web.WebSocketResponse, idle_timeout: float) -> None:
        self.ws = ws
        self.idle_timeout = idle_timeout

    async def _receive(self) -> Any:
        try:
            return await self.ws.receive(timeout=self.idle_timeout)
        except TimeoutError:
            raise _Interrupted(f"no frame for {self.idle_timeout:g} s", stalled=True) from None

    async def chunks(self, spec: _Spec) -> AsyncGenerator[bytes, None]:
        remaining = spec.end - spec.start
        while remaining > 0:
            message = await self._receive()
            if message.type == WSMsgType.BINARY:
                remaining -= len(message.data)
                yield message.data
            elif message.type == WSMsgType.TEXT:
                raise _Refusal(
                    400, f"bad request: {remaining} bytes were still due in binary frames"
                )
            else:
                raise _Interrupted(f"the WebSocket closed ({message.type.name})")

    async def final_digests(self, spec: _Spec, partial: _Partial) -> dict[str, str]:
        if spec.digests:
            return {}  # given up front: nothing more to wait for
        message = await self._receive()
        if message.type == WSMsgType.BINARY:
            raise _Refusal(
                400,
                f"bad request: size mismatch: more than the declared {partial.size} bytes; "
                "nothing was kept",
                discard=True,
            )
        if message.type != WSMsgType.TEXT:
            raise _Interrupted(f"the WebSocket closed ({message.type.name}) before the digest")
        try:
            frame = orjson.loads(message.data)
        except orjson.JSONDecodeError:
            raise _Refusal(400, "bad request: the digest frame is not JSON") from None
        if not isinstance(frame, dict):
            raise _Refusal(400, "bad request: the digest frame must be a JSON object")
        return _digests(frame.get("md5"), frame.get("sha256"))


# The service ---------------------------------------------------------------------------------


class Uploads:
    """The upload endpoints of a ProtocolServer, and the files behind them.

    The server builds one (``server.uploads``) from its ``upload_dir``, ``max_upload_size``
    and ``upload_resume_ttl`` options; the attributes below tune the rest.

    Args:
        server: the server whose authentication and sessions uploads share.
        directory: where files are stored (None: a temporary directory made on start and
            removed on stop).
        max_size: the largest upload accepted, in bytes (413 beyond).
        resume_ttl: seconds a partial upload waits to be resumed before it is removed.
        path: the endpoints' path.

    Attributes:
        busy_wait: seconds a second part of the same upload waits for the first to end
            before it is answered 429.
        idle_timeout: seconds without a byte after which a part is ended (its bytes are
            kept); also the bound on the wait for a WebSocket's digest frame.
        frame_limit: the largest WebSocket frame accepted.
        batch_size: bytes gathered before a write to disk.
        bytes_received: bytes written to partial uploads since the server started.
    """

    def __init__(
        self,
        settings: ServerSettings,
        gate: Gate,
        dispatcher: Dispatcher,
        lifecycle: Lifecycle,
        *,
        directory: str | os.PathLike[str] | None,
        max_size: int,
        resume_ttl: float,
        path: str,
    ) -> None:
        self._settings = settings
        self._gate = gate
        self._dispatcher = dispatcher
        self._lifecycle = lifecycle
        self._configured = Path(directory) if directory is not None else None
        self._directory: Path | None = self._configured
        self.max_size = max_size
        self.resume_ttl = resume_ttl
        self.path = path
        self.busy_wait = 2.0
        self.idle_timeout = 60.0
        self.frame_limit = 4 * _MiB
        self.batch_size = _MiB
        self.bytes_received = 0
        self._handlers: list[UploadHandler] = []
        self._partials: dict[str, _Partial] = {}
        self._completed: dict[str, _Done] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._transports: set[asyncio.Transport] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def directory(self) -> Path | None:
        """Where files are stored (None before the first start when none was configured)."""
        return self._directory

    @property
    def partial_directory(self) -> Path | None:
        """Where uploads in progress live: ``directory/.partial``."""
        return None if self._directory is None else self._directory / _PARTIAL

    def on_upload(self, handler: UploadHandler) -> UploadHandler:
        """Add a handler run after each successful upload; usable as a decorator."""
        self._handlers.append(handler)
        return handler

    def setup(self, app: web.Application, prefix: str = "") -> None:
        """Add the routes (under `prefix`), and the start/stop hooks, to an application."""
        path = prefix + self.path
        app.router.add_post(path, self._post, expect_handler=self._expect)
        app.router.add_get(path, self._websocket)
        app.router.add_get(path + "/{upload_id}", self._status)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)

    # Lifecycle -------------------------------------------------------------------------------

    async def _startup(self, app: web.Application) -> None:
        if self._configured is None:
            self._directory = Path(
                await asyncio.to_thread(tempfile.mkdtemp, prefix="siyi-uploads-")
            )
        else:
            self._directory = self._configured
        partials = self._directory / _PARTIAL
        await asyncio.to_thread(partials.mkdir, parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="siyi-upload")
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _shutdown(self, app: web.Application) -> None:
        # Parts under way end now (their bytes are kept): an upload can be resumed later, and
        # stop() must not wait for a large file to finish.
        for transport in list(self._transports):
            transport.abort()

    async def _cleanup(self, app: web.Application) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)
        self._partials.clear()
        self._completed.clear()
        if self._configured is None and self._directory is not None:
            directory, self._directory = self._directory, None
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)

    def _run(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # Expiry ----------------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        interval = max(0.05, min(self.resume_ttl / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except OSError as exc:
                logger.warning("sweeping partial uploads failed: %s", exc)

    async def sweep(self) -> None:
        """Remove partial uploads not resumed within `resume_ttl` (the sweeper calls this)."""
        now = time.monotonic()
        for upload_id, partial in list(self._partials.items()):
            lock = self._locks.get(upload_id)
            if lock is not None and lock.locked():
                continue  # a part is running or waiting: it is not abandoned
            if now - partial.last_active > self.resume_ttl:
                logger.info(
                    "partial upload %s (%r, %d of %d bytes) expired",
                    upload_id,
                    partial.name,
                    partial.received,
                    partial.size,
                )
                await self._discard(partial)
        for upload_id, done in list(self._completed.items()):
            if now - done.at > self.resume_ttl:
                del self._completed[upload_id]
        known = {p.directory.name for p in self._partials.values()}
        await self._run(self._sweep_disk, known)

    def _sweep_disk(self, known: set[str]) -> None:
        # Partial uploads on disk that no part touched in this process: left by an earlier run.
        root = self.partial_directory
        if root is None or not root.is_dir():
            return
        horizon = time.time() - self.resume_ttl
        for entry in root.iterdir():
            if entry.name in known:
                continue
            try:
                touched = max(p.stat().st_mtime for p in (entry, *entry.iterdir()))
            except (OSError, ValueError):
                continue
            if touched < horizon:
                logger.info("removing the expired partial upload in %s", entry)
                shutil.rmtree(entry, ignore_errors=True)

    # Partial uploads -------------------------------------------------------------------------

    def _lock(self, upload_id: str) -> asyncio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[upload_id] = lock
        return lock

    def _directory_of(self, upload_id: str) -> Path:
        root = self.partial_directory
        assert root is not None, "uploads are served only between start and stop"
        # Hashed: an id is the client's string and must not choose a path.
        return root / hashlib.sha256(upload_id.encode()).hexdigest()[:32]

    async def _find(self, upload_id: str) -> _Partial | None:
        """The partial upload of that id: in memory, else on disk (after a restart)."""
        partial = self._partials.get(upload_id)
        if partial is not None:
            return partial
        directory = self._directory_of(upload_id)
        state = await self._run(self._read_state, directory)
        if state is None or state.get("upload_id") != upload_id:
            return None
        partial = self._partials.get(upload_id)  # found by another task meanwhile
        if partial is None:
            # Its clock goes on from its last write, not from now: looking it up (anyone's
            # GET) must not keep an abandoned upload alive.
            idle = max(0.0, time.time() - float(state["touched"]))
            try:
                partial = _Partial(
                    upload_id=upload_id,
                    name=str(state["name"]),
                    size=int(state["size"]),
                    directory=directory,
                    resumable=True,
                    owner=_Owner.from_state(state),
                    received=int(state["received"]),
                    last_active=time.monotonic() - idle,
                )
            except (KeyError, TypeError, ValueError):
                logger.warning("partial upload %s: unreadable state in %s", upload_id, directory)
                return None
            self._partials[upload_id] = partial
        return partial

    @staticmethod
    def _read_state(directory: Path) -> dict[str, Any] | None:
        try:
            state = orjson.loads((directory / "state.json").read_bytes())
            if not isinstance(state, dict):
                return None
            data = (directory / "data").stat()
        except (OSError, orjson.JSONDecodeError):
            return None
        state["received"] = data.st_size
        state["touched"] = data.st_mtime
        return state

    @staticmethod
    def _create(partial: _Partial) -> None:
        partial.directory.mkdir(parents=True, exist_ok=True)
        # Truncated: a new upload starts empty, even over bytes left without a readable state.
        partial.data.write_bytes(b"")
        state = {
            "upload_id": partial.upload_id,
            "name": partial.name,
            "size": partial.size,
            "owner": partial.owner.key.decode(),
        }
        # Replaced whole: another process sharing the directory never reads half a state
        # (which it would take for no upload at all, and start over).
        temporary = partial.state.with_suffix(".tmp")
        temporary.write_bytes(orjson.dumps(state))
        os.replace(temporary, partial.state)

    async def _discard(self, partial: _Partial) -> None:
        if self._partials.get(partial.upload_id) is partial:
            del self._partials[partial.upload_id]
        await self._run(shutil.rmtree, partial.directory, True)

    def _store(self, partial: _Partial, file_id: str) -> Path:
        assert self._directory is not None
        folder = self._directory / file_id
        folder.mkdir()
        destination = folder / partial.name
        # Defence in depth: the sanitised name is one component, so this always holds.
        if destination.resolve().parent != folder.resolve():
            raise ValueError(f"unsafe file name {partial.name!r}")
        os.replace(partial.data, destination)
        shutil.rmtree(partial.directory, ignore_errors=True)
        return destination

    # One part --------------------------------------------------------------------------------

    async def _receive(
        self,
        spec: _Spec,
        session: Connection,
        channel: _Channel,
        transport: asyncio.Transport | None,
    ) -> _Answer | None:
        """Take one part of an upload; its answer, or None when it was cut off."""
        upload_id = spec.upload_id
        if spec.size > self.max_size:
            return self._fail(
                upload_id,
                413,
                f"too large: {spec.size} bytes, the limit is {self.max_size}",
            )
        caller = session.principal
        # Another principal's upload is refused before its lock is waited for: a wait, or a
        # 429 while the owner's part runs, would tell that the id is in use.
        if spec.resumable and not self._may_know(upload_id, caller):
            return self._unknown(upload_id)
        lock = self._lock(upload_id)
        try:
            async with asyncio.timeout(self.busy_wait):
                await lock.acquire()
        except TimeoutError:
            if not self._may_know(upload_id, caller):  # its owner's part began meanwhile
                return self._unknown(upload_id)
            return self._fail(
                upload_id,
                429,
                f"busy: another part of upload {upload_id!r} is still running",
            )
        if self._lifecycle.stopping:  # it waited for the lock while the server began to stop
            lock.release()
            return self._fail(upload_id, 503, "unavailable: shutting down", StatusCode.UNAVAILABLE)
        if transport is not None:
            self._transports.add(transport)
        try:
            return await self._receive_locked(spec, session, channel)
        except _Refusal as exc:
            partial = self._partials.get(upload_id)
            # Without an id nobody can resume it: a refused part leaves nothing either. Only
            # the owner's part may cost an upload its bytes (refusals come after the owner
            # check; this holds whatever is added above).
            if (
                partial is not None
                and partial.owner.admits(caller)
                and (exc.discard or not spec.resumable)
            ):
                await self._discard(partial)
            return self._fail(upload_id, exc.status, str(exc), exc.code, exc.received)
        except OSError:
            logger.exception("upload %s could not be stored", upload_id)
            return self._fail(
                upload_id,
                500,
                "internal error: the server could not store the upload",
                StatusCode.INTERNAL_ERROR,
            )
        finally:
            if transport is not None:
                self._transports.discard(transport)
            lock.release()

    async def _receive_locked(
        self, spec: _Spec, session: Connection, channel: _Channel
    ) -> _Answer | None:
        caller = session.principal
        done = self._completed.get(spec.upload_id) if spec.resumable else None
        if done is not None:
            if not done.owner.admits(caller):
                return self._unknown(spec.upload_id)
            stored = done.stored
            if stored.size != spec.size:
                raise _Refusal(400, f"bad request: upload {spec.upload_id!r} was another file")
            return _Answer(Response.success(spec.upload_id, _wire(stored)), 200)  # answer lost
        partial = await self._find(spec.upload_id) if spec.resumable else None
        if partial is not None and not partial.owner.admits(caller):
            # Before anything about it (size, where it stands) is compared or told.
            return self._unknown(spec.upload_id)
        if partial is None:
            if spec.start != 0:
                raise _Refusal(
                    400,
                    f"{RESUME_FROM} 0: the server has nothing of upload {spec.upload_id!r}",
                    received=0,
                )
            partial = _Partial(
                upload_id=spec.upload_id,
                name=spec.name,
                size=spec.size,
                directory=self._directory_of(spec.upload_id),
                resumable=spec.resumable,
                owner=_Owner.of(caller),
            )
            # Known before its state is on disk: from now on another principal is refused
            # at once (`_may_know`), not after waiting for this part's lock.
            self._partials[spec.upload_id] = partial
            try:
                await self._run(self._create, partial)
            except BaseException:
                if self._partials.get(spec.upload_id) is partial:
                    del self._partials[spec.upload_id]
                raise
        elif partial.size != spec.size:
            raise _Refusal(
                400,
                f"bad request: upload {spec.upload_id!r} is {partial.size} bytes, not {spec.size}",
            )
        elif spec.start != partial.received:
            raise _Refusal(
                400,
                f"{RESUME_FROM} {partial.received}: the server has {partial.received} bytes "
                f"of upload {spec.upload_id!r}, not {spec.start}",
                received=partial.received,
            )
        partial.declared.update(spec.digests)
        assert self._executor is not None
        sink = _Sink(partial, self._executor, self.batch_size)
        interrupted: _Interrupted | None = None
        chunks = channel.chunks(spec)
        try:
            await sink.open()
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if sink.accepted + len(chunk) > partial.size:
                        raise _Refusal(
                            400,
                            "bad request: size mismatch: more than the declared "
                            f"{partial.size} bytes; nothing was kept",
                            discard=True,
                        )
                    await sink.write(chunk)
        except _Interrupted as exc:
            interrupted = exc
        finally:
            # Whatever happened, what arrived goes to disk: a resume starts after it.
            await asyncio.shield(sink.close())
            self.bytes_received += sink.written
        if interrupted is not None:
            return await self._interrupted(partial, interrupted)
        if partial.received < partial.size:
            # A part that ends before the last byte (a client sending in several parts).
            return _Answer(Response.success(spec.upload_id, partial.status()), 202)
        try:
            partial.declared.update(await channel.final_digests(spec, partial))
        except _Interrupted as exc:
            return await self._interrupted(partial, exc)
        transport: Literal["websocket", "http"] = (
            "websocket" if isinstance(channel, _WebSocketChannel) else "http"
        )
        return await self._complete(partial, session, transport)

    async def _interrupted(self, partial: _Partial, exc: _Interrupted) -> _Answer | None:
        if not partial.resumable:
            await self._discard(partial)  # nobody can name it again: keep nothing
            logger.info(
                "upload %s interrupted (%s); it had no id, nothing kept", partial.upload_id, exc
            )
        else:
            logger.info(
                "upload %s interrupted at %d of %d bytes (%s); kept for resuming",
                partial.upload_id,
                partial.received,
                partial.size,
                exc,
            )
        if exc.stalled:
            return self._fail(
                partial.upload_id,
                408,
                f"timeout: {exc}; {RESUME_FROM} {partial.received} to go on",
                StatusCode.TIMEOUT,
                partial.received,
            )
        return None

    async def _complete(
        self, partial: _Partial, session: Connection, transport: Literal["websocket", "http"]
    ) -> _Answer:
        assert partial.md5 is not None
        assert partial.sha256 is not None
        actual = {"md5": partial.md5.hexdigest(), "sha256": partial.sha256.hexdigest()}
        for algorithm, expected in sorted(partial.declared.items()):
            if actual[algorithm] != expected:
                await self._discard(partial)
                logger.warning(
                    "upload %s failed its %s check; discarded", partial.upload_id, algorithm
                )
                return self._fail(
                    partial.upload_id,
                    400,
                    f"bad request: {algorithm} mismatch: the bytes received hash to "
                    f"{actual[algorithm]}, not {expected}; nothing was kept",
                )
        if not self._dispatcher.chain:
            return await self._store_complete(partial, session, actual)
        # The completion passes the server's middleware chain like any call (a Request named
        # "siyi.upload"): a middleware sees it, and may refuse it (the bytes are then dropped).
        upload = Request.make(
            "siyi.upload",
            {"upload_id": partial.upload_id, "name": partial.name, "size": partial.size, **actual},
        )
        stored: list[_Answer] = []

        async def store(call: ServerCall) -> Response:
            stored.append(await self._store_complete(partial, session, actual))
            return stored[0].response

        answer = await self._dispatcher.chain.run(
            ServerCall(upload, "in", session, transport), store
        )
        if stored and answer is stored[0].response:
            return stored[0]
        if not stored:
            await self._discard(partial)
        if not isinstance(answer, Response) or answer.ok:
            return _Answer(Response.success(partial.upload_id, answer and answer.data), 200)
        status = answer.code if 400 <= answer.code < 600 else 400
        return self._fail(partial.upload_id, status, answer.error or "refused", answer.code)

    async def _store_complete(
        self, partial: _Partial, session: Connection, actual: dict[str, str]
    ) -> _Answer:
        file_id = uuid.uuid4().hex
        path = await self._run(self._store, partial, file_id)
        self._partials.pop(partial.upload_id, None)
        stored = StoredFile(
            file_id=file_id,
            name=partial.name,
            size=partial.size,
            md5=actual["md5"],
            sha256=actual["sha256"],
            path=path,
        )
        if partial.resumable:
            self._completed[partial.upload_id] = _Done(stored, time.monotonic(), partial.owner)
        logger.info("upload %s stored as %s (%d bytes)", partial.upload_id, path, stored.size)
        for handler in self._handlers:
            self._lifecycle.spawn(call_event_handler(handler, (session, stored), "upload"))
        return _Answer(Response.success(partial.upload_id, _wire(stored)), 200)

    def _may_know(self, upload_id: str, caller: Any) -> bool:
        """False when this process holds upload `upload_id` and it is not `caller`'s.

        Memory only, so it never waits: a partial upload known only on disk is checked once
        its lock is held (`_receive_locked`, `_status`).
        """
        done = self._completed.get(upload_id)
        if done is not None:
            return done.owner.admits(caller)
        partial = self._partials.get(upload_id)
        return partial is None or partial.owner.admits(caller)

    @classmethod
    def _unknown(cls, upload_id: str) -> _Answer:
        """The answer for an id nobody uploads, and for another principal's upload alike."""
        return cls._fail(upload_id, 404, f"unknown upload {upload_id!r}")

    @staticmethod
    def _fail(
        upload_id: str | None,
        status: int,
        message: str,
        code: int | None = None,
        received: int | None = None,
    ) -> _Answer:
        response = Response.fail(upload_id, message, code if code is not None else status)
        return _Answer(response, status, received)

    # HTTP ------------------------------------------------------------------------------------

    def _answer(
        self, answer: _Answer, session: Connection | None, opened_here: bool = False
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
        match = _RANGE.fullmatch(request.headers.get("Content-Range", "").strip())
        if match is not None:
            return int(match.group(3))
        return request.content_length

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        # "Expect: 100-continue": refuse an oversized upload before its body is sent at all.
        total = self._declared_total(request)
        if total is not None and total > self.max_size:
            return self._answer(
                self._fail(None, 413, f"too large: {total} bytes, the limit is {self.max_size}"),
                None,
            )
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers['Expect']}")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    def _http_spec(self, request: web.Request) -> _Spec:
        raw_id = request.headers.get(UPLOAD_ID_HEADER)
        if raw_id is not None and not _UPLOAD_ID.fullmatch(raw_id):
            raise _Refusal(
                400,
                f"bad request: {UPLOAD_ID_HEADER} must be 1 to {MAX_ID_LENGTH} printable "
                "ASCII characters",
            )
        length = request.content_length
        if length is None:
            raise _Refusal(411, "bad request: Content-Length is required", code=400)
        name = sanitize_filename(
            unquote(request.headers.get(FILE_NAME_HEADER, ""), errors="replace")
        )
        digests = _digests(
            request.headers.get(FILE_MD5_HEADER), request.headers.get(FILE_SHA256_HEADER)
        )
        content_range = request.headers.get("Content-Range")
        if content_range is None:
            start, end, size = 0, length, length
        else:
            match = _RANGE.fullmatch(content_range.strip())
            if match is None:
                raise _Refusal(400, "bad request: Content-Range must be 'bytes START-END/TOTAL'")
            size = int(match.group(3))
            if match.group(1) is None:  # "bytes */TOTAL": nothing more to send
                start = end = size
            else:
                start, end = int(match.group(1)), int(match.group(2)) + 1
            if end - start != length or start > end or end > size:
                raise _Refusal(
                    400,
                    f"bad request: Content-Range {content_range!r} does not fit "
                    f"Content-Length {length}",
                )
        upload_id = raw_id or uuid.uuid4().hex
        return _Spec(upload_id, raw_id is not None, name, size, start, end, digests)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        if self._lifecycle.stopping:
            return refusal(503, StatusCode.UNAVAILABLE, "unavailable: shutting down")
        opened = await self._gate.open_session(request)
        if isinstance(opened, web.Response):
            return opened
        session, found = opened
        try:
            spec = self._http_spec(request)
        except _Refusal as exc:
            return self._answer(
                self._fail(None, exc.status, str(exc), exc.code), session, not found
            )
        channel = _HttpChannel(request, self.idle_timeout)
        answer = await self._receive(spec, session, channel, request.transport)
        if answer is None:  # cut off: nobody is left to answer
            answer = self._fail(spec.upload_id, 400, "bad request: the body was cut short")
        return self._answer(answer, session, not found)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        opened = await self._gate.open_session(request)
        if isinstance(opened, web.Response):
            return opened
        session, found = opened
        upload_id = request.match_info["upload_id"]
        caller = session.principal
        if not self._may_know(upload_id, caller):
            return self._answer(self._unknown(upload_id), session, not found)
        lock = self._locks.get(upload_id)
        if lock is not None and lock.locked():
            # A part is ending (its connection just dropped): report where it stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.busy_wait):
                    async with lock:
                        pass
        done = self._completed.get(upload_id)
        if done is not None:
            if not done.owner.admits(caller):
                return self._answer(self._unknown(upload_id), session, not found)
            stored = done.stored
            body: dict[str, Any] = {
                "upload_id": upload_id,
                "received": stored.size,
                "size": stored.size,
                "file": _wire(stored),
            }
        else:
            partial = await self._find(upload_id) if self.partial_directory else None
            if partial is None or not partial.owner.admits(caller):
                return self._answer(self._unknown(upload_id), session, not found)
            body = partial.status()
        return web.json_response(
            body,
            dumps=lambda o: orjson.dumps(o).decode(),
            headers={SESSION_HEADER: session.session},
        )

    # WebSocket -------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            heartbeat=self._settings.heartbeat_interval,
            max_msg_size=self.frame_limit,
            autoping=True,
        )
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {"error": f"POST a file to {self.path}, or open a WebSocket here"},
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
    ) -> _Answer | None:
        try:
            message = await ws.receive(timeout=self.idle_timeout)
        except TimeoutError:
            return self._fail(None, 408, "timeout: no header frame", StatusCode.TIMEOUT)
        if message.type != WSMsgType.TEXT:
            if message.type == WSMsgType.BINARY:
                return self._fail(None, 400, "bad request: the first frame must be the header")
            return None
        try:
            header = _WsHeader.model_validate(orjson.loads(message.data))
            digests = _digests(header.md5, header.sha256)
        except orjson.JSONDecodeError as exc:
            return self._fail(None, 400, f"bad request: the header is not JSON: {exc}")
        except ValidationError as exc:
            return self._fail(
                None, 400, f"bad request: invalid header: {format_validation_error(exc)}"
            )
        except _Refusal as exc:
            return self._fail(None, exc.status, str(exc), exc.code)
        if header.upload_id is not None and not _UPLOAD_ID.fullmatch(header.upload_id):
            return self._fail(
                None,
                400,
                f"bad request: upload_id must be 1 to {MAX_ID_LENGTH} printable ASCII characters",
            )
        if header.offset > header.size:
            return self._fail(header.upload_id, 400, "bad request: offset is past size")
        spec = _Spec(
            upload_id=header.upload_id or uuid.uuid4().hex,
            resumable=header.upload_id is not None,
            name=sanitize_filename(header.name),
            size=header.size,
            start=header.offset,
            end=header.size,
            digests=digests,
        )
        return await self._receive(
            spec, session, _WebSocketChannel(ws, self.idle_timeout), transport
        )


def _wire(stored: StoredFile) -> dict[str, Any]:
    """The data of the ok answer: the FileInfo fields, never the server's path."""
    return stored.model_dump(mode="json", exclude={"path"})
