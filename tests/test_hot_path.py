"""One encode per Response (issue 12): the at-most-once record keeps the bytes that were sent,
and a repeat is answered with those very bytes."""

from __future__ import annotations

from siyi_sdk import Response
from siyi_sdk.server import MemoryResponseCache


async def test_a_repeat_is_answered_with_the_bytes_sent_the_first_time() -> None:
    cache = MemoryResponseCache()
    runs = 0

    async def compute() -> Response:
        nonlocal runs
        runs += 1
        return Response.success("r1", {"x": 1})

    first = await cache.run_once_frame(("session", "r1"), compute)
    again = await cache.run_once_frame(("session", "r1"), compute)
    assert again is first  # not re-encoded, not parsed: the same object
    assert runs == 1
    assert first == b'{"id":"r1","type":"response","status":"ok","code":0,"data":{"x":1}}'
    assert cache.size == len(first)
    # Another session's same id is another request.
    await cache.run_once_frame(("other", "r1"), compute)
    assert runs == 2


async def test_plain_handlers_answer_inline_and_async_ones_still_work() -> None:
    import asyncio
    import contextvars
    import json

    from websockets.asyncio.client import connect

    from siyi_sdk import Connection, ProtocolServer

    from .conftest import greeting_of, recv_frame

    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    server = ProtocolServer(port=0, heartbeat_interval=None)

    @server.command("plain")
    def plain(connection: Connection, params: dict[str, object]) -> str:
        seen = marker.get()
        marker.set("leaked?")  # stays in the request's own context
        return seen

    @server.command("waits")
    async def waits(connection: Connection, params: dict[str, object]) -> bool:
        await asyncio.sleep(0)
        return asyncio.current_task() is not None

    async with server, connect(f"ws://127.0.0.1:{server.port}") as ws:
        await greeting_of(ws)
        for n in range(3):
            await ws.send(json.dumps({"id": f"p{n}", "type": "request", "command": "plain"}))
            assert (await recv_frame(ws))["data"] == "unset"
        await ws.send(json.dumps({"id": "w", "type": "request", "command": "waits"}))
        assert (await recv_frame(ws))["data"] is True


async def test_the_flat_path_keeps_at_most_once_and_the_error_mapping() -> None:
    """A plain handler answers inline; a repeat, a raise, bad params, a non-JSON result, and a
    plain function returning an awaitable each get the answer of the full path."""
    import asyncio
    import json

    from pydantic import BaseModel
    from websockets.asyncio.client import connect

    from siyi_sdk import ApiError, Command, Connection, ProtocolServer

    from .conftest import greeting_of, recv_frame

    class Add(Command[int]):
        a: int
        b: int

    runs: list[str] = []
    gate = asyncio.Event()
    server = ProtocolServer(port=0, heartbeat_interval=None)

    @server.command(Add)
    def add(connection: Connection, params: Add) -> int:
        runs.append("add")
        return params.a + params.b

    @server.command("fails")
    def fails(connection: Connection, params: dict[str, object]) -> None:
        raise ApiError("no such world", code=1004)

    @server.command("crashes")
    def crashes(connection: Connection, params: dict[str, object]) -> None:
        raise RuntimeError("secret detail")

    @server.command("odd")
    def odd(connection: Connection, params: dict[str, object]) -> object:
        return object()

    class Thing(BaseModel):
        x: int

    @server.command("model")
    def model(connection: Connection, params: dict[str, object]) -> Thing:
        return Thing(x=1)

    async def later() -> str:
        runs.append("later")
        await gate.wait()
        return "late"

    server.command("lazy")(lambda connection, params: later())

    async with server, connect(f"ws://127.0.0.1:{server.port}") as ws:
        await greeting_of(ws)

        async def ask(rid: str, command: str, params: object = None) -> dict[str, object]:
            packet = {"id": rid, "type": "request", "command": command, "params": params}
            await ws.send(json.dumps(packet))
            return await recv_frame(ws)

        assert (await ask("a", "add", {"a": 1, "b": 2}))["data"] == 3
        assert (await ask("a", "add", {"a": 5, "b": 5}))["data"] == 3  # a repeat: not run
        assert runs == ["add"]
        bad = await ask("b", "add", {"a": "x"})
        assert bad["code"] == 400
        assert "invalid params" in str(bad["error"])
        assert (await ask("c", "fails")) | {"id": "c"} == {
            "id": "c",
            "type": "response",
            "status": "error",
            "code": 1004,
            "error": "no such world",
        }
        crashed = await ask("d", "crashes")
        assert crashed["code"] == 500
        assert "secret" not in str(crashed["error"])
        assert (await ask("e", "odd"))["code"] == 500
        assert (await ask("f", "model"))["data"] == {"x": 1}
        # A plain function returning an awaitable: answered when it completes, and a repeat
        # sent meanwhile waits for that one run.
        await ws.send(json.dumps({"id": "g", "type": "request", "command": "lazy"}))
        await ws.send(json.dumps({"id": "g", "type": "request", "command": "lazy"}))
        await asyncio.sleep(0.05)
        gate.set()
        first, second = await recv_frame(ws), await recv_frame(ws)
        assert first["data"] == second["data"] == "late"
        assert runs.count("later") == 1


async def test_a_burst_of_pipelined_requests_is_answered_in_order_with_large_answers_too() -> None:
    """Answers to frames read together are written together (one write per burst): every
    answer arrives, in order, whatever its size (the three lengths of a frame header)."""
    import json

    from websockets.asyncio.client import connect

    from siyi_sdk import Connection, ProtocolServer

    from .conftest import greeting_of, recv_frame

    server = ProtocolServer(port=0, heartbeat_interval=None)

    @server.command("echo")
    def echo(connection: Connection, params: dict[str, object]) -> object:
        return params

    sizes = [10, 200, 70_000] * 20  # short, 16-bit and 64-bit lengths
    async with server, connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
        await greeting_of(ws)
        for n, size in enumerate(sizes):
            packet = {
                "id": f"b{n}",
                "type": "request",
                "command": "echo",
                "params": {"x": "y" * size},
            }
            await ws.send(json.dumps(packet))
        answers = [await recv_frame(ws) for _ in sizes]
        # What the server sends after the burst still arrives whole, after the answers.
        await server.broadcast_event("after", 1)
        assert (await recv_frame(ws))["name"] == "after"
    assert [a["id"] for a in answers] == [f"b{n}" for n in range(len(sizes))]
    assert [len(a["data"]["x"]) for a in answers] == sizes
