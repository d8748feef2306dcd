"""Writing a part's bytes to disk: batched, off the event loop, hashed as they are written."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from .records import MiB, Partial

__all__ = ["Sink"]


class Sink:
    """Appends a part's bytes to a partial upload's file off the event loop, hashing them.

    Bytes are batched to about `batch` bytes, and a batch is written while the next one is
    read (at most one write in flight): memory stays bounded by two batches.
    """

    def __init__(self, partial: Partial, executor: ThreadPoolExecutor, batch: int) -> None:
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
                while data := file.read(MiB):
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
