"""The server's own cost per request, without sockets: ``python -m benchmarks.inprocess``.

Echo requests are fed straight to a `Peer` whose socket stand-in discards what is sent, 64 at
a time, so the figures are siyi-sdk's Python cost alone (no kernel, no aiohttp I/O). Printed:
CPU µs per request through the full dispatch path (no middleware: the flat path); with every
request carrying the ``meta.timeout`` the SDK's clients send (PROTOCOL.md §9); with the
dashboard on (its recorder times and counts each request: README's "Dashboard"); with the
at-most-once cache replaced by a pass-through (their difference is the cache's cost); with
one middleware that only passes the call on (the whole chain's machinery); and, with the
``otel`` extra installed: the server as it starts (automatic instrumentation, `instrument`)
with no OpenTelemetry SDK configured, which must stay within 0.5 µs of the full path; with
`Tracing` installed by hand and no SDK configured; and with the OpenTelemetry SDK (when
installed) and an in-memory exporter (a SERVER span recorded per request). Then the process
RSS as the cache fills to its bound (100,000 remembered Responses).
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import WSMsgType

from siyi_sdk import Connection, ProtocolServer, Response
from siyi_sdk.peer import Peer
from siyi_sdk.pipeline import CallNext
from siyi_sdk.server import ServerCall
from siyi_sdk.server.state import CacheKey, ResponseCache


class _NullSocket:
    """A WebSocket stand-in: sends are discarded, nothing is ever received."""

    closed = False
    close_code: int | None = None

    async def receive(self, timeout: float | None = None) -> Any:
        raise NotImplementedError

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None:
        return None

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        return True

    async def ping(self, message: bytes = b"") -> None:
        return None

    async def pong(self, message: bytes = b"") -> None:
        return None


class _PassThrough(ResponseCache):
    """No at-most-once: every request runs."""

    async def run_once(self, key: CacheKey, compute: Callable[[], Awaitable[Response]]) -> Response:
        return await compute()

    def answer_now(
        self, key: CacheKey, run: Callable[..., bytes | Awaitable[Response]], *args: Any
    ) -> bytes | Awaitable[bytes] | None:
        out = run(*args)
        assert isinstance(out, bytes)
        return out

    def __len__(self) -> int:
        return 0


PARAMS = {"m": "x" * 60}


def _rss_mib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


async def _pass_through(call: ServerCall, call_next: CallNext[ServerCall]) -> Response | None:
    return await call_next(call)


def _server(
    cache: ResponseCache | None, middleware: bool = False, admin: bool = False
) -> ProtocolServer:
    # admin: the dashboard on, so its recorder times and counts each request (its ticker is
    # not running here: that is once a second, not per request).
    options: dict[str, Any] = {"admin_key": "inprocess-key"} if admin else {}
    server = ProtocolServer(port=0, response_cache=cache, **options)
    if middleware:
        server.use(_pass_through)

    @server.command("echo")
    def echo(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
        return params

    return server


async def _feed(
    server: ProtocolServer, count: int, tag: str, meta: dict[str, Any] | None = None
) -> float:
    """Feed `count` echo requests (with `meta`, if given); return the CPU µs per request."""
    session = server.sessions.open(None, None, {})
    peer = Peer(
        _NullSocket(),
        on_request=lambda request: server.dispatcher.answer(session, request, "websocket"),
        on_event=lambda event: asyncio.sleep(0),
    )
    started = time.process_time()
    for i in range(count):
        packet = {"id": f"{tag}-{i}", "type": "request", "command": "echo", "params": PARAMS}
        if meta is not None:
            packet["meta"] = meta
        frame = orjson.dumps(packet)
        rest = peer._on_frame(frame)
        if rest is not None:
            await rest
        if i % 64 == 63:
            await asyncio.sleep(0)  # as a socket read would: let the handlers run
    while peer.handling:
        await asyncio.gather(*list(peer.handling))
    return (time.process_time() - started) / count * 1e6


async def main() -> None:
    """Print the figures (each the best of 3 runs of 60,000 requests), then RSS vs cache size."""
    for label, cache, middleware, meta, admin in (
        ("full path (no middleware)", None, False, None, False),
        ("with meta.timeout", None, False, {"timeout": 30.0}, False),
        ("dashboard on", None, False, None, True),
        ("no at-most-once cache", _PassThrough(), False, None, False),
        ("one pass-through middleware", None, True, None, False),
    ):
        server = _server(cache, middleware, admin)
        runs = [await _feed(server, 60_000, f"{label}{n}", meta) for n in range(3)]
        best = min(runs)
        print(f"{label:28s} {best:6.2f} µs/request")
    if importlib.util.find_spec("opentelemetry") is not None:  # the otel extra
        from opentelemetry import trace

        from siyi_sdk import Tracing
        from siyi_sdk.instrument import instrument

        server = _server(None)
        trace.get_tracer_provider()  # what a program that imports OpenTelemetry has
        instrument(server)  # as at start: nothing is configured, so nothing is installed
        best = min([await _feed(server, 60_000, f"auto{n}") for n in range(3)])
        print(f"{'auto-instrumented, no SDK':28s} {best:6.2f} µs/request")

        server = _server(None)
        Tracing().install(server)  # no OpenTelemetry SDK configured: the global no-op one
        best = min([await _feed(server, 60_000, f"tracing{n}") for n in range(3)])
        print(f"{'Tracing, no SDK configured':28s} {best:6.2f} µs/request")
    server = _server(None)
    print(f"RSS before: {_rss_mib()} MiB")
    for chunk in range(3):
        await _feed(server, 50_000, f"fill{chunk}")
        print(
            f"RSS after {(chunk + 1) * 50_000:,} requests: {_rss_mib()} MiB "
            f"({len(server.response_cache):,} Responses remembered)"
        )
    if importlib.util.find_spec("opentelemetry.sdk") is not None:
        await _with_sdk()  # last: the spans it records would weigh on the RSS figures


async def _with_sdk() -> None:
    """The cost per request of a SERVER span recorded by the SDK into an in-memory exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from siyi_sdk import Tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = _server(None)
    Tracing(tracer_provider=provider).install(server)
    runs = []
    for n in range(3):
        runs.append(await _feed(server, 60_000, f"sdk{n}"))
        exporter.clear()  # the spans of one run, not of all three, held at once
    print(f"{'Tracing, SDK + in-memory':28s} {min(runs):6.2f} µs/request")


if __name__ == "__main__":
    asyncio.run(main())
