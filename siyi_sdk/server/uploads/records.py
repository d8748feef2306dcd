"""What the upload service knows of an upload: its owner, its progress, its stored file.

`StoredFile` and `UploadHandler` are public (re-exported by `siyi_sdk.server.uploads`); the
rest is the service's own bookkeeping, shared by its parts.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

from ...wire import FileInfo
from ..connection import Connection
from ..owners import owner_key, same_owner

__all__ = [
    "PARTIAL",
    "Done",
    "Hasher",
    "MiB",
    "Owner",
    "Partial",
    "StoredFile",
    "UploadHandler",
    "wire",
]

PARTIAL: Final = ".partial"
"""The folder of uploads in progress, under the upload directory."""
MiB: Final = 1024 * 1024


class StoredFile(FileInfo):
    """A completed upload, as `on_upload` handlers receive it: a `FileInfo` and its path.

    Attributes:
        path: where the file is stored: ``upload_dir/<file_id>/<name>``.
    """

    path: Path


UploadHandler: TypeAlias = Callable[[Connection, StoredFile], Awaitable[None] | None]
"""``handler(connection, stored_file)``, sync or async, run after each successful upload."""


# Owners --------------------------------------------------------------------------------------

_UNKNOWN: Final[Any] = object()
"""The principal of an owner read from disk: only its owner key is known."""
_NOBODY: Final = b""
"""An owner key no principal has (`owner_key` is never empty): for an unreadable owner."""


@dataclass(frozen=True, eq=False)  # never compared whole: see `admits`
class Owner:
    """Who an upload belongs to: its owner key, and the principal while this process has it."""

    key: bytes
    principal: Any = _UNKNOWN

    @classmethod
    def of(cls, principal: Any) -> Owner:
        """The owner `principal` is (in this process)."""
        return cls(owner_key(principal), principal)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Owner:
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
class Done:
    """A completed upload, kept `resume_ttl` seconds so its owner can ask for its answer."""

    stored: StoredFile
    at: float
    owner: Owner


# One upload in progress ----------------------------------------------------------------------

Hasher: TypeAlias = "hashlib._Hash"


@dataclass(eq=False)
class Partial:
    """An upload in progress: where its bytes are, how many, and the hashes so far."""

    upload_id: str
    name: str
    size: int
    directory: Path
    resumable: bool
    owner: Owner
    received: int = 0
    md5: Hasher | None = None  # of the first `received` bytes; None: re-hash the file
    sha256: Hasher | None = None
    declared: dict[str, str] = field(default_factory=dict)
    last_active: float = field(default_factory=time.monotonic)

    @property
    def data(self) -> Path:
        """The file of the bytes received so far."""
        return self.directory / "data"

    @property
    def state(self) -> Path:
        """The ``state.json`` that lets another process (or a restart) find the upload."""
        return self.directory / "state.json"

    def status(self) -> dict[str, Any]:
        """Where the upload stands, as ``GET /upload/{upload_id}`` tells it."""
        return {"upload_id": self.upload_id, "received": self.received, "size": self.size}


def wire(stored: StoredFile) -> dict[str, Any]:
    """The data of the ok answer: the FileInfo fields, never the server's path."""
    return stored.model_dump(mode="json", exclude={"path"})
