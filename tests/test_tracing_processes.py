"""One trace across three processes, recorded by automatic instrumentation alone (issue 14).

A server process and two client processes (`tests.tracing_node`), spawned, each with a
`TracerProvider` of its own set as the global one and an in-memory exporter, and no
``Tracing().install``: servers and clients instrument themselves when they start. Each dumps
its finished spans as JSON when the test asks, and the test checks the parent links across
the processes: the context travels in the packets' ``meta.traceparent`` (PROTOCOL.md §2).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from siyi_sdk.testing import TcpProxy

from .conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent

Span = dict[str, Any]


class NodeProcess:
    """A `tests.tracing_node` process: commands on its stdin, tagged answers on its stdout."""

    def __init__(self, process: asyncio.subprocess.Process, first: dict[str, Any]) -> None:
        self.process = process
        self.first = first
        self._tags = itertools.count()
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            reply = orjson.loads(line)
            future = self._waiting.pop(reply.pop("tag"))
            future.set_result(reply)
        for future in self._waiting.values():
            future.set_exception(AssertionError("the node process ended"))

    def send(self, op: str, **fields: Any) -> asyncio.Future[dict[str, Any]]:
        """Give a command; the future is its answer (commands run concurrently in the node)."""
        tag = next(self._tags)
        future = asyncio.get_running_loop().create_future()
        self._waiting[tag] = future
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps({"op": op, "tag": tag, **fields}) + b"\n")
        return future

    async def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await wait_for(self.send(op, **fields))
        assert "error" not in reply, reply["error"]
        return reply

    async def spans(self, *expect: tuple[str, str, int]) -> list[Span]:
        """Every finished span, once those in `expect` (name, kind, count) have finished."""
        reply = await self.ask("spans", expect=[list(e) for e in expect])
        spans: list[Span] = reply["spans"]
        return spans

    async def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def spawned(role: str, *args: str) -> AsyncIterator[NodeProcess]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.tracing_node",
        role,
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        line = await wait_for(process.stdout.readline(), 30)
        assert line, "the node did not start"
        node = NodeProcess(process, orjson.loads(line))
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    try:
        yield node
    finally:
        await node.close()


def one(spans: list[Span], name: str, kind: str) -> Span:
    found = [s for s in spans if s["name"] == name and s["kind"] == kind]
    assert len(found) == 1, [(s["name"], s["kind"]) for s in spans]
    return found[0]


def child_of(span: Span, parent: Span, *, remote: bool) -> bool:
    """`span` continues `parent`, in the same trace; `remote`: its context came in a packet."""
    assert span["trace_id"] == parent["trace_id"], f"{span['name']} is in another trace"
    assert span["parent_id"] == parent["span_id"], f"{span['name']} <- {parent['name']}"
    assert span["parent_remote"] is remote, f"{span['name']} <- {parent['name']}: remote?"
    return True


@pytest.fixture
async def server() -> AsyncIterator[NodeProcess]:
    async with spawned("server") as node:
        yield node


def urls(server: NodeProcess) -> tuple[str, str]:
    port = server.first["port"]
    return f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"


async def test_one_trace_across_three_processes_over_websocket(server: NodeProcess) -> None:
    ws_url, _ = urls(server)
    async with spawned("client", ws_url) as caller, spawned("client", ws_url) as worker:
        assert caller.first == worker.first == {"ready": True}
        assert (await worker.ask("call", command="join"))["data"] == "joined"

        answer = await caller.ask("call", command="relay", params={"x": 1})
        assert answer == {"ok": True, "code": 0, "data": {"worked": {"x": 1}}}
        await caller.ask("events", count=1)
        await worker.ask("events", count=1)

        on_server, on_caller, on_worker = await asyncio.gather(
            server.spans(
                ("relay", "SERVER", 1), ("work", "CLIENT", 1), ("send relayed", "PRODUCER", 1)
            ),
            caller.spans(("relay", "CLIENT", 1), ("process relayed", "CONSUMER", 1)),
            worker.spans(("work", "SERVER", 1), ("process relayed", "CONSUMER", 1)),
        )

    sent = one(on_caller, "relay", "CLIENT")
    handled = one(on_server, "relay", "SERVER")
    asked = one(on_server, "work", "CLIENT")
    worked = one(on_worker, "work", "SERVER")
    produced = one(on_server, "send relayed", "PRODUCER")
    consumed = [
        one(on_caller, "process relayed", "CONSUMER"),
        one(on_worker, "process relayed", "CONSUMER"),
    ]
    assert sent["parent_id"] is None  # the caller started the trace
    assert child_of(handled, sent, remote=True)  # process A -> the server
    assert child_of(asked, handled, remote=False)  # inside the server's handler
    assert child_of(worked, asked, remote=True)  # the server -> process B
    assert child_of(produced, handled, remote=False)  # the handler's broadcast
    for span in consumed:
        assert child_of(span, produced, remote=True)  # the server -> A and B

    assert sent["attributes"] == {
        "rpc.system.name": "siyi",
        "rpc.method": "relay",
        "rpc.response.status_code": "0",
        "siyi.transport": "websocket",
        "siyi.adapter": f"ProtocolClient({ws_url})",
    }
    assert handled["attributes"] == {
        "rpc.system.name": "siyi",
        "rpc.method": "relay",
        "rpc.response.status_code": "0",
        "siyi.transport": "websocket",
        "siyi.cached": False,
    }
    assert asked["attributes"]["siyi.transport"] == "websocket"
    assert worked["attributes"]["rpc.method"] == "work"
    assert produced["attributes"]["messaging.destination.name"] == "relayed"
    for span in (sent, handled, asked, worked, produced, *consumed):
        assert span["status"] == "UNSET", span
    # Each side recorded each call once: the join's trace and this one, nothing twice.
    assert sorted((s["name"], s["kind"]) for s in on_caller) == [
        ("process relayed", "CONSUMER"),
        ("relay", "CLIENT"),
    ]


async def test_a_failover_mid_call_over_http_is_one_trace_with_the_failover_event(
    server: NodeProcess,
) -> None:
    ws_url, http_url = urls(server)
    async with (
        TcpProxy(server.first["port"]) as proxy,
        spawned("client", ws_url) as worker,
        spawned("manager", proxy.url, http_url) as caller,
    ):
        assert caller.first["ready"] is True  # its WebSocket is up, through the proxy
        ws_name, http_name = caller.first["adapters"]
        assert (await worker.ask("call", command="join"))["data"] == "joined"

        call = caller.send("call", command="hold", params={"z": 3})
        await server.ask("wait_held")  # it arrived over the WebSocket and runs
        await proxy.cut()  # the WebSocket drops mid-call: the manager fails over to HTTP
        await server.ask("release")
        answer = await wait_for(call)
        assert answer == {"ok": True, "code": 0, "data": {"worked": {"z": 3}}}

        on_caller, on_server, on_worker = await asyncio.gather(
            caller.spans(("hold", "CLIENT", 1)),
            server.spans(("hold", "SERVER", 2), ("work", "CLIENT", 1)),
            worker.spans(("work", "SERVER", 1)),
        )

    # One CLIENT span for the call, the manager's: its adapters record none of their own.
    sent = one(on_caller, "hold", "CLIENT")
    assert sent["attributes"]["siyi.adapter"] == http_name
    assert sent["attributes"]["siyi.transport"] == "http"
    assert sent["attributes"]["rpc.response.status_code"] == "0"
    assert [e["name"] for e in sent["events"]] == ["failover"]
    failover = sent["events"][0]["attributes"]
    assert failover["siyi.adapter"] == ws_name
    assert failover["error.type"] == "ConnectionClosedError"

    # The run that arrived over the WebSocket and its repeat over HTTP (answered by the
    # at-most-once record): both continue the caller's span; the run asked the worker.
    handled = {s["attributes"]["siyi.transport"]: s for s in on_server if s["name"] == "hold"}
    assert handled.keys() == {"websocket", "http"}
    assert handled["websocket"]["attributes"]["siyi.cached"] is False
    assert handled["http"]["attributes"]["siyi.cached"] is True
    for span in handled.values():
        assert child_of(span, sent, remote=True)
    asked = one(on_server, "work", "CLIENT")
    assert child_of(asked, handled["websocket"], remote=False)
    assert child_of(one(on_worker, "work", "SERVER"), asked, remote=True)
