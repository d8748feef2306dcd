"""AdapterManager: chooses an adapter per packet by mode and priority, and fails over."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import aiohttp

from ..calls import DEFAULT_WINDOW, aclose, within
from ..errors import AllAdaptersFailedError, RequestTimeoutError, TransportError
from ..instrument import instrument
from ..logs import call_extra
from ..packets import Event, Request, RequestPacket, ResponsePacket
from ..pipeline import ClientCall
from ..wire import FileInfo
from .base import Adapter, AdapterMode
from .upload_source import UploadProgress, UploadSource, replayable

__all__ = ["AdapterManager"]

logger = logging.getLogger(__name__)

# What says "this route failed, the packet may not have arrived": try the next adapter.
# TransportError is a ConnectionError, which is an OSError; aiohttp's own errors are not.
_FAILOVER = (OSError, aiohttp.ClientError)

T = TypeVar("T")


class AdapterManager(Adapter):
    """Several adapters behind one: itself an Adapter, so `Api` and tests take it as any other.

    Sending: SEND adapters are tried by priority (higher first; ties in the order added),
    skipping those that know they are down (`is_available` False). On a transport failure
    (`TransportError`, `ConnectionError`, `OSError`, aiohttp's client errors) the same packet,
    same id, goes to the next one: the server runs a request id at most once, so a retry is
    safe. An error Response is an answer and is returned, never failed over; a timeout
    (`RequestTimeoutError`, any `TimeoutError`) is raised as is: the time budget is spent.
    When the preferred adapter is back, traffic returns to it. When every adapter fails,
    `AllAdaptersFailedError` names each one's failure.

    Receiving: events and server requests that RECEIVE adapters get are handed to the
    handlers registered on the adapter itself, else to the manager's. An event carried by two
    adapters (same id) reaches the manager's handlers once.

    Sessions: the adapters share one session key (`session`), so the server sees one peer
    (one at-most-once namespace, one replay buffer) whichever adapter carries a packet.

    Middleware (`use`): the manager's chain sees each request and event once, however many
    adapters were tried: `call.carrier` is the adapter that answered (or held it when the time
    ran out), `call.transport` its transport, and `call.failovers` lists ``(adapter, error)``
    for each adapter that failed or was skipped as down before it. Each adapter's own chain
    still runs for the attempts that go through it. Received events and requests that the
    adapters hand on pass the manager's chain once (a duplicate event is dropped first), with
    `call.carrier` the adapter that received them.

    Attributes:
        last_adapter: the adapter that carried the last packet (for tests and metrics).
    """

    mode = AdapterMode.SEND | AdapterMode.RECEIVE

    def __init__(self, adapters: Iterable[Adapter] = (), *, dedupe_window: int = 10_000) -> None:
        self._adapters: list[Adapter] = []
        self._senders: list[Adapter] = []
        self._started = False
        self._starting: set[asyncio.Task[None]] = set()
        self._seen_events: OrderedDict[str, None] = OrderedDict()
        self._dedupe_window = dedupe_window
        self.last_adapter: Adapter | None = None
        for adapter in adapters:
            self.add(adapter)

    @property
    def adapters(self) -> tuple[Adapter, ...]:
        """The adapters, in the order added."""
        return tuple(self._adapters)

    @property
    def is_available(self) -> bool:
        """True when at least one SEND adapter is available."""
        return any(a.is_available for a in self._senders)

    def add(self, adapter: Adapter) -> Adapter:
        """Add an adapter (started at once if the manager already is). Returns it."""
        self._adapters.append(adapter)
        adapter.set_parent(self)
        adapter.share_session(self.session)
        # sorted() is stable, so equal priorities keep the order they were added in.
        self._senders = sorted(
            (a for a in self._adapters if AdapterMode.SEND in a.mode), key=lambda a: -a.priority
        )
        if self._started:
            task = asyncio.create_task(adapter.start())
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
        return adapter

    async def start(self) -> None:
        """Start every adapter (each makes its first connection attempt), by priority.

        One after the other, so that the first to reach the server brings back the session
        key the others then present: the server sees one peer.
        """
        self._started = True
        # The manager, not its adapters (instrument skips those): one span per call.
        instrument(self)
        for adapter in sorted(self._adapters, key=lambda a: -a.priority):
            await adapter.start()

    async def close(self) -> None:
        """Close every adapter."""
        self._started = False
        await asyncio.gather(*(a.close() for a in self._adapters), return_exceptions=True)

    async def send_packet(
        self, packet: RequestPacket, *, timeout: float | None = None
    ) -> ResponsePacket:
        """Send through the best available adapter, failing over on transport errors.

        Args:
            packet: the Request; the same id is reused on every adapter tried.
            timeout: an overall limit in seconds across every adapter tried (None: each
                adapter's own timeout applies).

        Raises:
            AllAdaptersFailedError: every SEND adapter failed or was down.
            RequestTimeoutError: the answer did not come in time.
        """
        call = self._current_call() if self._middleware else None
        if timeout is None:
            return await self._send(packet, call)
        try:
            with within(timeout):  # every adapter tried stamps what is left (meta.timeout)
                async with asyncio.timeout(timeout):
                    return await self._send(packet, call)
        except TimeoutError as exc:
            if isinstance(exc, RequestTimeoutError):
                raise
            raise RequestTimeoutError(
                f"no response to {packet.command!r} within {timeout:g} s"
            ) from None

    async def _send(self, packet: RequestPacket, call: ClientCall | None) -> ResponsePacket:
        return await self._through_best(lambda adapter: adapter.send_packet(packet), call)

    async def _through_best(
        self, action: Callable[[Adapter], Awaitable[T]], call: ClientCall | None = None
    ) -> T:
        # The one failover loop, for requests, events and uploads alike. `call`: the call the
        # manager's chain runs (None without middleware), told the carrier and each failover.
        if call is not None:
            call.carrier = None  # not the manager: the adapter that answers, once known
        errors: list[tuple[str, BaseException]] = []
        for adapter in self._senders:
            if not adapter.is_available:
                down = adapter.last_error or TransportError("down")
                errors.append((adapter.name, down))
                if call is not None:
                    call.failovers.append((adapter, down))
                continue
            if call is not None:
                # Kept if the time runs out (or the caller cancels) while this one holds it.
                call.carrier, call.transport = adapter, adapter._call_transport
            try:
                result = await action(adapter)
            except TimeoutError:
                raise  # the time budget is spent: another adapter would only exceed it
            except _FAILOVER as exc:
                errors.append((adapter.name, exc))
                if call is not None:
                    call.carrier = call.transport = None
                    call.failovers.append((adapter, exc))
                logger.info(
                    "%s failed (%s: %s); trying the next adapter",
                    adapter.name,
                    type(exc).__name__,
                    exc,
                )
                continue
            if self.last_adapter is not adapter:
                logger.info("now sending through %s", adapter.name)
                self.last_adapter = adapter
            return result
        raise AllAdaptersFailedError(errors)

    async def stream_packet(
        self, packet: Request, *, window: int = DEFAULT_WINDOW, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """Stream through the best available adapter (`Adapter.stream_packet`).

        An adapter that fails before the first item is failed over like `send_packet`; once
        items have come, a failure ends the stream with that error (items are not replayed).

        Raises:
            AllAdaptersFailedError: every SEND adapter failed or was down before any item.
        """
        errors: list[tuple[str, BaseException]] = []
        for adapter in self._senders:
            if not adapter.is_available:
                errors.append((adapter.name, adapter.last_error or TransportError("down")))
                continue
            items: AsyncIterator[Any] | None = None
            try:
                try:
                    # An adapter may refuse at once (not connected) or at the first item.
                    items = adapter.stream_packet(packet, window=window, timeout=timeout)
                    first = await anext(items)
                except StopAsyncIteration:
                    return
                except _FAILOVER as exc:
                    errors.append((adapter.name, exc))
                    logger.info(
                        "%s failed to stream (%s); trying the next adapter", adapter.name, exc
                    )
                    continue
                self.last_adapter = adapter
                yield first
                async for item in items:
                    yield item
                return
            finally:
                if items is not None:
                    await aclose(items)
        raise AllAdaptersFailedError(errors)

    async def send_event(self, event: Event) -> None:
        """Send an event through the best available adapter, failing over like requests.

        Raises:
            AllAdaptersFailedError: every SEND adapter failed or was down.
        """
        call = self._current_call() if self._middleware else None
        await self._through_best(lambda adapter: adapter.send_event(event), call)

    async def upload(
        self,
        source: UploadSource,
        *,
        name: str | None = None,
        progress: UploadProgress | None = None,
        upload_id: str | None = None,
    ) -> FileInfo:
        """Upload through the best available adapter that can, failing over like requests.

        Every adapter tried gets the same upload id, so the next one resumes where the
        previous one was cut off (the server says how much it has). A stream that cannot
        seek is spooled to a temporary file first, so that each adapter can read it.
        Arguments, result and errors: as `Adapter.upload`.

        Raises:
            AllAdaptersFailedError: no adapter could carry the upload.
        """
        upload_id = upload_id or str(uuid.uuid4())
        async with replayable(source, name) as (replay, replay_name, rewind):

            async def attempt(adapter: Adapter) -> FileInfo:
                rewind()
                return await adapter.upload(
                    replay, name=replay_name, progress=progress, upload_id=upload_id
                )

            return await self._through_best(attempt)

    async def handle_event(self, event: Event) -> None:
        """Deliver an event once to the manager's handlers, whichever adapter carried it.

        A duplicate is dropped before the manager's middleware, which sees each event once.
        """
        seen = self._seen_events
        if event.id in seen:
            logger.debug(
                "dropping a duplicate of event %r", event.id, extra=call_extra(event, self.session)
            )
            return
        seen[event.id] = None
        if len(seen) > self._dedupe_window:
            seen.popitem(last=False)
        await super().handle_event(event)
