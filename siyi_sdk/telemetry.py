"""OpenTelemetry traces of siyi calls, as middleware on both sides (`siyi-sdk[otel]`).

Configuring OpenTelemetry the usual way (an SDK's `TracerProvider`, set as the global one before
the server or client starts) is enough: a server and the SDK's own senders install `Tracing` on
themselves when they start (`siyi_sdk.instrument`; ``SIYI_TELEMETRY=0`` turns that off). By
hand, ``Tracing().install(server)`` on a server and ``Tracing().install(client)`` on a client
(a `ProtocolClient`, an `HttpAdapter`, an `AdapterManager`, an `Api`) is the one line to add,
and spans go through the global tracer provider unless a `TracerProvider` is given.

What is recorded, on either side:

- a SERVER span for each request handled and a CLIENT span for each request sent, named after
  the command, with the RPC semantic conventions' attributes (``rpc.system.name`` = "siyi",
  ``rpc.method``, ``rpc.response.status_code``, ``error.type``) and ``siyi.transport``; a
  client adds ``siyi.adapter`` (the adapter that carried it) and a "failover" span event per
  adapter that failed first; a server adds ``siyi.cached`` (the at-most-once record answered);
- a PRODUCER span for each event sent ("send <name>") and a CONSUMER span for each event
  received ("process <name>");
- W3C trace context: what is sent carries the current context in ``meta.traceparent`` /
  ``meta.tracestate`` (PROTOCOL.md §2); what arrives continues the context it carries, and its
  span is the current one while the handler runs, so that what the handler sends (a request to
  another client, a broadcast) belongs to the same trace.

The protocol's reserved events (``siyi.*``) are not traced, nor are a client's streams
(`ProtocolClient.stream`, `Adapter.stream_packet`): a middleware's ``call_next`` returns one
Response, and a stream is an iterator its caller drives, so a span around it would need a
second mechanism beside the chain (a task and a queue between the caller and the stream); the
server's side of a stream is traced. Nothing is installed while no SDK is configured: a
middleware takes the server's requests off their flat path (about 20 µs each) even around
the API's no-op tracer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .calls import is_reserved
from .packets import Response
from .pipeline import Call, CallNext, CallT, ClientCall

if TYPE_CHECKING:
    from opentelemetry import trace

__all__ = ["Tracing"]

RPC_SYSTEM = "siyi"
"""The value of ``rpc.system.name`` (and ``messaging.system`` on event spans)."""


class Tracing:
    """OpenTelemetry spans for every call a server or a client sends and handles.

    Args:
        tracer_provider: where spans go; None: the global tracer provider (whatever
            ``opentelemetry.trace.set_tracer_provider`` set, even later).

    Example::

        from siyi_sdk.telemetry import Tracing

        Tracing().install(server)  # or a client, an HttpAdapter, an AdapterManager
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        # Imported here, not with the module: `import siyi_sdk` (even `from siyi_sdk import *`)
        # works without the extra.
        try:
            from opentelemetry import propagate, trace
            from opentelemetry.trace import SpanKind, Status, StatusCode
        except ImportError as exc:  # pragma: no cover - the extra is not installed
            raise ImportError(
                "siyi_sdk.Tracing needs OpenTelemetry: pip install 'siyi-sdk[otel]'"
            ) from exc
        self.tracer = trace.get_tracer("siyi_sdk", __version__, tracer_provider=tracer_provider)
        self._extract = propagate.extract
        self._inject = propagate.inject
        self._kinds = {
            (True, "in"): SpanKind.SERVER,
            (True, "out"): SpanKind.CLIENT,
            (False, "in"): SpanKind.CONSUMER,
            (False, "out"): SpanKind.PRODUCER,
        }
        self._status = Status
        self._error = StatusCode.ERROR

    def install(self, target: Any) -> None:
        """Add the right middleware to `target`: a server, or a client-side sender.

        A `ProtocolServer` (what has a ``dispatcher``) gets `server_middleware`; a client
        (`ProtocolClient`), an adapter, an `AdapterManager` or an `Api` gets
        `client_middleware`. Install it once per chain: on a manager, not also on its
        adapters (each would record its own span of the same call).
        """
        # Told apart by what they have, not by class: this module sits below the server and
        # the adapters, which install it by themselves (`siyi_sdk.instrument`).
        if hasattr(target, "dispatcher"):
            target.use(self.server_middleware)
        else:
            target.use(self.client_middleware)

    async def server_middleware(self, call: CallT, call_next: CallNext[CallT]) -> Response | None:
        """The server's middleware (`ProtocolServer.use`): spans for what it handles and sends.

        Typed for any call; the server's chain passes it `ServerCall`s.
        """
        return await self._traced(call, call_next, self._served)

    async def client_middleware(
        self, call: ClientCall, call_next: CallNext[ClientCall]
    ) -> Response | None:
        """A client's middleware (`Adapter.use`): spans for what it sends and handles."""
        return await self._traced(call, call_next, self._carried)

    async def _traced(
        self,
        call: CallT,
        call_next: CallNext[CallT],
        known: Callable[[trace.Span, CallT], None],
    ) -> Response | None:
        """`call_next` in the span of `call`; `known` records what is known once it is through."""
        if not call.is_request and is_reserved(call.name):
            return await call_next(call)
        with self._span(call) as span:
            try:
                answer = await call_next(call)
            except BaseException as exc:
                known(span, call)
                self._failed(span, exc)
                raise
            known(span, call)
            self._answered(span, answer)
            return answer

    @staticmethod
    def _served(span: trace.Span, call: Call) -> None:
        """What a server knows once a call is through: the transport, whether cached."""
        if call.direction == "in" and call.is_request:
            span.set_attribute("siyi.cached", bool(getattr(call, "cached", False)))
        if call.transport is not None:
            span.set_attribute("siyi.transport", call.transport)

    @contextlib.contextmanager
    def _span(self, call: Call) -> Iterator[trace.Span]:
        """The span of `call`, current while it runs; links it to the peer's trace context."""
        name = call.name
        incoming = call.direction == "in"
        attributes: dict[str, Any]
        if call.is_request:
            span_name = name
            attributes = {"rpc.system.name": RPC_SYSTEM, "rpc.method": name}
        else:
            span_name = f"process {name}" if incoming else f"send {name}"
            attributes = {
                "messaging.system": RPC_SYSTEM,
                "messaging.operation.type": "process" if incoming else "send",
                "messaging.destination.name": name,
            }
        if call.transport is not None:
            attributes["siyi.transport"] = call.transport
        # What arrived continues the peer's context, if it sent one, else starts a trace (never
        # whatever the task that read the packet happened to hold); what is sent continues the
        # current one.
        parent = self._extract(call.packet.meta or {}) if incoming else None
        with self.tracer.start_as_current_span(
            span_name,
            context=parent,
            kind=self._kinds[call.is_request, call.direction],
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            if not incoming and span.get_span_context().is_valid:
                self._inject(call.meta)  # meta.traceparent / meta.tracestate
            yield span

    def _carried(self, span: trace.Span, call: ClientCall) -> None:
        """What a client knows once a call is through: its carrier, transport and failovers."""
        carrier = call.carrier
        if carrier is not None:
            span.set_attribute("siyi.adapter", carrier.name)
        if call.transport is not None:
            span.set_attribute("siyi.transport", call.transport)
        for adapter, error in call.failovers:
            span.add_event(
                "failover",
                {
                    "siyi.adapter": adapter.name,
                    "error.type": type(error).__qualname__,
                    "exception.message": str(error),
                },
            )

    def _answered(self, span: trace.Span, answer: Response | None) -> None:
        """The Response's code; an error Response sets the span's status to ERROR."""
        if answer is None:
            return
        code = str(answer.code)
        span.set_attribute("rpc.response.status_code", code)
        if not answer.ok:
            span.set_attribute("error.type", code)
            span.set_status(self._status(self._error, answer.error))

    def _failed(self, span: trace.Span, exc: BaseException) -> None:
        """An exception from `call_next` (a transport failure, a cancellation): ERROR."""
        kind = type(exc).__qualname__
        span.set_attribute("error.type", kind)
        if isinstance(exc, Exception):
            span.record_exception(exc)
        span.set_status(self._status(self._error, f"{kind}: {exc}"))
