"""Deadlines, cancellation and streamed answers (PROTOCOL.md §9, §10): one engine for both sides.

The side that sends a Request stamps its time budget on it (`stamp`: ``meta.timeout``, capped by
what is left of the budget of the handler it runs in, as gRPC propagates deadlines). The side
that answers runs the handler through `Runs.run`: under the smaller of that budget and its own
deadline (408 when it runs out), cancellable by the sender's ``siyi.cancel`` (499), and, for a
streaming handler, through `Runs.pump`, which sends ``siyi.chunk`` events no further ahead of
the requester's ``siyi.ack`` than its window. `Inbox` is the requester's end of a stream.

The server keeps one `Runs` per session (`Connection.runs`), a client one per session it holds
(`SessionRef.runs`): request ids are scoped by session (§6), and so are their cancels and acks.

Why one module of about 480 lines: deadlines, cancels and stream windows are one state per
request (`Runs`), read on both sides and by the same reserved events; split, each change to
one rule would reach across modules.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final, NamedTuple

from .errors import ConnectionClosedError, NotConnectedError
from .logs import SessionTagged, call_extra
from .outcome import failure
from .packets import Event, Request, Response, StatusCode, encode_event, encode_ok, new_id

__all__ = [
    "ACK_EVENT",
    "CANCEL_EVENT",
    "CHUNK_EVENT",
    "DEFAULT_WINDOW",
    "RESERVED_PREFIX",
    "Inbox",
    "Runs",
    "Sink",
    "aclose",
    "answer_stream",
    "budget",
    "cancel_packet",
    "collect",
    "is_reserved",
    "remaining",
    "requested_timeout",
    "requested_window",
    "stamp",
    "unanswered",
    "within",
]

logger = logging.getLogger(__name__)

RESERVED_PREFIX: Final = "siyi."
"""Event names that begin with this are the protocol's own (§10): never a user's handler's."""
CANCEL_EVENT: Final = "siyi.cancel"
"""``{"id": <request id>}``: the sender withdraws its request (§10)."""
CHUNK_EVENT: Final = "siyi.chunk"
"""``{"id": <request id>, "seq": N, "data": <item>}``: one item of a streamed answer (§10)."""
ACK_EVENT: Final = "siyi.ack"
"""``{"id": <request id>, "seq": N}``: the requester consumed every chunk up to N (§10)."""

DEFAULT_WINDOW: Final = 64
"""Chunks a streamed answer may have in flight by default (§10). Acknowledged every half window,
so the sender wakes once per 32 items: measured on loopback, a window of 16 cost twice the
server CPU per item and reached a third of the rate of plain events; 64 is on a par with them.
It bounds what a slow consumer holds to 64 items."""

CANCELLED_MESSAGE: Final = "cancelled: the sender withdrew the request"

_deadline: ContextVar[float | None] = ContextVar("siyi_deadline", default=None)
"""When the budget of the handler running in this context ends (`time.monotonic()`)."""

_chunk_ids = itertools.count()
_CHUNK_PREFIX: Final = secrets.token_hex(6)


async def aclose(items: AsyncIterator[Any]) -> None:
    """Close an async iterator that has an ``aclose``, such as an async generator.

    Its ``finally`` then runs now, not whenever the garbage collector gets to it.
    """
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()


def unanswered(future: asyncio.Future[Any]) -> bool:
    """True when the answer `future` waits for has not come: withdraw the request.

    Awaiting a future in a task that is cancelled cancels the future too, so a cancelled
    future counts as unanswered, as does one still pending.
    """
    return future.cancelled() or not future.done()


def cancel_packet(request_id: str) -> tuple[str, bytes]:
    """The ``siyi.cancel`` event withdrawing `request_id` (§10): its own id, and its frame."""
    event_id = new_id()
    return event_id, encode_event(event_id, CANCEL_EVENT, {"id": request_id})


def is_reserved(name: str) -> bool:
    """True for an event name the protocol reserves (``siyi.*``)."""
    return name.startswith(RESERVED_PREFIX)


def remaining() -> float | None:
    """Seconds left of the budget of the handler running now; None outside one or unbounded."""
    deadline = _deadline.get()
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def budget(timeout: float | None) -> float | None:
    """The timeout of a request sent now: `timeout`, capped by the current handler's budget.

    What is left of the budget of the handler this runs in, so a chain of calls never
    outlives its first caller.
    """
    left = remaining()
    if left is None:
        return timeout
    return left if timeout is None else min(timeout, left)


def capped(timeout: float | None) -> float | None:
    """`budget`, in one context-variable read when no handler's budget applies (the usual)."""
    return timeout if _deadline.get() is None else budget(timeout)


@contextmanager
def within(timeout: float | None) -> Iterator[None]:
    """Bound the budget of what is sent inside the block to `timeout` seconds from now.

    Requests sent inside carry no more than that in ``meta.timeout`` (`stamp`), however long
    their adapter would wait: what `Api` and `AdapterManager` do with their own timeouts.
    """
    if timeout is None:
        yield
        return
    deadline = time.monotonic() + timeout
    current = _deadline.get()
    token = _deadline.set(deadline if current is None else min(current, deadline))
    try:
        yield
    finally:
        _deadline.reset(token)


def stamp(request: Request, timeout: float | None) -> float | None:
    """Cap `timeout` by the current budget and carry it as the request's ``meta.timeout``.

    Returns:
        The timeout to wait for the answer with (None: no limit).
    """
    timeout = capped(timeout)
    if timeout is not None:
        meta = request.meta
        # A new dict: the caller's own (a middleware's, a reused packet's) is not changed.
        # Stored as pydantic's own assignment would (no validation on assignment), without
        # its __setattr__ machinery: every request passes here.
        request.__dict__["meta"] = (
            {"timeout": timeout} if not meta else {**meta, "timeout": timeout}
        )
        request.__pydantic_fields_set__.add("meta")
    return timeout


def requested_timeout(request: Request) -> float | None:
    """The request's ``meta.timeout`` when it is a usable number of seconds, else None."""
    meta = request.meta
    if not meta:
        return None
    value: Any = meta.get("timeout")
    if type(value) in (int, float) and value >= 0 and math.isfinite(value):
        return float(value)
    return None


def requested_window(request: Request) -> int | None:
    """The request's ``meta.window`` when it is a positive integer, else None (no stream)."""
    meta = request.meta
    if not meta:
        return None
    value = meta.get("window")
    return value if type(value) is int and value > 0 else None


class Sink(NamedTuple):
    """Where the chunks of a streamed answer go.

    `send` writes one encoded chunk; `window` bounds the chunks not yet acknowledged (None:
    the transport's own flow control does it, as TCP's for NDJSON over HTTP).
    """

    send: Callable[[bytes], Awaitable[None]]
    window: int | None


async def collect(request: Request, items: AsyncIterator[Any], max_size: int | None) -> Response:
    """A streaming handler's items as one array, for a request that asked for no stream (§10).

    413 when the array is over `max_size` bytes. `items` is closed either way.
    """
    try:
        data = [item async for item in items]
    finally:
        await aclose(items)
    if max_size is not None:
        size = len(encode_ok(request.id, data))
        if size > max_size:
            return Response.fail(
                request.id,
                f"too large: the {len(data)} items of {request.command!r} make {size} bytes, "
                f"over the limit of {max_size}; ask for a stream",
                StatusCode.TOO_LARGE,
            )
    return Response.success(request.id, data)


async def answer_stream(
    runs: Runs,
    request: Request,
    start: Callable[[], Any],
    sink: Sink | None,
    max_size: int | None,
    session: SessionTagged | None = None,
    transport: str | None = None,
) -> Response:
    """The answer of a streaming handler, on either side (§10); never raises.

    `start()` calls the handler: its async iterator of items (or a Response answering at
    once, such as a 400 for params that do not fit). The items go to `sink` as chunks when
    the request asked for a stream, else they are answered as one array (`collect`). What
    the handler raises ends the stream with its error (`outcome.failure`, logged with
    `session`'s hashed key and the `transport` that carried the request); a sink whose
    connection dropped ends it with 499.
    """
    try:
        items = start()
        if isinstance(items, Response):
            return items
        if sink is None:
            return await collect(request, items, max_size)
        try:
            return await runs.pump(request, items, sink.send, sink.window)
        except (NotConnectedError, ConnectionClosedError):
            logger.debug(
                "the stream answering %r ended: its connection dropped",
                request.command,
                extra=call_extra(request, session, transport),
            )
            return Response.fail(
                request.id, "cancelled: the stream's connection dropped", StatusCode.CANCELLED
            )
    except Exception as exc:
        return failure(request, exc, session, transport)


class _Run:
    __slots__ = ("acked", "reason", "room", "task")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.reason: int | None = None
        """Why this side cancelled the run: `StatusCode.TIMEOUT` or `CANCELLED`."""
        self.acked = -1
        self.room: asyncio.Future[None] | None = None

    def stop(self, reason: int) -> bool:
        """Cancel the run's task for `reason`, unless it was stopped already."""
        if self.reason is not None or self.task is None or self.task.done():
            return False
        self.reason = reason
        self.task.cancel()
        return True

    def wake(self) -> None:
        room = self.room
        if room is not None and not room.done():
            room.set_result(None)


def _deadline_passed(run: _Run) -> None:
    run.stop(StatusCode.TIMEOUT)


def _discard(answer: Awaitable[Any]) -> None:
    """Drop a run that will not be awaited: close its coroutine, cancel its future."""
    if inspect.iscoroutine(answer):
        answer.close()
    elif isinstance(answer, asyncio.Future):
        answer.cancel()


EARLY_CANCEL_TTL: Final = 5.0
"""Seconds a ``siyi.cancel`` for a request not running yet is kept for that request."""
EARLY_CANCEL_MAX: Final = 64
"""Such cancels kept at most per session (the oldest go first)."""


class Runs:
    """The requests this side is answering for one session: their deadlines, cancels, acks.

    A cancel can overtake its request's start: read in the same batch of frames as the request
    (its task has not run yet), or while the request waits for its at-most-once check. Such a
    cancel is kept a few seconds (`EARLY_CANCEL_TTL`, at most `EARLY_CANCEL_MAX` of them), and
    the request, when it starts, is answered 499 without running. A cancel for a request
    answered already is kept the same way and changes nothing: a repeat of that id is answered
    from the at-most-once record (§6), which keeps its answer far longer.
    """

    __slots__ = ("_early", "_runs")

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._early: dict[str, float] | None = None  # made for the first early cancel

    async def run(
        self,
        request: Request,
        answer: Awaitable[Response],
        limit: float | None,
        session: SessionTagged | None = None,
        transport: str | None = None,
    ) -> Response:
        """Await `answer` (the handler's run) under the request's deadline, cancellable.

        The deadline is the smaller of `limit` (this side's own) and the sender's
        ``meta.timeout``; past it the run is cancelled and answered 408. A ``siyi.cancel`` for
        the request (`cancel`) cancels it and answers 499. Inside, `remaining()` is what is
        left, so requests the handler sends carry no more than that. Both are one timer
        handle and a flag, not an `asyncio.timeout` scope: this is on every request's path.
        Both ends are logged, with `session`'s hashed key and the `transport` that carried the
        request (`logs.call_extra`): given as they are, they cost nothing until a line is logged.
        """
        rid = request.id
        if self._early is not None and self._withdrawn(rid):
            _discard(answer)
            logger.debug(
                "the sender withdrew %r before it started: answered 499",
                request.command,
                extra=call_extra(request, session, transport),
            )
            return Response.fail(rid, CANCELLED_MESSAGE, StatusCode.CANCELLED)
        sent = requested_timeout(request)
        timeout = limit if sent is None else sent if limit is None else min(limit, sent)
        task = asyncio.current_task()
        run = _Run(task)
        ours = rid not in self._runs
        if ours:
            self._runs[rid] = run
        token = timer = None
        if timeout is not None:
            deadline = time.monotonic() + timeout
            token = _deadline.set(deadline)
            timer = asyncio.get_running_loop().call_later(timeout, _deadline_passed, run)
        try:
            return await answer
        except asyncio.CancelledError:
            reason = run.reason
            # Answered here, unless someone else (a shutdown) asked to cancel the task too.
            if reason is None or task is None or task.uncancel() > 0:
                raise
            if reason == StatusCode.TIMEOUT:
                # A handler that outlives its deadline is the operator's business: INFO.
                logger.info(
                    "the handler for %r ran past its deadline of %g s: answered 408",
                    request.command,
                    timeout,
                    extra=call_extra(request, session, transport),
                )
                return Response.fail(
                    rid,
                    f"timeout: {request.command!r} ran past its deadline of {timeout:g} s",
                    StatusCode.TIMEOUT,
                )
            # The sender's choice, not a fault here: DEBUG.
            logger.debug(
                "the sender withdrew %r: answered 499",
                request.command,
                extra=call_extra(request, session, transport),
            )
            return Response.fail(rid, CANCELLED_MESSAGE, StatusCode.CANCELLED)
        finally:
            if timer is not None:
                timer.cancel()
            if token is not None:
                _deadline.reset(token)
            if ours:
                del self._runs[rid]

    def cancel(self, request_id: str) -> bool:
        """Cancel the run of `request_id`; False if none is running (then kept a while).

        A request that starts within `EARLY_CANCEL_TTL` seconds is answered 499 unrun.
        """
        run = self._runs.get(request_id)
        if run is not None:
            return run.stop(StatusCode.CANCELLED)
        early = self._early
        if early is None:
            early = self._early = {}
        early.pop(request_id, None)
        early[request_id] = time.monotonic() + EARLY_CANCEL_TTL
        if len(early) > EARLY_CANCEL_MAX:
            del early[next(iter(early))]
        return False

    def _withdrawn(self, request_id: str) -> bool:
        """Whether a cancel for `request_id` came before it started (and is still fresh)."""
        early = self._early
        assert early is not None
        until = early.pop(request_id, None)
        now = time.monotonic()
        for rid, expires in list(early.items()):  # oldest first: stop at the first fresh one
            if expires > now:
                break
            del early[rid]
        if not early:
            self._early = None
        return until is not None and until > now

    def ack(self, request_id: str, seq: int) -> None:
        """The requester consumed every chunk of `request_id` up to `seq` (cumulative)."""
        run = self._runs.get(request_id)
        if run is not None and seq > run.acked:
            run.acked = seq
            run.wake()

    def control(self, event: Event) -> None:
        """Act on a reserved event of the answering side (``siyi.cancel``, ``siyi.ack``)."""
        data = event.data
        rid = data.get("id") if isinstance(data, dict) else None
        if type(rid) is not str:
            logger.debug(
                "ignored %s without a request id: %r", event.name, data, extra=call_extra(event)
            )
            return
        if event.name == CANCEL_EVENT:
            self.cancel(rid)
        elif event.name == ACK_EVENT:
            assert isinstance(data, dict)
            seq = data.get("seq")
            if type(seq) is int:
                self.ack(rid, seq)
        else:
            logger.debug(
                "ignored the reserved event %r", event.name, extra=call_extra(event, request_id=rid)
            )

    async def pump(
        self,
        request: Request,
        items: AsyncIterator[Any],
        send: Callable[[bytes], Awaitable[None]],
        window: int | None,
    ) -> Response:
        """Send the items of a streamed answer as ``siyi.chunk`` events; the final Response.

        With a `window`, no more than that many chunks are ever sent and not yet acknowledged,
        and the next item is not even asked of `items` before there is room for it. `items`
        is closed however this ends (its ``finally`` runs). An exception of `items` propagates
        (the caller answers with it, after the chunks already sent).
        """
        rid = request.id
        run = self._runs.get(rid) if window is not None else None
        seq = 0
        try:
            while True:
                if run is not None:
                    assert window is not None
                    while seq - run.acked > window:
                        run.room = asyncio.get_running_loop().create_future()
                        try:
                            await run.room
                        finally:
                            run.room = None
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    break
                chunk_id = f"{_CHUNK_PREFIX}-{next(_chunk_ids)}"
                await send(
                    encode_event(chunk_id, CHUNK_EVENT, {"id": rid, "seq": seq, "data": item})
                )
                seq += 1
        finally:
            await aclose(items)
        return Response.success(rid, seq)


class Inbox:
    """The requester's end of one stream: chunks in arrival order, consumed one at a time."""

    __slots__ = ("_waiter", "done", "items", "next_seq")

    def __init__(self, done: asyncio.Future[Any]) -> None:
        self.items: deque[Any] = deque()
        self.next_seq = 0
        self.done = done
        """Set with the final Response (or the error that ends the stream)."""
        self._waiter: asyncio.Future[None] | None = None
        done.add_done_callback(self._done)

    def _done(self, _: asyncio.Future[Any]) -> None:
        self.wake()

    def put(self, data: Any) -> None:
        """Take the data of one ``siyi.chunk`` event (out-of-order or repeated ones dropped)."""
        if not isinstance(data, dict) or data.get("seq") != self.next_seq:
            rid = data.get("id") if isinstance(data, dict) else None
            logger.debug(
                "dropped a chunk out of order: %r",
                data,
                extra=call_extra(request_id=rid if type(rid) is str else None),
            )
            return
        self.next_seq += 1
        self.items.append(data.get("data"))
        self.wake()

    def wake(self) -> None:
        """Wake the consumer (a chunk came, or the stream ended)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Wait until a chunk comes or `done` (the final Response) is set."""
        if self.items or self.done.done():
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None
