"""How a handler's outcome becomes the answer sent: written once, for the client and the server.

A request handler may return a Response, return a plain result, raise an `ApiError` (an error
Response with its code) or raise anything else (a 500 that leaks no traceback; the traceback is
logged here). `failure` maps exceptions, `answer_to` checks what was answered, `encode_result`
turns a result straight into the frame to send (the server's flat path builds no Response model
for an ok answer), and `call_request_handler` is the same for a handler that may be awaited.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Final

from .errors import ApiError
from .logs import SessionTagged, call_extra
from .packets import Request, Response, StatusCode, encode, encode_ok

__all__ = [
    "EAGER_TASKS",
    "answer_to",
    "call_event_handler",
    "call_request_handler",
    "encode_response",
    "encode_result",
    "failure",
    "start_task",
]

logger = logging.getLogger(__name__)


def failure(
    request: Request,
    exc: Exception,
    session: SessionTagged | None = None,
    transport: str | None = None,
) -> Response:
    """The Response for a handler (or middleware) that raised `exc` while answering `request`.

    An `ApiError` becomes an error Response with its code (`FAILED` without one); anything
    else is a programming error: a 500 to the peer, without a traceback, and a logged one here
    (with `session`'s hashed key and the `transport` that carried the request, when given:
    `logs.call_extra`).
    """
    if isinstance(exc, ApiError):
        return Response.fail(request.id, exc.message, exc.code or StatusCode.FAILED)
    logger.error(
        "handler for %r raised",
        request.command,
        exc_info=exc,
        extra=call_extra(request, session, transport),
    )
    return Response.fail(
        request.id,
        f"internal error: the handler for {request.command!r} raised an exception",
        StatusCode.INTERNAL_ERROR,
    )


async def call_request_handler(
    handler: Callable[..., Any],
    args: tuple[Any, ...],
    request: Request,
    session: SessionTagged | None = None,
    transport: str | None = None,
) -> Response:
    """Run a request handler and turn whatever happens into a Response.

    The handler may be sync or async and must return a Response; what it raises is mapped
    by `failure`, and a return value that is not a Response is a 500 (`answer_to`).

    Args:
        handler: the user's handler.
        args: the arguments to call it with.
        request: the Request being answered.
        session: the session it came from, for the log line of a failure.
        transport: ``"websocket"`` or ``"http"``, what carried it, for that line too.

    Returns:
        The Response to send, with the request's id.
    """
    try:
        result = handler(*args)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        return failure(request, exc, session, transport)
    return answer_to(request, result, "the handler", session, transport)


def answer_to(
    request: Request,
    result: object,
    source: str,
    session: SessionTagged | None = None,
    transport: str | None = None,
) -> Response:
    """`result` as the answer to `request`: its id set, or a 500 when it is no Response.

    Args:
        request: the Request answered.
        result: what `source` (a handler, a middleware) answered with.
        source: how the log and the 500's message name what answered.
        session: the session `request` came from, for the log line.
        transport: what carried `request` (``"websocket"``, ``"http"``), for the log line.
    """
    if not isinstance(result, Response):
        logger.error(
            "%s for %r returned %s, not a Response",
            source,
            request.command,
            type(result).__name__,
            extra=call_extra(request, session, transport),
        )
        return Response.fail(
            request.id,
            f"internal error: {source} for {request.command!r} returned no Response",
            StatusCode.INTERNAL_ERROR,
        )
    if result.id != request.id:
        # A Response answers exactly one request: never let a handler mislabel it.
        result = result.model_copy(update={"id": request.id})
    return result


async def call_event_handler(
    handler: Callable[..., Any],
    args: tuple[Any, ...],
    name: str,
    session: SessionTagged | None = None,
    event_id: str | None = None,
    transport: str | None = None,
    upload_id: str | None = None,
) -> None:
    """Run an event handler (sync or async); an exception is logged, never propagated.

    Args:
        handler: the user's handler (or a connect, disconnect, session-end one).
        args: the arguments to call it with.
        name: the event's name (or ``"connect"``...), for the log line.
        session: the session it concerns, for the log line.
        event_id: the event's id, for the log line.
        transport: what carried the event (``"websocket"``, ``"http"``), for the log line.
        upload_id: the upload an ``on_upload`` handler was given, for the log line.
    """
    try:
        result = handler(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception(
            "handler for event %r raised",
            name,
            extra=call_extra(
                None, session, transport, event=name, event_id=event_id, upload_id=upload_id
            ),
        )


def _not_serialisable(
    request_id: str | None,
    request: Request | None = None,
    session: SessionTagged | None = None,
    transport: str | None = None,
) -> bytes:
    logger.exception(
        "the result for request %r is not JSON-serialisable",
        request_id,
        extra=call_extra(request, session, transport, request_id=request_id),
    )
    return encode(
        Response.fail(
            request_id,
            "internal error: the result is not JSON-serialisable",
            StatusCode.INTERNAL_ERROR,
        )
    )


def encode_response(response: Response) -> bytes:
    """Encode a Response; data that is not JSON-serialisable becomes a 500 (logged)."""
    try:
        return encode(response)
    except TypeError:
        return _not_serialisable(response.id)


def encode_result(
    request: Request,
    result: object,
    session: SessionTagged | None = None,
    transport: str | None = None,
) -> bytes:
    """The frame answering `request` with a command handler's `result`.

    A Response is sent as it is (with the request's id); anything else is the data of an ok
    answer, encoded without building a Response. Data that is not JSON-serialisable is a 500
    (logged, with `session`'s hashed key and the `transport` when given).
    """
    if isinstance(result, Response):
        response = answer_to(request, result, "the handler", session, transport)
        try:
            return encode(response)
        except TypeError:
            return _not_serialisable(response.id, request, session, transport)
    try:
        return encode_ok(request.id, result)
    except TypeError:
        return _not_serialisable(request.id, request, session, transport)


def start_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Start a request's task; on Python 3.12+ its first step runs at once (eager start).

    A handler that answers without waiting then finishes before this returns and costs no trip
    through the event loop. The task is real either way, so `asyncio.current_task()` (used by
    `asyncio.timeout`, the handler deadline, client libraries) is right. Python 3.11 has no
    eager start: there the task runs on the next turn.

    Returns:
        The task, or None if it already finished.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.Task(coro, loop=loop, **_EAGER)
    return None if task.done() else task


_EAGER: dict[str, Any] = {"eager_start": True} if sys.version_info >= (3, 12) else {}
EAGER_TASKS: Final = bool(_EAGER)
"""True where request tasks start eagerly (Python 3.12+)."""
