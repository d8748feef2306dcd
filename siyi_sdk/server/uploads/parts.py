"""One part of an upload as the endpoints read it, and the one answer it gets.

A part is declared by its request (`Spec`: HTTP headers, or a WebSocket's header frame) and
answered with one Response packet and an HTTP status (`Answer`); `Refusal` and `Interrupted`
are how the receiving code ends a part early.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from ...packets import MAX_ID_LENGTH, Response

__all__ = [
    "RANGE",
    "UPLOAD_ID",
    "Answer",
    "Interrupted",
    "Refusal",
    "Spec",
    "WsHeader",
    "fail",
    "parse_digests",
    "unknown",
]


class WsHeader(BaseModel):
    """The first text frame of a WebSocket upload."""

    model_config = ConfigDict(extra="ignore")

    upload_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    name: str = ""
    size: int = Field(ge=0)
    md5: str | None = None
    sha256: str | None = None
    offset: int = Field(default=0, ge=0)


@dataclass
class Spec:
    """One part of an upload, as its request declared it."""

    upload_id: str
    resumable: bool
    name: str
    size: int
    start: int
    end: int  # exclusive: the part carries bytes start..end
    digests: dict[str, str]


@dataclass
class Answer:
    """The one Response a part gets, its HTTP status, and where to resume when that helps."""

    response: Response
    status: int
    received: int | None = None


class Refusal(Exception):
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


class Interrupted(Exception):
    """The part ended before its last byte: the connection dropped, or it stalled."""

    def __init__(self, reason: str, *, stalled: bool = False) -> None:
        super().__init__(reason)
        self.stalled = stalled


_DIGEST_LENGTHS: Final = {"md5": 32, "sha256": 64}
_HEX = re.compile(r"[0-9a-fA-F]+")
UPLOAD_ID = re.compile(rf"[!-~]{{1,{MAX_ID_LENGTH}}}")  # printable ASCII, no spaces
RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+)")


def _digest(algorithm: str, value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value) != _DIGEST_LENGTHS[algorithm]
        or not _HEX.fullmatch(value)
    ):
        raise Refusal(
            400, f"bad request: {algorithm} must be {_DIGEST_LENGTHS[algorithm]} hex digits"
        )
    return value.lower()


def parse_digests(md5: object, sha256: object) -> dict[str, str]:
    """The digests a part declares, checked and lower-cased (a `Refusal` for a bad one)."""
    found = {}
    if md5 is not None:
        found["md5"] = _digest("md5", md5)
    if sha256 is not None:
        found["sha256"] = _digest("sha256", sha256)
    return found


def fail(
    upload_id: str | None,
    status: int,
    message: str,
    code: int | None = None,
    received: int | None = None,
) -> Answer:
    """An error answer: `code` in the Response (the HTTP `status` unless given)."""
    response = Response.fail(upload_id, message, code if code is not None else status)
    return Answer(response, status, received)


def unknown(upload_id: str) -> Answer:
    """The answer for an id nobody uploads, and for another principal's upload alike."""
    return fail(upload_id, 404, f"unknown upload {upload_id!r}")
