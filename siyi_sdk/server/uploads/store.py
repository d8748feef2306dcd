"""The files behind the upload endpoints: where they live, and what is known of each.

`UploadStore` holds the uploads in progress (in memory, and on disk under
``<directory>/.partial``), the completed ones kept for a lost answer, one lock per upload id,
and the worker threads that touch the disk; it removes what expired (`sweep`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from ...logs import call_extra
from .records import PARTIAL, Done, Owner, Partial

__all__ = ["UploadStore"]

logger = logging.getLogger(__name__)


class UploadStore:
    """The uploads of one server: in progress, completed, and their files.

    Args:
        directory: where files are stored (None: a temporary directory made by `open` and
            removed by `close`).

    Attributes:
        partials: the uploads in progress this process knows, by id.
        completed: the uploads completed within `resume_ttl`, by id (their answer may be asked
            for again).
        executor: the threads that touch the disk (between `open` and `close`).
    """

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self._configured = Path(directory) if directory is not None else None
        self._directory: Path | None = self._configured
        self.partials: dict[str, Partial] = {}
        self.completed: dict[str, Done] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.executor: ThreadPoolExecutor | None = None

    @property
    def directory(self) -> Path | None:
        """Where files are stored (None before the first start when none was configured)."""
        return self._directory

    @property
    def partial_directory(self) -> Path | None:
        """Where uploads in progress live: ``directory/.partial``."""
        return None if self._directory is None else self._directory / PARTIAL

    async def open(self) -> None:
        """Make the directories (a temporary one if none was configured) and the threads."""
        if self._configured is None:
            self._directory = Path(
                await asyncio.to_thread(tempfile.mkdtemp, prefix="siyi-uploads-")
            )
        else:
            self._directory = self._configured
        partials = self._directory / PARTIAL
        await asyncio.to_thread(partials.mkdir, parents=True, exist_ok=True)
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="siyi-upload")

    async def close(self) -> None:
        """Stop the threads and forget every upload (a temporary directory is removed)."""
        if self.executor is not None:
            executor, self.executor = self.executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)
        self.partials.clear()
        self.completed.clear()
        if self._configured is None and self._directory is not None:
            directory, self._directory = self._directory, None
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)

    def run(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run `function(*args)` on the store's threads."""
        return asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    # Expiry ----------------------------------------------------------------------------------

    async def sweep(self, resume_ttl: float) -> None:
        """Remove partial uploads not resumed within `resume_ttl` seconds (the sweeper calls this).

        Completed uploads kept that long for a lost answer are forgotten too.
        """
        now = time.monotonic()
        for upload_id, partial in list(self.partials.items()):
            lock = self._locks.get(upload_id)
            if lock is not None and lock.locked():
                continue  # a part is running or waiting: it is not abandoned
            if now - partial.last_active > resume_ttl:
                logger.info(
                    "partial upload %s (%r, %d of %d bytes) expired",
                    upload_id,
                    partial.name,
                    partial.received,
                    partial.size,
                    extra=call_extra(upload_id=upload_id),
                )
                await self.discard(partial)
        for upload_id, done in list(self.completed.items()):
            if now - done.at > resume_ttl:
                del self.completed[upload_id]
        known = {p.directory.name for p in self.partials.values()}
        await self.run(self._sweep_disk, known, resume_ttl)

    def _sweep_disk(self, known: set[str], resume_ttl: float) -> None:
        # Partial uploads on disk that no part touched in this process: left by an earlier run.
        root = self.partial_directory
        if root is None or not root.is_dir():
            return
        horizon = time.time() - resume_ttl
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

    def lock(self, upload_id: str) -> asyncio.Lock:
        """The lock one part of upload `upload_id` holds while it runs (made if none)."""
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[upload_id] = lock
        return lock

    def running(self, upload_id: str) -> asyncio.Lock | None:
        """The lock of upload `upload_id`, if a part holds it or waits for it."""
        return self._locks.get(upload_id)

    def directory_of(self, upload_id: str) -> Path:
        """Where upload `upload_id` is kept while in progress."""
        root = self.partial_directory
        assert root is not None, "uploads are served only between start and stop"
        # Hashed: an id is the client's string and must not choose a path.
        return root / hashlib.sha256(upload_id.encode()).hexdigest()[:32]

    async def find(self, upload_id: str) -> Partial | None:
        """The partial upload of that id: in memory, else on disk (after a restart)."""
        partial = self.partials.get(upload_id)
        if partial is not None:
            return partial
        directory = self.directory_of(upload_id)
        state = await self.run(self._read_state, directory)
        if state is None or state.get("upload_id") != upload_id:
            return None
        partial = self.partials.get(upload_id)  # found by another task meanwhile
        if partial is None:
            # Its clock goes on from its last write, not from now: looking it up (anyone's
            # GET) must not keep an abandoned upload alive.
            idle = max(0.0, time.time() - float(state["touched"]))
            try:
                partial = Partial(
                    upload_id=upload_id,
                    name=str(state["name"]),
                    size=int(state["size"]),
                    directory=directory,
                    resumable=True,
                    owner=Owner.from_state(state),
                    received=int(state["received"]),
                    last_active=time.monotonic() - idle,
                )
            except (KeyError, TypeError, ValueError):
                logger.warning(
                    "partial upload %s: unreadable state in %s",
                    upload_id,
                    directory,
                    extra=call_extra(upload_id=upload_id),
                )
                return None
            self.partials[upload_id] = partial
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
    def create(partial: Partial) -> None:
        """Start a partial upload on disk: its empty data file and its ``state.json``."""
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

    async def discard(self, partial: Partial) -> None:
        """Forget a partial upload and remove its bytes."""
        if self.partials.get(partial.upload_id) is partial:
            del self.partials[partial.upload_id]
        await self.run(shutil.rmtree, partial.directory, True)

    def store_file(self, partial: Partial, file_id: str) -> Path:
        """Move a complete upload's bytes to ``<directory>/<file_id>/<name>`` (on a thread)."""
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

    def may_know(self, upload_id: str, caller: Any) -> bool:
        """False when this process holds upload `upload_id` and it is not `caller`'s.

        Memory only, so it never waits: a partial upload known only on disk is checked once
        its lock is held (`Receiver`, the status endpoint).
        """
        done = self.completed.get(upload_id)
        if done is not None:
            return done.owner.admits(caller)
        partial = self.partials.get(upload_id)
        return partial is None or partial.owner.admits(caller)
