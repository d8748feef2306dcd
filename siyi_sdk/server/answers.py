"""The HTTP answers of the server's endpoints: one Response packet as the body (§3)."""

from __future__ import annotations

from aiohttp import web

from ..outcome import encode_response
from ..packets import SESSION_HEADER, Response, encode
from .connection import Connection

__all__ = ["JSON", "packet_answer", "refusal"]

JSON = "application/json"


def refusal(status: int, code: int, message: str) -> web.Response:
    """A call refused before it was dispatched: an error Response with no id, no session."""
    return web.Response(
        body=encode(Response.fail(None, message, code)), status=status, content_type=JSON
    )


def packet_answer(
    answer: Response | bytes, status: int = 200, session: Connection | None = None
) -> web.Response:
    """A Response (or its encoded frame) as the answer to an HTTP call.

    Args:
        answer: the Response, or the frame already encoded (sent as is).
        status: the HTTP status.
        session: the caller's session: its key goes back in ``X-Siyi-Session``.
    """
    body = answer if isinstance(answer, bytes) else encode_response(answer)
    headers = {SESSION_HEADER: session.session} if session is not None else None
    return web.Response(body=body, status=status, content_type=JSON, headers=headers)
