"""The server's upload endpoint as the client sees it: where it is and what it answers.

An adapter describes where and how it uploads with an `UploadTarget` (`upload_urls` derives a
WebSocket server's endpoint from its URL). The engine in `siyi_sdk.adapters.upload` asks the
endpoint how much of an upload arrived (`fetch_status`, ``GET {url}/{id}``) and reads the
answer to each part it sends (`read_answer`): a `FileInfo`, or the typed error of the
server's error Response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import orjson
from pydantic import ValidationError

from ..errors import BadRequestError, ProtocolError, TransportError, error_for_response
from ..packets import Response, parse_message
from ..wire import RESUME_FROM, FileInfo
from .base import SessionRef
from .tls import SSLOption, certificate_error

__all__ = [
    "MisplacedError",
    "UploadStatus",
    "UploadTarget",
    "fetch_status",
    "read_answer",
    "upload_urls",
]


@dataclass
class UploadTarget:
    """Where and how one adapter uploads: the adapter builds it from its own settings.

    Attributes:
        label: how logs and errors name the upload (``"<adapter name> upload"``).
        url: the HTTP endpoint: POST here, ``GET {url}/{id}`` for an upload's status.
        ws_url: the WebSocket endpoint, or None to POST.
        headers: the headers of every request (key, session), asked for afresh each time.
        session: the adapter's session key holder (adopts a key the server returns).
        sleep: how to wait between attempts.
        reconnect_interval: the first backoff delay in seconds.
        max_reconnect_interval: the backoff's ceiling.
        attempts: attempts at the upload (the first and its resumes) before giving up.
        connect_timeout: seconds to connect (None: no limit).
        answer_timeout: seconds for the answer once the bytes are out (None: no limit).
        heartbeat: seconds between pings on the upload WebSocket (None: none).
        ssl: the adapter's TLS setting: an upload trusts what its adapter does.
    """

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
    ssl: SSLOption = None


def upload_urls(ws_url: str, path: str) -> tuple[str, str]:
    """The HTTP and WebSocket URLs of the upload endpoint at `path` of a WebSocket server.

    ``upload_urls("wss://host:8765", "/upload")`` is
    ``("https://host:8765/upload", "wss://host:8765/upload")``; a path in the WebSocket URL
    (a server mounted at ``ws://host/siyi``) is kept as a prefix: ``.../siyi/upload``.
    """
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    ws_scheme = "wss" if scheme == "https" else "ws"
    # A server mounted under a prefix (``ws://host/siyi``) serves its uploads under it too.
    path = parts.path.rstrip("/") + path
    return (
        urlunsplit((scheme, parts.netloc, path, "", "")),
        urlunsplit((ws_scheme, parts.netloc, path, "", "")),
    )


@dataclass
class UploadStatus:
    """What the server has of one upload.

    Attributes:
        received: the bytes it holds.
        size: the upload's declared size.
        file: the stored file, once the upload completed (else None).
    """

    received: int
    size: int
    file: FileInfo | None


class MisplacedError(BadRequestError):
    """The server has a different number of bytes than the part started from: ask again."""


def read_answer(label: str, status: int | str, body: bytes | str) -> FileInfo:
    """The FileInfo of an ok answer; raise the typed error of any other.

    Args:
        label: how errors name the upload (`UploadTarget.label`).
        status: what carried the answer, for errors (``"HTTP 200"``, ``"WebSocket"``).
        body: the answer: one Response packet.

    Raises:
        MisplacedError: the part started at an offset the server does not hold.
        ApiError: the server's error Response, typed by its code.
        TransportError: the answer is no Response, or carries no file description.
    """
    try:
        packet = parse_message(body)
    except ProtocolError as exc:
        raise TransportError(f"{label}: {status} with no packet ({exc})") from None
    if not isinstance(packet, Response):
        raise TransportError(f"{label}: the server answered a {packet.type}")
    if not packet.ok:
        if packet.code == 400 and (packet.error or "").startswith(RESUME_FROM):
            raise MisplacedError(packet.error or "", response=packet)
        raise error_for_response(packet)
    try:
        return FileInfo.model_validate(packet.data)
    except ValidationError:
        raise TransportError(
            f"{label}: the answer is not a file description: {packet.data!r}"
        ) from None


async def fetch_status(
    target: UploadTarget, http: aiohttp.ClientSession, upload_id: str
) -> UploadStatus | None:
    """What the server has of upload `upload_id`; None when it knows nothing of it.

    Args:
        target: the endpoint (``GET {target.url}/{upload_id}``).
        http: the HTTP session to ask with.
        upload_id: the upload's id.

    Raises:
        CertificateError: the server's TLS certificate did not verify.
        ApiError: the server refused to say (the typed error of its Response).
        TransportError: no answer, or one that is no upload status.
    """
    url = f"{target.url}/{quote(upload_id, safe='')}"
    try:
        async with http.get(
            url,
            headers=target.headers(),
            timeout=aiohttp.ClientTimeout(
                total=target.answer_timeout, sock_connect=target.connect_timeout
            ),
        ) as reply:
            target.session.adopt(reply.headers, target.label)
            body = await reply.read()
    except aiohttp.ClientConnectorCertificateError as exc:
        raise certificate_error(exc, url) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise TransportError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
    if reply.status == 200:
        try:
            obj: Any = orjson.loads(body)
            file = obj.get("file")
            return UploadStatus(
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
