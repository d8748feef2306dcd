"""OpenTelemetry traces (issue 14): one trace across both peers, in both directions.

Every span goes to the real OpenTelemetry SDK's in-memory exporter, through a TracerProvider of
the test's own (no global state). The caller's request runs a handler that sends a request to a
second client and broadcasts an event: the caller's CLIENT span, the server's SERVER span, the
server's CLIENT span, the second client's SERVER span and the event's PRODUCER and CONSUMER
spans make one trace, each peer continuing the context the packet carried (``meta.traceparent``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from siyi_sdk import (
    Adapter,
    AdapterManager,
    AdapterMode,
    Connection,
    Event,
    ForbiddenError,
    HttpAdapter,
    ProtocolServer,
    Request,
    Response,
    Tracing,
    TransportError,
    WebSocketAdapter,
)

from .conftest import (
    WAIT,
    ClientFactory,
    Inbox,
    ServerFactory,
    free_port,
    http_url,
    wait_for,
    wait_until,
    ws_url,
)


@dataclass
class Recorder:
    """A TracerProvider of the test's own, its in-memory exporter, and a `Tracing` over it."""

    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    provider: TracerProvider = field(default_factory=TracerProvider)

    def __post_init__(self) -> None:
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracing = Tracing(tracer_provider=self.provider)

    @property
    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def named(self, name: str, kind: SpanKind) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name and s.kind == kind]

    def one(self, name: str, kind: SpanKind) -> ReadableSpan:
        found = self.named(name, kind)
        assert len(found) == 1, [(s.name, s.kind) for s in self.spans]
        return found[0]

    async def wait_for(self, name: str, kind: SpanKind, count: int = 1) -> None:
        await wait_until(lambda: len(self.named(name, kind)) >= count)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@dataclass
class Relay:
    """A traced server whose ``relay`` command asks the worker and broadcasts what it said."""

    server: ProtocolServer
    workers: list[Connection]
    runs: dict[str, int]


async def relay_server(make_server: ServerFactory, tracing: Tracing) -> Relay:
    server = await make_server()
    tracing.install(server)
    relay = Relay(server, [], {"count": 0})

    @server.command("join")
    def join(connection: Connection, params: dict[str, Any]) -> str:
        relay.workers.append(connection)
        return "joined"

    @server.command("relay")
    async def run_relay(connection: Connection, params: dict[str, Any]) -> Any:
        answer = await relay.workers[-1].send_request("work", params, timeout=WAIT)
        await server.broadcast_event("relayed", answer.data)
        return answer.data

    @server.command("count")
    def count(connection: Connection, params: dict[str, Any]) -> int:
        relay.runs["count"] += 1
        return relay.runs["count"]

    @server.command("deny")
    def deny(connection: Connection, params: dict[str, Any]) -> None:
        raise ForbiddenError("not you")

    return relay


def work(request: Request) -> Response:
    """The worker's answer to the server's request."""
    return Response.success(request.id, {"worked": request.params})


async def join(worker: Adapter, relay: Relay) -> None:
    assert (await worker.send_packet(Request.make("join"))).ok
    await wait_until(lambda: bool(relay.workers))


def child_of(span: ReadableSpan, parent: ReadableSpan, *, remote: bool) -> bool:
    """`span` is a child of `parent`, in the same trace; `remote`: its context came in a packet."""
    assert span.parent is not None, f"{span.name} has no parent"
    assert span.context is not None
    assert parent.context is not None
    assert span.context.trace_id == parent.context.trace_id
    assert span.parent.span_id == parent.context.span_id, f"{span.name} <- {parent.name}"
    assert span.parent.is_remote is remote, f"{span.name} <- {parent.name}: remote?"
    return True


def one_trace(spans: Sequence[ReadableSpan]) -> None:
    trace_ids = {s.context.trace_id for s in spans if s.context is not None}
    assert len(trace_ids) == 1, trace_ids


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def check_relay_trace(
    recorder: Recorder, *, caller_transport: str, caller_adapter: str, consumers: int
) -> ReadableSpan:
    """The trace of one ``relay`` call; returns the caller's CLIENT span."""
    caller = recorder.one("relay", SpanKind.CLIENT)
    handled = recorder.one("relay", SpanKind.SERVER)
    asked = recorder.one("work", SpanKind.CLIENT)
    worked = recorder.one("work", SpanKind.SERVER)
    produced = recorder.one("send relayed", SpanKind.PRODUCER)
    consumed = recorder.named("process relayed", SpanKind.CONSUMER)
    assert len(consumed) == consumers
    one_trace([caller, handled, asked, worked, produced, *consumed])

    assert caller.parent is None  # the caller started the trace
    assert child_of(handled, caller, remote=True)  # across the wire: meta.traceparent
    assert child_of(asked, handled, remote=False)  # inside the server's handler
    assert child_of(worked, asked, remote=True)  # the server's request to the worker
    assert child_of(produced, handled, remote=False)  # the handler's broadcast
    for span in consumed:
        assert child_of(span, produced, remote=True)

    assert attrs(caller) == {
        "rpc.system.name": "siyi",
        "rpc.method": "relay",
        "rpc.response.status_code": "0",
        "siyi.transport": caller_transport,
        "siyi.adapter": caller_adapter,
    }
    assert attrs(handled) == {
        "rpc.system.name": "siyi",
        "rpc.method": "relay",
        "rpc.response.status_code": "0",
        "siyi.transport": caller_transport,
        "siyi.cached": False,
    }
    assert attrs(asked)["rpc.method"] == "work"
    assert attrs(asked)["rpc.response.status_code"] == "0"
    assert attrs(worked)["rpc.method"] == "work"
    assert attrs(produced)["messaging.destination.name"] == "relayed"
    assert attrs(produced)["messaging.operation.type"] == "send"
    for span in (caller, handled, asked, worked, produced, *consumed):
        assert span.status.status_code is StatusCode.UNSET, span.name
    return caller


async def test_one_trace_over_websocket_through_the_server_to_a_second_client(
    make_server: ServerFactory, make_client: ClientFactory, recorder: Recorder
) -> None:
    relay = await relay_server(make_server, recorder.tracing)
    worker = await make_client(ws_url(relay.server))
    worker.on_request(work)
    worker_inbox = Inbox()
    worker.on_event(worker_inbox)
    recorder.tracing.install(worker)
    caller = await make_client(ws_url(relay.server))
    caller_inbox = Inbox()
    caller.on_event(caller_inbox)
    recorder.tracing.install(caller)
    await join(worker, relay)
    recorder.exporter.clear()

    answer = await caller.send_request("relay", {"x": 1})
    assert answer.data == {"worked": {"x": 1}}
    await worker_inbox.wait_count(1)
    await caller_inbox.wait_count(1)
    await recorder.wait_for("process relayed", SpanKind.CONSUMER, 2)

    check_relay_trace(
        recorder, caller_transport="websocket", caller_adapter=caller.name, consumers=2
    )
    worked = recorder.one("work", SpanKind.SERVER)
    assert attrs(worked)["siyi.adapter"] == worker.name
    assert attrs(worked)["siyi.transport"] == "websocket"
    assert attrs(recorder.one("work", SpanKind.CLIENT))["siyi.transport"] == "websocket"
    # The packets carried the context in meta, as PROTOCOL.md §2 names it.
    assert {e.meta is not None and "traceparent" in e.meta for e in caller_inbox.events} == {True}


async def test_one_trace_over_http_in_both_directions(
    make_server: ServerFactory, recorder: Recorder
) -> None:
    relay = await relay_server(make_server, recorder.tracing)
    url = http_url(relay.server)
    async with contextlib.AsyncExitStack() as stack:
        worker = HttpAdapter(url, mode=AdapterMode.SEND | AdapterMode.RECEIVE, poll_wait=1.0)
        worker.on_request(work)
        worker_inbox = Inbox()
        worker.on_event(worker_inbox)
        recorder.tracing.install(worker)
        await stack.enter_async_context(worker)
        # Its poll holds the session's key first: the join presents it (one session).
        await wait_until(lambda: any(c.polls for c in relay.server.sessions))
        caller = await stack.enter_async_context(HttpAdapter(url, request_timeout=WAIT))
        recorder.tracing.install(caller)
        await join(worker, relay)
        recorder.exporter.clear()

        answer = await caller.send_packet(Request.make("relay", {"y": 2}))
        assert answer.data == {"worked": {"y": 2}}
        await worker_inbox.wait_count(1)
        await recorder.wait_for("process relayed", SpanKind.CONSUMER)

    check_relay_trace(recorder, caller_transport="http", caller_adapter=caller.name, consumers=1)
    # The server's request went to the worker's poll and its answer came back by POST.
    assert attrs(recorder.one("work", SpanKind.CLIENT))["siyi.transport"] == "http"
    worked = recorder.one("work", SpanKind.SERVER)
    assert attrs(worked)["siyi.adapter"] == worker.name
    assert attrs(worked)["siyi.transport"] == "http"
    consumed = recorder.one("process relayed", SpanKind.CONSUMER)
    assert attrs(consumed)["siyi.transport"] == "http"


async def parked(delay: float) -> None:
    """A reconnect sleep that never ends: the adapter stays down until closed."""
    await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def manager_with_a_dead_websocket(server: ProtocolServer) -> AsyncIterator[AdapterManager]:
    down = WebSocketAdapter(f"ws://127.0.0.1:{free_port()}", priority=10, sleep=parked)
    http = HttpAdapter(http_url(server), request_timeout=WAIT)
    async with AdapterManager([down, http]) as manager:
        assert not down.is_connected  # its first attempt was refused
        yield manager


async def test_a_failover_is_an_event_on_the_client_span_and_the_adapter_names_http(
    make_server: ServerFactory, make_client: ClientFactory, recorder: Recorder
) -> None:
    relay = await relay_server(make_server, recorder.tracing)
    worker = await make_client(ws_url(relay.server))
    worker.on_request(work)
    recorder.tracing.install(worker)
    await join(worker, relay)
    async with manager_with_a_dead_websocket(relay.server) as manager:
        recorder.tracing.install(manager)
        down, http = manager.adapters
        recorder.exporter.clear()
        answer = await manager.send_packet(Request.make("relay", {"z": 3}))
        assert answer.data == {"worked": {"z": 3}}
        await recorder.wait_for("process relayed", SpanKind.CONSUMER)  # at the worker

    caller = check_relay_trace(
        recorder, caller_transport="http", caller_adapter=http.name, consumers=1
    )
    assert [(e.name, dict(e.attributes or {})["siyi.adapter"]) for e in caller.events] == [
        ("failover", down.name)
    ]
    assert isinstance(http, HttpAdapter)
    assert attrs(caller)["siyi.adapter"].startswith("HttpAdapter(")


async def test_a_repeated_id_is_answered_by_the_record_and_the_span_says_cached(
    make_server: ServerFactory, make_client: ClientFactory, recorder: Recorder
) -> None:
    relay = await relay_server(make_server, recorder.tracing)
    client = await make_client(ws_url(relay.server))
    recorder.tracing.install(client)
    recorder.exporter.clear()
    first = await client.send_packet(Request(id="same-id", command="count"))
    again = await client.send_packet(Request(id="same-id", command="count"))
    assert first.data == again.data == 1
    assert relay.runs["count"] == 1

    handled = recorder.named("count", SpanKind.SERVER)
    sent = recorder.named("count", SpanKind.CLIENT)
    assert [attrs(s)["siyi.cached"] for s in handled] == [False, True]
    assert len(sent) == 2
    for server_span, client_span in zip(handled, sent, strict=True):
        assert child_of(server_span, client_span, remote=True)


async def test_an_error_response_and_a_transport_failure_set_error_status_and_type(
    make_server: ServerFactory, make_client: ClientFactory, recorder: Recorder
) -> None:
    relay = await relay_server(make_server, recorder.tracing)
    client = await make_client(ws_url(relay.server))
    recorder.tracing.install(client)
    recorder.exporter.clear()
    answer = await client.send_request("deny")
    assert answer.code == 403

    for kind in (SpanKind.CLIENT, SpanKind.SERVER):
        span = recorder.one("deny", kind)
        assert span.status.status_code is StatusCode.ERROR
        assert attrs(span)["error.type"] == "403"
        assert attrs(span)["rpc.response.status_code"] == "403"

    # A call that never reached a server: the exception's class is the error's type.
    async with HttpAdapter(f"http://127.0.0.1:{free_port()}") as nowhere:
        recorder.tracing.install(nowhere)
        with pytest.raises(TransportError) as info:
            await nowhere.send_packet(Request.make("lost"))
    span = recorder.one("lost", SpanKind.CLIENT)
    assert span.status.status_code is StatusCode.ERROR
    assert attrs(span)["error.type"] == type(info.value).__qualname__
    assert "rpc.response.status_code" not in attrs(span)
    assert [e.name for e in span.events] == ["exception"]


async def test_reserved_events_and_untraced_peers_carry_nothing(
    make_server: ServerFactory, make_client: ClientFactory, recorder: Recorder
) -> None:
    # Without tracing the packets carry no meta; a traced server still traces what arrives,
    # each call a trace of its own.
    server = await make_server()
    recorder.tracing.install(server)
    seen: list[Event] = []
    arrived = asyncio.Event()

    @server.on_event
    def on_event(connection: Connection, event: Event) -> None:
        seen.append(event)
        arrived.set()

    client = await make_client(ws_url(server))
    await client.send_event("hello", {"a": 1})
    await wait_for(arrived.wait())
    await recorder.wait_for("process hello", SpanKind.CONSUMER)
    assert seen[0].meta is None
    span = recorder.one("process hello", SpanKind.CONSUMER)
    assert span.parent is None
    assert not [s for s in recorder.spans if s.name.startswith(("send siyi.", "process siyi."))]
