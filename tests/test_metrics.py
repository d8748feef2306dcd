"""OpenTelemetry metrics (issue 14): a known traffic mix gives exactly the expected figures.

Every measurement goes to the real OpenTelemetry SDK's `InMemoryMetricReader`, through a
MeterProvider of the test's own (no global state). The traffic travels over real sockets: a
`ProtocolClient` on a WebSocket, raw ``POST /general`` calls, a raw WebSocket that resumes a
session and takes what was buffered for it.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from siyi_sdk import CallNext, Connection, ProtocolServer, Request, Response, StatusCode
from siyi_sdk.metrics import UNKNOWN_METHOD, Metrics
from siyi_sdk.packets import SESSION_HEADER
from siyi_sdk.server import ServerCall
from siyi_sdk.server.redis_backplane import RedisBackplane

from .conftest import (
    WAIT,
    ClientFactory,
    ServerFactory,
    http_url,
    wait_for,
    wait_until,
    ws_url,
)
from .redis_server import RedisServer

N = 3
"""Calls of each command on each transport."""
K = 2
"""Repeats of a request id (answered by the at-most-once record)."""


class Recorder:
    """A MeterProvider of the test's own, its in-memory reader, and a `Metrics` over it."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)
        self.metrics = Metrics(meter_provider=self.provider)

    def points(self, name: str) -> Iterator[tuple[dict[str, Any], Any]]:
        """``(attributes, point)`` of each data point of the metric `name`, collected now."""
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            yield dict(point.attributes or {}), point

    def value(self, name: str, **attributes: Any) -> float:
        """The value of the one point of `name` whose attributes include `attributes`."""
        found = [
            p.value
            for a, p in self.points(name)
            if all(a.get(k.replace("__", ".")) == v for k, v in attributes.items())
        ]
        assert len(found) == 1, (name, attributes, list(self.points(name)))
        return float(found[0])

    def calls(self, name: str) -> Counter[tuple[Any, ...]]:
        """Histogram counts by (method, status code, transport, cached, error.type)."""
        counts: Counter[tuple[Any, ...]] = Counter()
        for a, p in self.points(name):
            assert isinstance(p, HistogramDataPoint)
            assert a["rpc.system.name"] == "siyi"
            key = (
                a["rpc.method"],
                a.get("rpc.response.status_code"),
                a.get("siyi.transport"),
                a.get("siyi.cached"),
                a.get("error.type"),
            )
            counts[key] += p.count
        return counts


async def rate_limit(call: ServerCall, call_next: CallNext[ServerCall]) -> Response | None:
    """A rate limiter (inside `Metrics`): ``limited`` is always over its rate."""
    if call.direction == "in" and call.is_request and call.name == "limited":
        return Response.fail(call.packet.id, "busy: over your rate", StatusCode.BUSY)
    return await call_next(call)


async def metered_server(make_server: ServerFactory, recorder: Recorder) -> ProtocolServer:
    server = await make_server(session_buffer=2)
    recorder.metrics.install(server)  # first: outermost
    server.use(rate_limit)

    @server.command("echo")
    def echo(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
        return params

    @server.command("add")
    def add(connection: Connection, params: dict[str, Any]) -> int:
        return int(params["a"]) + int(params["b"])

    @server.command("boom")
    def boom(connection: Connection, params: dict[str, Any]) -> None:
        raise RuntimeError("the handler failed")

    @server.command("limited")
    def limited(connection: Connection, params: dict[str, Any]) -> None:
        raise AssertionError("the rate limiter answers first")

    return server


class Poster:
    """Raw ``POST /general`` calls on one session; counts what was sent and received."""

    def __init__(self, http: aiohttp.ClientSession, server: ProtocolServer) -> None:
        self.http = http
        self.url = f"{http_url(server)}/general"
        self.key: str | None = None
        self.sent_bytes = 0
        self.received_bytes = 0
        self.calls = 0

    async def post(self, packet: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(packet).encode()
        headers = {SESSION_HEADER: self.key} if self.key else {}
        async with self.http.post(self.url, data=body, headers=headers) as reply:
            assert reply.status == 200
            raw = await reply.read()
            self.key = reply.headers[SESSION_HEADER]
        self.sent_bytes += len(body)
        self.received_bytes += len(raw)
        self.calls += 1
        answer = json.loads(raw)
        assert isinstance(answer, dict)
        return answer

    async def request(self, rid: str, command: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self.post({"id": rid, "type": "request", "command": command, "params": params})


async def test_a_known_traffic_mix_gives_exactly_the_expected_figures(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    recorder = Recorder()
    server = await metered_server(make_server, recorder)
    client_recorder = Recorder()
    client = await make_client(ws_url(server))
    client_recorder.metrics.install(client)
    await wait_until(lambda: len(server.connections) == 1)

    async with aiohttp.ClientSession() as http:
        poster = Poster(http, server)
        # HTTP: a session opened by an event, then N calls of each command, then K repeats.
        assert (await poster.post({"id": "hello", "type": "event", "name": "hello"}))["code"] == 0
        for i in range(N):
            assert (await poster.request(f"e{i}", "echo", {"i": i}))["data"] == {"i": i}
            assert (await poster.request(f"a{i}", "add", {"a": i, "b": 1}))["data"] == i + 1
        for i in range(K):
            assert (await poster.request(f"e{i}", "echo", {"i": "again"}))["data"] == {"i": i}

        # WebSocket: N calls of each command, one handler failure, one unknown command, one 429.
        for i in range(N):
            assert (await client.send_request("echo", {"i": i})).data == {"i": i}
            assert (await client.send_request("add", {"a": i, "b": 2})).data == i + 2
        assert (await client.send_request("boom")).code == StatusCode.INTERNAL_ERROR
        assert (await client.send_request("nope")).code == StatusCode.UNKNOWN_COMMAND
        assert (await client.send_request("limited")).code == StatusCode.BUSY

        # Three broadcasts: the WebSocket client gets each, the HTTP session (a buffer of 2)
        # keeps the last two and drops the first.
        for i in range(3):
            await server.broadcast_event("tick", {"i": i})

        assert recorder.calls("rpc.server.call.duration") == {
            ("echo", "0", "http", False, None): N,
            ("add", "0", "http", False, None): N,
            ("echo", "0", "http", True, None): K,
            ("echo", "0", "websocket", False, None): N,
            ("add", "0", "websocket", False, None): N,
            ("boom", "500", "websocket", False, "500"): 1,
            (UNKNOWN_METHOD, "404", "websocket", False, "404"): 1,
            ("limited", "429", "websocket", False, "429"): 1,
        }
        assert list(recorder.points("rpc.client.call.duration")) == []
        broadcasts = [p for _, p in recorder.points("siyi.server.broadcast.duration")]
        assert [p.count for p in broadcasts] == [3]
        assert recorder.value("siyi.server.response_cache.hits") == K
        assert recorder.value("siyi.server.busy") == 1

        ws_requests = 2 * N + 3
        http_packets = 1 + 2 * N + K
        expected_packets = {
            ("websocket", "receive"): ws_requests,
            ("websocket", "transmit"): 1 + ws_requests + 3,  # session event, answers, ticks
            ("http", "receive"): http_packets,
            ("http", "transmit"): http_packets,
        }
        for (transport, direction), count in expected_packets.items():
            assert (
                recorder.value(
                    "siyi.server.packets",
                    siyi__transport=transport,
                    network__io__direction=direction,
                )
                == count
            ), (transport, direction)
        http_bytes = {
            "receive": poster.sent_bytes,
            "transmit": poster.received_bytes,
        }
        for direction, size in http_bytes.items():
            assert (
                recorder.value(
                    "siyi.server.io", siyi__transport="http", network__io__direction=direction
                )
                == size
            )
        for direction in ("receive", "transmit"):
            assert (
                recorder.value(
                    "siyi.server.io", siyi__transport="websocket", network__io__direction=direction
                )
                > 0
            )
        assert recorder.value("siyi.server.dropped") == 1
        assert recorder.value("siyi.server.replayed") == 0
        assert recorder.value("siyi.server.sessions", siyi__session__state="attached") == 1
        assert recorder.value("siyi.server.sessions", siyi__session__state="away") == 1
        assert recorder.value("siyi.server.sessions", siyi__session__state="provisional") == 0
        assert recorder.value("siyi.server.connections", siyi__transport="websocket") == 1
        assert recorder.value("siyi.server.connections", siyi__transport="http") == 0

        # The client's own view: one CLIENT duration per request it sent, named as sent.
        assert client_recorder.calls("rpc.client.call.duration") == {
            ("echo", "0", "websocket", None, None): N,
            ("add", "0", "websocket", None, None): N,
            ("boom", "500", "websocket", None, "500"): 1,
            ("nope", "404", "websocket", None, "404"): 1,
            ("limited", "429", "websocket", None, "429"): 1,
        }

        # The HTTP session's key on a WebSocket: what its buffer kept is replayed, the drop
        # is reported (and stays counted once), and the gauges go up.
        assert poster.key is not None
        async with http.ws_connect(ws_url(server), headers={SESSION_HEADER: poster.key}) as ws:
            greeting = await wait_for(ws.receive_json())
            assert greeting["data"]["dropped"] == 1
            replayed = [await wait_for(ws.receive_json()) for _ in range(2)]
            assert [p["data"]["i"] for p in replayed] == [1, 2]
            assert recorder.value("siyi.server.replayed") == 2
            assert recorder.value("siyi.server.dropped") == 1
            assert recorder.value("siyi.server.sessions", siyi__session__state="attached") == 2
            assert recorder.value("siyi.server.sessions", siyi__session__state="away") == 0
            assert recorder.value("siyi.server.connections", siyi__transport="websocket") == 2
        # A clean close ends that session; the client's goes too when it disconnects.
        await client.disconnect()
        await wait_until(lambda: len(server.sessions) == 0)
        assert recorder.value("siyi.server.connections", siyi__transport="websocket") == 0
        for state in ("attached", "away", "provisional"):
            assert recorder.value("siyi.server.sessions", siyi__session__state=state) == 0
        # What the closed sockets counted is kept.
        assert (
            recorder.value(
                "siyi.server.packets",
                siyi__transport="websocket",
                network__io__direction="transmit",
            )
            == 1 + ws_requests + 3 + 1 + 2
        )

        # A call without a session key opens a provisional session.
        poster.key = None
        await poster.post({"id": "again", "type": "event", "name": "hello"})
        assert recorder.value("siyi.server.sessions", siyi__session__state="provisional") == 1


async def test_unknown_command_names_do_not_grow_the_label_set(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    recorder = Recorder()
    server = await make_server()
    recorder.metrics.install(server)

    @server.command("echo")
    def echo(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
        return params

    client = await make_client(ws_url(server))
    for i in range(20):
        assert (await client.send_request(f"random-{i}")).code == StatusCode.UNKNOWN_COMMAND
    await client.send_request("echo")
    methods = {a["rpc.method"] for a, _ in recorder.points("rpc.server.call.duration")}
    assert methods == {UNKNOWN_METHOD, "echo"}


async def test_a_catch_all_handler_keeps_a_bounded_set_of_names(
    make_server: ServerFactory, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 3
    monkeypatch.setattr("siyi_sdk.metrics.MAX_UNROUTED_METHODS", limit)
    recorder = Recorder()
    server = await make_server()
    recorder.metrics.install(server)

    @server.on_request
    def anything(connection: Connection, request: Request) -> Response:
        return Response.success(request.id, request.command)

    client = await make_client(ws_url(server))
    for i in range(limit + 4):
        assert (await client.send_request(f"name-{i}")).ok
    counts = Counter(a["rpc.method"] for a, _ in recorder.points("rpc.server.call.duration"))
    assert set(counts) == {f"name-{i}" for i in range(limit)} | {UNKNOWN_METHOD}


async def test_the_in_flight_bound_counts_as_busy(make_server: ServerFactory) -> None:
    """A 429 of `max_in_flight` (answered before any middleware) is counted by the server."""
    recorder = Recorder()
    server = await make_server(max_in_flight=1)
    recorder.metrics.install(server)
    release = asyncio.Event()

    @server.command("wait")
    async def wait(connection: Connection, params: dict[str, Any]) -> None:
        await release.wait()

    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
        await wait_for(ws.receive_json())  # the session event
        for i in range(3):
            await ws.send_json({"id": f"w{i}", "type": "request", "command": "wait"})
        busy = [await wait_for(ws.receive_json()) for _ in range(2)]
        assert [b["code"] for b in busy] == [429, 429]
        assert recorder.value("siyi.server.busy") == 2
        release.set()
        assert (await wait_for(ws.receive_json()))["code"] == 0


async def test_a_redis_backplane_reports_its_round_trip(
    make_server: ServerFactory, redis_server: RedisServer, redis_prefix: str
) -> None:
    recorder = Recorder()
    backplane = RedisBackplane(redis_server.url, prefix=redis_prefix, node_ttl=0.3)
    server = await make_server(backplane=backplane)
    recorder.metrics.install(server)
    await wait_until(lambda: backplane.round_trip is not None)  # the keep-alive's first PING
    assert recorder.value("siyi.server.backplane.up") == 1
    assert 0 < recorder.value("siyi.server.backplane.round_trip") < WAIT
    assert recorder.value("siyi.server.backplane.outages") == 0


async def test_the_memory_backplane_reports_no_backplane_figures(
    make_server: ServerFactory,
) -> None:
    recorder = Recorder()
    recorder.metrics.install(await make_server())
    for name in ("up", "round_trip", "outages"):
        assert list(recorder.points(f"siyi.server.backplane.{name}")) == []
