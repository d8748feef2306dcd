"""Automatic instrumentation (`siyi_sdk.instrument`): when it installs `Tracing`, and when not.

The global tracer provider can be set once per process, so the tests that need one configured
put a provider of their own in the API's global slot for the test's duration (pytest's
`monkeypatch` puts the default back). Whole processes configured the usual way are in
`test_tracing_processes`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from siyi_sdk import (
    Adapter,
    AdapterManager,
    Connection,
    HttpAdapter,
    ProtocolClient,
    ProtocolServer,
    Tracing,
    WebSocketAdapter,
)
from siyi_sdk import instrument as instrument_module
from siyi_sdk.instrument import instrument, opt_out

from .conftest import WAIT, ClientFactory, ServerFactory, http_url, wait_until, ws_url

ROOT = Path(__file__).resolve().parent.parent


def chain_of(target: ProtocolServer | Adapter) -> tuple[object, ...]:
    """The middlewares of `target`'s chain, outermost first."""
    chain = target.dispatcher.chain if isinstance(target, ProtocolServer) else target._middleware
    return tuple(getattr(chain, "_middlewares", ()))


def tracings(target: ProtocolServer | Adapter) -> list[Tracing]:
    owners = [getattr(m, "__self__", None) for m in chain_of(target)]
    return [owner for owner in owners if isinstance(owner, Tracing)]


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """An SDK TracerProvider as the global one, for this test only."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    assert trace.get_tracer_provider() is provider
    return exporter


async def test_nothing_is_installed_while_no_sdk_is_configured(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
    server = await make_server()
    client = await make_client(ws_url(server))
    async with HttpAdapter(http_url(server)) as http:
        assert (await client.send_request("nothing")).code == 404
        assert not instrument(server)
        for target in (server, client, http):
            assert chain_of(target) == ()  # the flat path, untouched


def test_starting_a_server_and_a_client_never_imports_opentelemetry() -> None:
    script = (
        "import asyncio, sys\n"
        "from siyi_sdk import ProtocolClient, ProtocolServer\n"
        "async def main():\n"
        "    async with ProtocolServer(port=0) as server:\n"
        "        async with ProtocolClient(f'ws://127.0.0.1:{server.port}') as client:\n"
        "            await client.send_request('nothing')\n"
        "    print('opentelemetry' in sys.modules)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


async def test_a_configured_sdk_traces_servers_and_clients_from_their_start(
    make_server: ServerFactory, make_client: ClientFactory, exporter: InMemorySpanExporter
) -> None:
    server = await make_server()

    @server.command("ping")
    def ping(connection: Connection, params: dict[str, Any]) -> str:
        return "pong"

    client = await make_client(ws_url(server))
    assert len(tracings(server)) == len(tracings(client)) == 1
    assert (await client.send_request("ping")).data == "pong"
    await wait_until(lambda: len(exporter.get_finished_spans()) == 2)
    spans = exporter.get_finished_spans()
    assert sorted((s.name, s.kind.name) for s in spans) == [("ping", "CLIENT"), ("ping", "SERVER")]
    sent, handled = sorted(spans, key=lambda s: s.kind is SpanKind.SERVER)
    assert handled.parent is not None
    assert sent.context is not None
    assert handled.parent.span_id == sent.context.span_id

    # Started again, instrumented once: never two spans of one call.
    await client.close()
    await client.start()
    assert not instrument(server)
    assert len(tracings(server)) == len(tracings(client)) == 1
    # One Tracing for every object, for the one global provider.
    assert tracings(server)[0] is tracings(client)[0]


async def test_a_manager_is_instrumented_and_its_adapters_are_not(
    make_server: ServerFactory, exporter: InMemorySpanExporter
) -> None:
    server = await make_server()
    ws = WebSocketAdapter(ws_url(server), request_timeout=WAIT)
    http = HttpAdapter(http_url(server), request_timeout=WAIT)
    async with AdapterManager([ws, http]) as manager:
        assert ws.is_connected
        assert len(tracings(manager)) == 1
        assert chain_of(ws) == chain_of(http) == ()


async def test_a_tracing_installed_by_hand_is_kept(
    make_server: ServerFactory, exporter: InMemorySpanExporter
) -> None:
    own = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(own))
    mine = Tracing(tracer_provider=provider)
    server = ProtocolServer(port=0, shutdown_timeout=1.0)
    mine.install(server)
    client = ProtocolClient("ws://127.0.0.1:1", request_timeout=WAIT)
    mine.install(client)
    async with server:
        client.url = ws_url(server)
        async with client:
            await client.send_request("nothing")
            await wait_until(lambda: len(own.get_finished_spans()) == 2)
    assert tracings(server) == tracings(client) == [mine]
    assert exporter.get_finished_spans() == ()


async def test_opting_out_one_object_or_the_whole_process(
    make_server: ServerFactory,
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = ProtocolServer(port=0, shutdown_timeout=1.0)
    opt_out(server)
    async with server:
        assert chain_of(server) == ()

    monkeypatch.setenv("SIYI_TELEMETRY", "0")
    monkeypatch.setattr(instrument_module, "_enabled", None)  # read again, as at first use
    server = await make_server()
    async with HttpAdapter(http_url(server)) as http:
        assert chain_of(server) == chain_of(http) == ()


async def test_an_application_it_is_attached_to_instruments_it_at_startup(
    exporter: InMemorySpanExporter,
) -> None:
    from aiohttp import web

    server = ProtocolServer()
    app = web.Application()
    server.attach(app, prefix="/siyi")
    assert chain_of(server) == ()  # not yet: OpenTelemetry may be set up before startup
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        assert len(tracings(server)) == 1
    finally:
        await runner.cleanup()
