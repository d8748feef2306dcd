"""One encode per Response (issue 12): the at-most-once record keeps the bytes that were sent,
and a repeat is answered with those very bytes."""

from __future__ import annotations

import contextlib

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


async def test_run_inline_hands_a_step_that_waits_to_a_task() -> None:
    import asyncio

    from siyi_sdk.peer import run_inline

    steps: list[str] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def quick() -> None:
        steps.append("quick")

    async def slow() -> None:
        steps.append("first step")
        try:
            await gate
            steps.append("resumed")
            await asyncio.sleep(0)
            steps.append("done")
        finally:
            steps.append("finally")

    assert run_inline(quick()) is None  # finished in its first step: no task
    task = run_inline(slow())
    assert task is not None
    assert steps == ["quick", "first step"]
    gate.set_result(None)
    await task
    assert steps[2:] == ["resumed", "done", "finally"]

    steps.clear()
    gate = asyncio.get_running_loop().create_future()
    task = run_inline(slow())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert steps == ["first step", "finally"]
    assert task.cancelled()
