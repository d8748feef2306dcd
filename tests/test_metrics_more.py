"""OpenTelemetry metrics (issue 14) that `test_metrics` leaves untested.

A manager's failovers, uploads in progress and their bytes, the Redis backplane's outages
(Redis killed and started again), and `Metrics` installed automatically when a global
`MeterProvider` of the SDK is set (and not when opted out). Every measurement goes to the real
OpenTelemetry SDK's `InMemoryMetricReader`; every byte travels over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from siyi_sdk import (
    Adapter,
    AdapterManager,
    Connection,
    HttpAdapter,
    ProtocolClient,
    ProtocolServer,
    Request,
    StatusCode,
    WebSocketAdapter,
)
from siyi_sdk import instrument as instrument_module
from siyi_sdk.instrument import opt_out
from siyi_sdk.metrics import Metrics
from siyi_sdk.server.redis_backplane import RedisBackplane
from siyi_sdk.wire import FILE_MD5_HEADER, FILE_NAME_HEADER, UPLOAD_ID_HEADER

from .conftest import WAIT, ServerFactory, http_url, wait_for, wait_until, ws_url
from .proxy import Gate, TcpProxy, WatchedCache, sleep_until_accepting
from .redis_server import RedisServer


class Reading:
    """What an `InMemoryMetricReader` collects, by metric name and attributes."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.reader = reader

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """``(attributes, point)`` of each data point of the metric `name`, collected now."""
        found: list[tuple[dict[str, Any], Any]] = []
        data = self.reader.get_metrics_data()
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(
                            (dict(point.attributes or {}), point)
                            for point in metric.data.data_points
                        )
        return found

    def value(self, name: str) -> float:
        """The value of the one point of `name` (an instrument without labels)."""
        points = self.points(name)
        assert len(points) == 1, (name, points)
        return float(points[0][1].value)

    def calls(self, name: str) -> dict[tuple[Any, ...], int]:
        """Histogram counts by (method, status code, transport, error.type)."""
        counts: dict[tuple[Any, ...], int] = {}
        for attributes, point in self.points(name):
            assert isinstance(point, HistogramDataPoint)
            assert attributes["rpc.system.name"] == "siyi"
            key = (
                attributes["rpc.method"],
                attributes.get("rpc.response.status_code"),
                attributes.get("siyi.transport"),
                attributes.get("error.type"),
            )
            counts[key] = counts.get(key, 0) + point.count
        return counts


def own_provider() -> tuple[MeterProvider, Reading]:
    """A MeterProvider of the test's own (not the global one) and its reader."""
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader], shutdown_on_exit=False), Reading(reader)


# 1. A manager's failovers ---------------------------------------------------------------------


def carrier(manager: AdapterManager) -> Adapter | None:
    """The adapter that carried the last call (read through a call, so mypy does not narrow)."""
    return manager.last_adapter


async def test_a_failover_mid_call_counts_one_failover_for_its_method(
    make_server: ServerFactory,
) -> None:
    cache = WatchedCache()
    gate = Gate()
    server = await make_server(response_cache=cache)

    @server.command("hold")
    async def hold(connection: Connection, params: dict[str, Any]) -> dict[str, str]:
        return await gate.pass_through({"ran_over": connection.transport})

    @server.command("ping")
    def ping(connection: Connection, params: dict[str, Any]) -> str:
        return "pong"

    provider, reading = own_provider()
    async with TcpProxy(server.port) as proxy:
        ws = WebSocketAdapter(
            proxy.url,
            priority=10,
            request_timeout=WAIT,
            sleep=sleep_until_accepting(proxy),
        )
        http = HttpAdapter(http_url(server), priority=0, request_timeout=WAIT)
        async with AdapterManager([ws, http]) as manager:
            Metrics(meter_provider=provider).install(manager)
            assert ws.is_connected
            # A call the WebSocket carries: no failover.
            assert (await manager.send_packet(Request.make("ping"))).data == "pong"
            assert carrier(manager) is ws
            assert reading.points("siyi.client.failovers") == []

            request = Request.make("hold")
            call = asyncio.create_task(manager.send_packet(request))
            await wait_for(gate.started.wait())
            await proxy.cut()
            # The same id, over HTTP, has reached the server and waits for the first run.
            await wait_for(cache.repeated.wait())
            gate.open()
            answer = await wait_for(call)
            assert answer.ok
            assert answer.data == {"ran_over": "websocket"}
            assert carrier(manager) is http

            failovers = reading.points("siyi.client.failovers")
            assert [(a, p.value) for a, p in failovers] == [({"rpc.method": "hold"}, 1)]
            assert reading.calls("rpc.client.call.duration") == {
                ("ping", "0", "websocket", None): 1,
                ("hold", "0", "http", None): 1,
            }
            # Calls while the WebSocket is down go straight to HTTP: each one that skips the
            # down adapter is a failover too, counted under its own method.
            assert (await manager.send_packet(Request.make("ping"))).data == "pong"
            failovers = reading.points("siyi.client.failovers")
            assert sorted((a["rpc.method"], p.value) for a, p in failovers) == [
                ("hold", 1),
                ("ping", 1),
            ]


# 2. Uploads -----------------------------------------------------------------------------------


async def test_an_upload_in_progress_is_active_and_its_bytes_are_counted(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    provider, reading = own_provider()
    Metrics(meter_provider=provider).install(server)
    first, rest = b"a" * 70_000, b"b" * 130_001
    data = first + rest
    release = asyncio.Event()

    async def held() -> AsyncIterator[bytes]:
        yield first
        await release.wait()
        yield rest

    headers = {
        UPLOAD_ID_HEADER: str(uuid.uuid4()),
        FILE_NAME_HEADER: quote("held.bin", safe=""),
        FILE_MD5_HEADER: hashlib.md5(data).hexdigest(),
        "Content-Length": str(len(data)),
        "Content-Type": "application/octet-stream",
    }
    assert reading.value("siyi.server.uploads.active") == 0
    assert reading.value("siyi.server.uploads.received") == 0
    async with aiohttp.ClientSession() as http:
        part = asyncio.create_task(
            http.post(f"{http_url(server)}/upload", data=held(), headers=headers)
        )
        try:
            # Held mid-way: the server is receiving it.
            await wait_until(lambda: reading.value("siyi.server.uploads.active") == 1)
            assert [
                p.value
                for a, p in reading.points("siyi.server.connections")
                if a["siyi.transport"] == "upload"
            ] == [1]
            release.set()
            async with await wait_for(part) as reply:
                assert reply.status == 200, await reply.text()
                body = await reply.json()
        finally:
            release.set()
            if not part.done():
                part.cancel()
                await asyncio.gather(part, return_exceptions=True)
    assert body["code"] == StatusCode.OK
    assert body["data"]["size"] == len(data)
    assert reading.value("siyi.server.uploads.active") == 0
    assert reading.value("siyi.server.uploads.received") == len(data)


# 3. The Redis backplane's outages -------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it kills and starts again (same port)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


async def test_redis_going_down_is_an_outage_and_coming_back_is_up_again(
    make_server: ServerFactory, own_redis: RedisServer, redis_prefix: str
) -> None:
    back = asyncio.Event()
    retries: list[float] = []

    async def sleep(delay: float) -> None:  # the reconnect backoff: until Redis is back
        retries.append(delay)
        await back.wait()

    backplane = RedisBackplane(own_redis.url, prefix=redis_prefix, node_ttl=0.3, sleep=sleep)
    server = await make_server(backplane=backplane)
    provider, reading = own_provider()
    Metrics(meter_provider=provider).install(server)
    await wait_for(backplane.wait_ready())
    assert reading.value("siyi.server.backplane.up") == 1
    assert reading.value("siyi.server.backplane.outages") == 0

    own_redis.stop()

    def down() -> bool:
        return (
            reading.value("siyi.server.backplane.up") == 0
            and reading.value("siyi.server.backplane.outages") == 1
        )

    await wait_until(down)
    await wait_until(lambda: bool(retries))  # it keeps trying to reconnect
    assert reading.value("siyi.server.backplane.outages") == 1  # one outage, however many tries

    own_redis.start()  # the same port
    back.set()
    await wait_for(backplane.wait_ready())
    await wait_until(lambda: reading.value("siyi.server.backplane.up") == 1)
    assert reading.value("siyi.server.backplane.outages") == 1


# 4. Metrics installed automatically -----------------------------------------------------------


@pytest.fixture
def global_reading(monkeypatch: pytest.MonkeyPatch) -> Reading:
    """An SDK MeterProvider as the global one, for this test only."""
    from opentelemetry import metrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", provider)
    assert metrics.get_meter_provider() is provider
    return Reading(reader)


def metrics_installed(target: ProtocolServer | ProtocolClient) -> list[Metrics]:
    chain = target.dispatcher.chain if isinstance(target, ProtocolServer) else target._middleware
    owners = [getattr(m, "__self__", None) for m in getattr(chain, "_middlewares", ())]
    return [owner for owner in owners if isinstance(owner, Metrics)]


async def test_a_global_meter_provider_meters_servers_and_clients_from_their_start(
    global_reading: Reading,
) -> None:
    server = ProtocolServer(port=0, shutdown_timeout=1.0)

    @server.command("ping")
    def ping(connection: Connection, params: dict[str, Any]) -> str:
        return "pong"

    assert metrics_installed(server) == []  # nothing by hand
    async with server, ProtocolClient(ws_url(server), request_timeout=WAIT) as client:
        assert len(metrics_installed(server)) == len(metrics_installed(client)) == 1
        assert (await client.send_request("ping")).data == "pong"
        assert global_reading.calls("rpc.server.call.duration") == {
            ("ping", "0", "websocket", None): 1
        }
        assert global_reading.calls("rpc.client.call.duration") == {
            ("ping", "0", "websocket", None): 1
        }
        # The server's counters are reported through the same provider.
        connections = global_reading.points("siyi.server.connections")
        assert [p.value for a, p in connections if a["siyi.transport"] == "websocket"] == [1]


async def test_opting_out_one_object_or_the_whole_process_records_nothing(
    global_reading: Reading, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ProtocolServer(port=0, shutdown_timeout=1.0)
    server.command("ping")(lambda connection, params: "pong")
    opt_out(server)
    async with server:
        client = ProtocolClient(ws_url(server), request_timeout=WAIT)
        opt_out(client)
        async with client:
            assert metrics_installed(server) == metrics_installed(client) == []
            assert (await client.send_request("ping")).data == "pong"
    assert global_reading.points("rpc.server.call.duration") == []
    assert global_reading.points("rpc.client.call.duration") == []

    monkeypatch.setenv("SIYI_TELEMETRY", "0")
    monkeypatch.setattr(instrument_module, "_enabled", None)  # read again, as at first use
    server = ProtocolServer(port=0, shutdown_timeout=1.0)
    server.command("ping")(lambda connection, params: "pong")
    async with server, ProtocolClient(ws_url(server), request_timeout=WAIT) as client:
        assert metrics_installed(server) == metrics_installed(client) == []
        assert (await client.send_request("ping")).data == "pong"
    assert global_reading.points("rpc.server.call.duration") == []
    assert global_reading.points("rpc.client.call.duration") == []
    assert global_reading.points("siyi.server.connections") == []
