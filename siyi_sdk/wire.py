"""What the client and the server agree on besides packets: upload headers, `FileInfo`, limits.

Both sides import this module, so that neither imports the other: the server takes its upload
headers and size limit from here, not from the client's adapters. It holds only constants and
models (no I/O) and imports nothing of the package. Packets, their codec and the session
headers are in `siyi_sdk.packets`.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_UPLOAD_SIZE",
    "FILE_MD5_HEADER",
    "FILE_NAME_HEADER",
    "FILE_SHA256_HEADER",
    "NDJSON",
    "RESUME_FROM",
    "UPLOAD_ID_HEADER",
    "UPLOAD_PATH",
    "UPLOAD_RECEIVED_HEADER",
    "FileInfo",
]

DEFAULT_MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024
"""The default size limit of one message (a WebSocket frame, a POST body), on both sides."""
DEFAULT_MAX_UPLOAD_SIZE: Final = 100 * 1024 * 1024
"""The default size limit of one uploaded file (PROTOCOL.md §8)."""
DEFAULT_MAX_IN_FLIGHT: Final = 1000
"""The default bound on requests running at once for one WebSocket (PROTOCOL.md §4)."""

NDJSON: Final = "application/x-ndjson"
"""The media type of a streamed answer over HTTP: one packet per line (PROTOCOL.md §10)."""

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
