"""One process of the tracing tests: ``python -m tests.tracing_node ROLE [URL...]``.

Each process sets a `TracerProvider` of its own (an in-memory exporter) as the global one and
installs nothing: what records is the automatic instrumentation of servers and clients when
they start (`siyi_sdk.instrument`). It reads commands from stdin, one JSON object per line
with a ``tag``, runs each in a task of its own, and answers each with one JSON line on stdout
carrying the same ``tag``. Its first line says it is ready.

Roles:

- ``server``: a ProtocolServer on a free port (its first line: ``{"port": N}``) with the
  commands ``join`` (the caller becomes the worker), ``relay`` (asks the worker ``work``, then
  broadcasts ``relayed``) and ``hold`` (waits for the test's ``release``, then asks the
  worker ``work``).
- ``client WS_URL``: a ProtocolClient answering ``work``.
- ``manager WS_URL HTTP_URL``: an AdapterManager of a WebSocketAdapter (priority) and an
  HttpAdapter; its WebSocket never reconnects once cut.

Commands: ``call`` (command, params), ``events`` (count: wait for that many events),
``spans`` (expect: ``[[name, kind, count], ...]`` to wait for; answers every finished span),
and on the server ``wait_held`` and ``release``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from siyi_sdk import (
    Adapter,
    AdapterManager,
    Connection,
    Event,
    HttpAdapter,
    ProtocolClient,
    ProtocolServer,
    Request,
    Response,
    WebSocketAdapter,
)

WAIT = 5.0


class Exporter(InMemorySpanExporter):
    """The in-memory exporter, which also wakes whoever waits for a span."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        self.loop.call_soon_threadsafe(self.changed.set)
        return result

    async def wait(self, expect: list[list[Any]]) -> None:
        def missing() -> bool:
            finished = self.get_finished_spans()
            return any(
                sum(1 for s in finished if s.name == name and s.kind.name == kind) < count
                for name, kind, count in expect
            )

        async with asyncio.timeout(WAIT):
            while missing():
                self.changed.clear()
                await self.changed.wait()


def describe(span: ReadableSpan) -> dict[str, Any]:
    """What the test checks of a span, as JSON."""
    context = span.context
    assert context is not None
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": format(parent.span_id, "016x") if parent is not None else None,
        "parent_remote": parent.is_remote if parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "status": span.status.status_code.name,
    }


def work(request: Request) -> Response:
    """A client's answer to the server's request."""
    return Response.success(request.id, {"worked": request.params})


async def parked(delay: float) -> None:
    """A reconnect sleep that never ends: an adapter once cut stays down."""
    await asyncio.Event().wait()


class Node:
    """The process's role: what it serves or sends, and the commands the test gives it."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter
        self.events: list[Event] = []
        self.events_changed = asyncio.Event()
        self.held = asyncio.Event()
        self.released = asyncio.Event()
        self.workers: list[Connection] = []
        self.sender: Adapter | None = None

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        self.events_changed.set()

    def serve(self) -> ProtocolServer:
        server = ProtocolServer(port=0, heartbeat_interval=None, shutdown_timeout=1.0)

        @server.command("join")
        def join(connection: Connection, params: dict[str, Any]) -> str:
            self.workers.append(connection)
            return "joined"

        @server.command("relay")
        async def relay(connection: Connection, params: dict[str, Any]) -> Any:
            answer = await self.workers[-1].send_request("work", params, timeout=WAIT)
            await server.broadcast_event("relayed", answer.data)
            return answer.data

        @server.command("hold")
        async def hold(connection: Connection, params: dict[str, Any]) -> Any:
            self.held.set()
            await self.released.wait()
            answer = await self.workers[-1].send_request("work", params, timeout=WAIT)
            return answer.data

        return server

    async def run(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command["op"]
        if op == "call":
            assert self.sender is not None
            answer = await self.sender.send_packet(
                Request.make(command["command"], command.get("params"))
            )
            return {"ok": answer.ok, "code": answer.code, "data": answer.data}
        if op == "events":
            async with asyncio.timeout(WAIT):
                while len(self.events) < command["count"]:
                    self.events_changed.clear()
                    await self.events_changed.wait()
            return {"names": [e.name for e in self.events]}
        if op == "spans":
            await self.exporter.wait(command.get("expect", []))
            return {"spans": [describe(s) for s in self.exporter.get_finished_spans()]}
        if op == "wait_held":
            await asyncio.wait_for(self.held.wait(), WAIT)
            return {}
        if op == "release":
            self.released.set()
            return {}
        raise ValueError(f"unknown op {op!r}")


def answer(line: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
    sys.stdout.buffer.flush()


async def serve_commands(node: Node) -> None:
    """Run each command of stdin in a task of its own until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()

    async def one(command: dict[str, Any]) -> None:
        try:
            out = await node.run(command)
        except Exception as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        answer({"tag": command["tag"], **out})

    while line := await reader.readline():
        task = asyncio.create_task(one(orjson.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def main(role: str, urls: list[str]) -> None:
    exporter = Exporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the usual way: nothing else is set up
    node = Node(exporter)
    async with contextlib.AsyncExitStack() as stack:
        if role == "server":
            server = await stack.enter_async_context(node.serve())
            answer({"port": server.port})
        elif role == "client":
            client = ProtocolClient(urls[0], request_timeout=WAIT, sleep=parked)
            client.on_request(work)
            client.on_event(node.on_event)
            node.sender = await stack.enter_async_context(client)
            answer({"ready": client.is_connected})
        else:
            ws = WebSocketAdapter(urls[0], priority=10, request_timeout=WAIT, sleep=parked)
            http = HttpAdapter(urls[1], request_timeout=WAIT)
            manager = AdapterManager([ws, http])
            manager.on_event(node.on_event)
            node.sender = await stack.enter_async_context(manager)
            answer({"ready": ws.is_connected, "adapters": [ws.name, http.name]})
        await serve_commands(node)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
