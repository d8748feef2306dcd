"""What an upload reads: the caller's source, made re-readable, and its MD5 as it goes.

A source is a path, bytes, a binary file object, or an async iterator of bytes. A file object
that cannot seek and an async iterator are first spooled to a temporary file (on disk, never in
memory), so that their size is known and a resume can re-read them. `Snapshots` keeps MD5
states at chunk boundaries, so that a resumed WebSocket upload continues the digest from the
server's offset instead of re-reading the whole file. The upload itself is `adapters.upload`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Final, TypeAlias, cast

__all__ = [
    "CHUNK_SIZE",
    "Hasher",
    "Snapshots",
    "Source",
    "UploadProgress",
    "UploadSource",
    "hash_range",
    "open_source",
    "read_and_hash",
    "replayable",
]

CHUNK_SIZE: Final = 256 * 1024
"""Bytes per WebSocket frame and per read from the source."""

UploadSource: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | AsyncIterable[bytes]
)
"""What can be uploaded: a path, bytes, a binary file object, or an async iterator of bytes."""
UploadProgress: TypeAlias = Callable[[int, int], Awaitable[None] | None]
"""``progress(sent_bytes, total_bytes)``, sync or async, called as bytes go out."""


# Sources -------------------------------------------------------------------------------------


class Source:
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


def _open_path(path: Path, name: str | None) -> Source:
    file = path.open("rb")
    size = os.fstat(file.fileno()).st_size
    return Source(name or path.name, size, _file_reader(file, 0), file.close)


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
async def open_source(source: UploadSource, name: str | None) -> AsyncIterator[Source]:
    """Turn what the caller passed into a re-readable `Source`; release it on exit.

    Raises:
        TypeError: `source` is none of the supported kinds.
        OSError: a path cannot be opened.
    """
    name = name or _default_name(source)
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        yield Source(name or "upload", len(view), lambda o, n: bytes(view[o : o + n]))
        return
    if isinstance(source, str | os.PathLike):
        src = await asyncio.to_thread(_open_path, Path(source), name)
    elif hasattr(source, "read"):
        file = cast(IO[bytes], source)
        if await asyncio.to_thread(file.seekable):
            base = await asyncio.to_thread(file.tell)
            end = await asyncio.to_thread(file.seek, 0, os.SEEK_END)
            # The caller's file: read, never closed.
            src = Source(name or "upload", end - base, _file_reader(file, base))
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


async def _spooled(chunks: AsyncIterable[bytes], name: str | None) -> Source:
    spool = await _spool(chunks)
    size = await asyncio.to_thread(spool.seek, 0, os.SEEK_END)
    return Source(name or "upload", size, _file_reader(spool, 0), spool.close)


# Digests -------------------------------------------------------------------------------------

Hasher: TypeAlias = "hashlib._Hash"


class Snapshots:
    """MD5 states at chunk boundaries, to continue hashing from where the server stopped.

    Bounded: every state within the last `window` bytes sent (where a cut can leave the
    server), plus one every `spacing` bytes before that. A resume at an offset between two
    states starts from the one before it and re-reads the gap.
    """

    def __init__(self, window: int = 32 * 1024 * 1024, spacing: int = 16 * 1024 * 1024) -> None:
        self._window = window
        self._spacing = spacing
        self._offsets: list[int] = [0]
        self._states: dict[int, Hasher] = {0: hashlib.md5(usedforsecurity=False)}
        self._checkpoints: set[int] = {0}

    def add(self, offset: int, state: Hasher) -> None:
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

    def at_or_before(self, offset: int) -> tuple[int, Hasher]:
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


def hash_range(source: Source, hasher: Hasher, start: int, end: int) -> None:
    """Blocking: feed bytes ``start:end`` of `source` to `hasher`."""
    while start < end:
        data = source.read(start, min(1024 * 1024, end - start))
        hasher.update(data)
        start += len(data)


def read_and_hash(source: Source, offset: int, hasher: Hasher) -> tuple[bytes, Hasher]:
    """Blocking: the chunk at `offset`, fed to `hasher`; returns it and the state after it."""
    data = source.read(offset, CHUNK_SIZE)
    hasher.update(data)
    return data, hasher.copy()
