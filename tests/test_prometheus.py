"""The Prometheus endpoint (issue 14): `ProtocolServer(metrics_path=...)`, `siyi serve --metrics`.

Every scrape is a real HTTP GET, parsed with `prometheus_client`'s own parser; the traffic it
measures travels over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from siyi_sdk import Connection, ProtocolClient, ProtocolServer
from siyi_sdk.packets import SESSION_HEADER

from .conftest import (
    ClientFactory,
    ServerFactory,
    free_port,
    http_url,
    wait_for,
    wait_until,
    ws_url,
)
from .test_cli import STARTUP, running

N = 3


async def scrape(url: str, key: str | None = None) -> list[Sample]:
    """GET `url` (with the key, if given) and parse it: every sample."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as reply:
        assert reply.status == 200, await reply.text()
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = await reply.text()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The one sample `name` whose labels include `labels`."""
    found = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, found)
    return float(found[0])


def calls(samples: Iterable[Sample], method: str, transport: str, code: str = "0") -> float:
    return value(
        samples,
        "rpc_server_call_duration_seconds_count",
        rpc_method=method,
        siyi_transport=transport,
        rpc_response_status_code=code,
    )


def echo_server_routes(server: ProtocolServer, release: asyncio.Event | None = None) -> None:
    @server.command("echo")
    def echo(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
        return params

    @server.command("hold")
    async def hold(connection: Connection, params: dict[str, Any]) -> str:
        assert release is not None
        await release.wait()
        return "released"


async def test_metrics_scraped_during_traffic_show_the_same_figures(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server(metrics_path="/metrics")
    release = asyncio.Event()
    echo_server_routes(server, release)
    url = f"{http_url(server)}/metrics"
    client = await make_client(ws_url(server))
    for i in range(N):
        assert (await client.send_request("echo", {"i": i})).data == {"i": i}
    assert (await client.send_request("nope")).code == 404
    async with aiohttp.ClientSession() as http:
        bodies: list[bytes] = []
        key: str | None = None
        for i in range(N):
            body = json.dumps({"id": f"h{i}", "type": "request", "command": "echo"}).encode()
            headers = {SESSION_HEADER: key} if key else {}
            async with http.post(f"{http_url(server)}/general", data=body, headers=headers) as r:
                assert r.status == 200
                key = r.headers[SESSION_HEADER]
            bodies.append(body)

        # Scraped while a call over HTTP and one over the WebSocket are running.
        held_body = json.dumps({"id": "held", "type": "request", "command": "hold"}).encode()
        bodies.append(held_body)
        held = asyncio.ensure_future(
            http.post(
                f"{http_url(server)}/general",
                data=held_body,
                headers={SESSION_HEADER: key or ""},
            )
        )
        ws_held = asyncio.ensure_future(client.send_request("hold"))
        await wait_until(lambda: len(server.lifecycle.http_calls) == 1)
        during = await scrape(url)
        assert value(during, "siyi_server_connections", siyi_transport="http") == 1
        assert value(during, "siyi_server_connections", siyi_transport="websocket") == 1
        assert value(during, "siyi_server_sessions", siyi_session_state="attached") == 1
        assert value(during, "siyi_server_sessions", siyi_session_state="away") == 1
        assert calls(during, "echo", "websocket") == N
        assert calls(during, "echo", "http") == N
        assert calls(during, "_unknown", "websocket", "404") == 1
        assert not [s for s in during if s.labels.get("rpc_method") == "hold"]
        assert (
            value(
                during,
                "siyi_server_packets_total",
                siyi_transport="http",
                network_io_direction="receive",
            )
            == N + 1  # the held call's body is read
        )
        assert value(
            during,
            "siyi_server_io_bytes_total",
            siyi_transport="http",
            network_io_direction="receive",
        ) == sum(map(len, bodies))
        # 1 session event, N + 1 answers; the held request is read but not answered yet.
        assert (
            value(
                during,
                "siyi_server_packets_total",
                siyi_transport="websocket",
                network_io_direction="receive",
            )
            == N + 2
        )
        assert (
            value(
                during,
                "siyi_server_packets_total",
                siyi_transport="websocket",
                network_io_direction="transmit",
            )
            == 1 + N + 1
        )

        release.set()
        async with await held as reply:
            assert (await reply.json())["data"] == "released"
        assert (await wait_for(ws_held)).data == "released"
        after = await scrape(url)
        assert value(after, "siyi_server_connections", siyi_transport="http") == 0
        assert calls(after, "hold", "http") == 1
        assert calls(after, "hold", "websocket") == 1
        buckets = [
            s
            for s in after
            if s.name == "rpc_server_call_duration_seconds_bucket"
            and s.labels["rpc_method"] == "echo"
            and s.labels["siyi_transport"] == "websocket"
        ]
        assert buckets[-1].labels["le"] == "+Inf"
        assert buckets[-1].value == N


async def test_a_metrics_key_is_required_when_set(make_server: ServerFactory) -> None:
    server = await make_server(metrics_path="/metrics", metrics_key="s3cret")
    url = f"{http_url(server)}/metrics"
    async with aiohttp.ClientSession() as http:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic s3cret"},
            {"Authorization": "Bearer s3cret-and-more"},
        ):
            async with http.get(url, headers=headers) as reply:
                assert reply.status == 401, headers
                assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    samples = await scrape(url, key="s3cret")
    assert value(samples, "siyi_server_connections", siyi_transport="websocket") == 0


async def test_the_metrics_key_is_not_the_server_key(make_server: ServerFactory) -> None:
    server = await make_server(verify_key="client-key", metrics_path="/metrics")
    # Open metrics on a server with a key: the scrape needs none, the packets still do.
    await scrape(f"{http_url(server)}/metrics")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{http_url(server)}/general", data=b"{}") as reply,
    ):
        assert reply.status == 401


async def test_metrics_follow_the_mount_prefix() -> None:
    port = free_port()
    app = web.Application()
    server = ProtocolServer(metrics_path="/metrics")
    echo_server_routes(server)
    server.attach(app, prefix="/siyi")
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"127.0.0.1:{port}"
        async with ProtocolClient(f"ws://{base}/siyi", request_timeout=5) as client:
            assert (await client.send_request("echo", {"x": 1})).data == {"x": 1}
            samples = await scrape(f"http://{base}/siyi/metrics")
            assert calls(samples, "echo", "websocket") == 1
        async with aiohttp.ClientSession() as http, http.get(f"http://{base}/metrics") as reply:
            assert reply.status == 404  # only under the prefix
    finally:
        await runner.cleanup()


async def test_two_servers_in_one_process_keep_their_own_figures(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    first = await make_server(metrics_path="/metrics")
    second = await make_server(metrics_path="/metrics")
    echo_server_routes(first)
    echo_server_routes(second)
    client = await make_client(ws_url(first))
    for _ in range(2):
        await client.send_request("echo")
    assert calls(await scrape(f"{http_url(first)}/metrics"), "echo", "websocket") == 2
    samples = await scrape(f"{http_url(second)}/metrics")
    assert not [s for s in samples if s.name.startswith("rpc_server_call_duration")]


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ImportError, match=r"siyi-sdk\[prometheus\]"):
        ProtocolServer(metrics_path="/metrics")


def test_a_metrics_key_needs_a_path() -> None:
    with pytest.raises(ValueError, match="metrics_path"):
        ProtocolServer(metrics_key="k")


async def test_siyi_serve_metrics_serves_prometheus() -> None:
    async with running(
        "-m", "siyi_sdk", "serve", "--port", "0", "--metrics", "--metrics-key", "k"
    ) as child:
        line = await child.wait_line("metrics for Prometheus at http://", "stdout")
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert match, line
        port = match.group(1)
        async with ProtocolClient(f"ws://127.0.0.1:{port}", request_timeout=STARTUP) as client:
            assert (await client.send_request("get_status")).ok
            samples = await scrape(f"http://127.0.0.1:{port}/metrics", key="k")
            assert calls(samples, "get_status", "websocket") == 1
            assert value(samples, "siyi_server_connections", siyi_transport="websocket") == 1
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as reply,
        ):
            assert reply.status == 401


async def test_siyi_serve_metrics_takes_a_path() -> None:
    async with running("-m", "siyi_sdk", "serve", "--port", "0", "--metrics", "/m") as child:
        line = await child.wait_line("metrics for Prometheus at http://", "stdout")
        match = re.search(r"http://127\.0\.0\.1:(\d+)/m$", line)
        assert match, line
        samples = await scrape(f"http://127.0.0.1:{match.group(1)}/m")
        assert value(samples, "siyi_server_sessions", siyi_session_state="attached") == 0
