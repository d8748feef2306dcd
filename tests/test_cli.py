"""The ``siyi`` command, run as a real subprocess (``python -m siyi_sdk``) over loopback sockets.

`Child` collects a subprocess's output lines as they come and lets a test wait for a line:
no sleeps, and every subprocess is killed when its test ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest

from siyi_sdk import Connection, ProtocolClient, ProtocolServer
from siyi_sdk.cli import main
from tests.conftest import Inbox, ServerFactory, free_port, wait_for
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
STARTUP = 20.0
"""The bound on a child's start (an interpreter importing aiohttp and pydantic) and on its run."""

Stream = Literal["stdout", "stderr"]

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child")


class Child:
    """A running subprocess whose stdout and stderr lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: dict[Stream, list[str]] = {"stdout": [], "stderr": []}
        self._ended: dict[Stream, bool] = {"stdout": False, "stderr": False}
        self._changed = asyncio.Condition()
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, "stdout")),
            asyncio.create_task(self._pump(proc.stderr, "stderr")),
        ]

    async def _pump(self, reader: asyncio.StreamReader, stream: Stream) -> None:
        try:
            async for raw in reader:
                async with self._changed:
                    self.lines[stream].append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._ended[stream] = True
                self._changed.notify_all()

    def output(self) -> str:
        """Everything the child printed so far, for assertion messages."""
        return "\n".join(
            [f"--- {self.proc.pid} {s} ---\n" + "\n".join(self.lines[s]) for s in self.lines]
        )

    def text(self, stream: Stream) -> str:
        """What the child printed on `stream` so far."""
        return "\n".join(self.lines[stream])

    async def wait_line(
        self, text: str, stream: Stream = "stderr", timeout: float = STARTUP
    ) -> str:
        """Wait for a line containing `text`; fail if the stream ends or time runs out first."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                while True:
                    for line in self.lines[stream]:
                        if text in line:
                            return line
                    if self._ended[stream]:
                        raise AssertionError(f"{stream} ended without {text!r}\n{self.output()}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no {text!r} on {stream} in {timeout:g} s\n{self.output()}"
            ) from None

    async def wait_exit(self, timeout: float = STARTUP) -> int:
        """Wait for the child to exit and for its output to be read; return its exit code."""
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
                await asyncio.gather(*self._pumps)
        except TimeoutError:
            raise AssertionError(f"still running after {timeout:g} s\n{self.output()}") from None
        return code

    def interrupt(self) -> None:
        """Send SIGINT, as Ctrl+C would."""
        self.proc.send_signal(signal.SIGINT)

    async def kill(self) -> None:
        """Kill the child if it still runs, and reap it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


@contextlib.asynccontextmanager
async def running(*args: str, cwd: Path = ROOT) -> AsyncIterator[Child]:
    """Run ``python -u *args`` (unbuffered, this tree first on the path); kill it at the end."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-u",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    child = Child(proc)
    try:
        yield child
    finally:
        await child.kill()


async def siyi(*args: str) -> tuple[int, str, Child]:
    """Run ``python -m siyi_sdk *args`` to its end: the exit code, stdout, and the child."""
    async with running("-m", "siyi_sdk", *args) as child:
        code = await child.wait_exit()
        return code, child.text("stdout"), child


def only_json_line(stdout: str) -> dict[str, Any]:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


@pytest.fixture
async def echo_server(make_server: ServerFactory) -> ProtocolServer:
    """A server with one route, ``echo``; any other command gets 404."""
    server = await make_server()

    @server.command("echo")
    async def echo(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
        return params

    return server


# demo --------------------------------------------------------------------------------------------


async def test_demo_narrates_every_step_and_exits_0() -> None:
    code, stdout, child = await siyi("demo")
    assert code == 0, child.output()
    for step in (
        "alice connected to ws://127.0.0.1:",
        "bob connected to ws://127.0.0.1:",
        "the server sent alice a 'get_status' request; alice answered {'status': 'running'",
        "the server sent bob a 'get_status' request; bob answered {'status': 'running'",
        '"command":"get_player_list","params":{"world":"overworld"}',
        "So the overworld holds ['Steve', 'Alex']",
        "the server answers error 1004: unknown world: 'moon'",
        "bob receives player_joined from the server: {'player_name': 'Herobrine'",
        "alice receives player_updated_notification: {'player': 'Herobrine', 'health': 95}",
        "bob, who sent the update, is left out of the broadcast: he received nothing",
        "error 404: unknown command: 'teleport'",
        "The server broadcasts 'get_status' and collects 2 answers",
        # Failover, live: the slow request survives the cut, then traffic comes back.
        "carol: get_player_list() -> ['Steve', 'Alex', 'Herobrine'], carried by WebSocketAdapter",
        "carol still gets her answer (1 save so far), carried by HttpAdapter",
        "the next call goes straight to HttpAdapter",
        "The next call, get_status(), is carried by WebSocketAdapter again.",
        "The server has no connection left and stops",
        "The demo is over.",
    ):
        assert step in stdout, f"{step!r} not narrated\n{child.output()}"
    assert "Traceback" not in child.text("stderr"), child.output()
    # Logging goes to stderr at INFO, in a readable format: the game server's own records.
    assert re.search(
        r"^\d\d:\d\d:\d\d INFO +siyi_sdk\.demo\.game: game: alice connected",
        child.text("stderr"),
        re.MULTILINE,
    ), child.output()


# call --------------------------------------------------------------------------------------------


async def test_call_prints_the_ok_response_over_websocket_and_http(
    echo_server: ProtocolServer,
) -> None:
    port = echo_server.port
    results = await asyncio.gather(
        siyi("call", f"ws://127.0.0.1:{port}", "echo", '{"a": 1}'),
        siyi("call", f"http://127.0.0.1:{port}", "echo", '{"b": "二"}'),
    )
    for (code, stdout, child), expected in zip(results, [{"a": 1}, {"b": "二"}], strict=True):
        assert code == 0, child.output()
        response = only_json_line(stdout)
        assert response["type"] == "response"
        assert response["status"] == "ok"
        assert response["code"] == 0
        assert response["data"] == expected


async def test_call_exits_1_on_an_error_response(echo_server: ProtocolServer) -> None:
    for url in (f"ws://127.0.0.1:{echo_server.port}", f"http://127.0.0.1:{echo_server.port}"):
        code, stdout, child = await siyi("call", url, "teleport")
        assert code == 1, child.output()
        response = only_json_line(stdout)
        assert response["status"] == "error"
        assert response["code"] == 404
        assert "unknown command: 'teleport'" in response["error"]
        assert "error 404" in child.text("stderr")


@pytest.mark.parametrize(
    ("command", "scheme"), [("call", "ws"), ("call", "http"), ("listen", "ws")]
)
async def test_nothing_listening_exits_2_with_a_clear_message(command: str, scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}"
    args = [command, url, "echo"] if command == "call" else [command, url]
    code, stdout, child = await siyi(*args)
    assert code == 2, child.output()
    assert stdout == ""
    assert f"siyi {command}: cannot reach {url}" in child.text("stderr")
    assert "Traceback" not in child.text("stderr")


def test_call_params_must_be_a_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["call", "ws://127.0.0.1:1", "echo", "[1, 2]"])
    assert exit_info.value.code == 2
    assert "the params must be a JSON object" in capsys.readouterr().err


# serve -------------------------------------------------------------------------------------------


@posix_only
async def test_serve_answers_then_stops_cleanly_on_sigint() -> None:
    async with running("-m", "siyi_sdk", "serve", "--port", "0", "--heartbeat", "5") as child:
        banner = await child.wait_line("serving the demo game on ws://", "stdout")
        match = re.search(r"ws://127\.0\.0\.1:(\d+)", banner)
        assert match, banner
        url = f"ws://127.0.0.1:{match.group(1)}"
        async with ProtocolClient(url, request_timeout=STARTUP) as client:
            assert client.is_connected
            players = await client.send_request("get_player_list", {"world": "overworld"})
            assert players.ok
            assert players.data == ["Steve", "Alex"]
            status = await client.send_request("get_status")
            assert status.data == {"status": "running", "players": 3}
            unknown = await client.send_request("get_player_list", {"world": "moon"})
            assert unknown.code == 1004
        child.interrupt()
        assert await child.wait_exit() == 0
        assert child.lines["stdout"][-1] == "stopped", child.output()
        assert "server stopped" in child.text("stderr")
        assert "Traceback" not in child.text("stderr"), child.output()


# listen ------------------------------------------------------------------------------------------


@posix_only
async def test_listen_prints_each_event_as_a_json_line(make_server: ServerFactory) -> None:
    server = await make_server()
    connected = asyncio.Event()
    server.on_connect(lambda connection: connected.set())
    async with running("-m", "siyi_sdk", "listen", f"ws://127.0.0.1:{server.port}") as child:
        await wait_for(connected.wait(), STARTUP)
        await server.broadcast_event("player_joined", {"player_name": "Herobrine"})
        await server.broadcast_event("player_update", {"player": "Steve", "health": 95})
        await child.wait_line('"player_update"', "stdout")
        events = [json.loads(line) for line in child.lines["stdout"]]
        assert [(e["type"], e["name"], e["data"]) for e in events] == [
            ("event", "player_joined", {"player_name": "Herobrine"}),
            ("event", "player_update", {"player": "Steve", "health": 95}),
        ]
        child.interrupt()
        assert await child.wait_exit() == 0
        assert "Traceback" not in child.text("stderr"), child.output()


@posix_only
async def test_listen_reconnects_after_the_server_restarts(make_server: ServerFactory) -> None:
    port = free_port()
    first = await make_server(port=port)
    connected = asyncio.Event()
    first.on_connect(lambda connection: connected.set())
    async with running("-m", "siyi_sdk", "-v", "listen", f"ws://127.0.0.1:{port}") as child:
        await wait_for(connected.wait(), STARTUP)
        await first.stop()
        await child.wait_line("siyi listen: the connection dropped; reconnecting")
        second = await make_server(port=port)
        reconnected = asyncio.Event()
        second.on_connect(lambda connection: reconnected.set())
        await wait_for(reconnected.wait(), STARTUP)
        await second.broadcast_event("player_joined", {"player_name": "Alex"})
        line = await child.wait_line('"player_joined"', "stdout")
        assert json.loads(line)["data"] == {"player_name": "Alex"}
        child.interrupt()
        assert await child.wait_exit() == 0
        assert "Traceback" not in child.text("stderr"), child.output()


async def test_serve_exits_2_when_the_port_is_taken(echo_server: ProtocolServer) -> None:
    code, stdout, child = await siyi("serve", "--port", str(echo_server.port))
    assert code == 2, child.output()
    assert stdout == ""
    assert f"siyi serve: cannot listen on 127.0.0.1:{echo_server.port}" in child.text("stderr")


async def test_call_exits_2_when_no_response_comes_in_time(make_server: ServerFactory) -> None:
    server = await make_server()
    release = asyncio.Event()

    @server.command("hang")
    async def hang(connection: Connection, params: dict[str, Any]) -> None:
        # A handler that outlives its deadline (the call's own 0.5 s, §9): the server cannot
        # answer 408 in time, so the client's own limit is what ends the call. (One that
        # stops at its deadline races its 408 against the client's timer.)
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    try:
        code, stdout, child = await siyi(
            "call", f"ws://127.0.0.1:{server.port}", "hang", "--timeout", "0.5"
        )
    finally:
        release.set()
    assert code == 2, child.output()
    assert stdout == ""
    assert "siyi call: no response to 'hang' within 0.5 s" in child.text("stderr")


async def test_serve_with_redis_runs_nodes_that_serve_as_one(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """Two `siyi serve --redis` processes: an event relayed by the demo game (a broadcast)
    from a client of one node reaches a client of the other."""
    args = ("serve", "--port", "0", "--redis", redis_server.url, "--redis-prefix", redis_prefix)
    async with (
        running("-m", "siyi_sdk", *args) as one,
        running("-m", "siyi_sdk", *args) as two,
    ):
        urls = []
        for child in (one, two):
            banner = await child.wait_line("serving the demo game on ws://", "stdout")
            assert f"one node of {redis_server.url}" in banner
            match = re.search(r"ws://127\.0\.0\.1:(\d+)", banner)
            assert match, banner
            urls.append(f"ws://127.0.0.1:{match.group(1)}")
        heard = Inbox()
        async with (
            ProtocolClient(urls[0], request_timeout=STARTUP) as alice,
            ProtocolClient(urls[1], request_timeout=STARTUP) as bob,
        ):
            bob.on_event(heard)
            await alice.send_event("player_joined", {"player_name": "Herobrine"})
            await heard.wait_count(1)
            assert heard.events[0].name == "player_joined"
            assert heard.data[0]["player_name"] == "Herobrine"


async def test_serve_refuses_a_bad_redis_url() -> None:
    code, _, child = await siyi("serve", "--port", "0", "--redis", "nonsense://x")
    assert code == 2, child.output()
    assert "siyi serve: --redis:" in child.text("stderr")


# call --stream -----------------------------------------------------------------------------------


@pytest.fixture
async def counting_server(make_server: ServerFactory) -> tuple[ProtocolServer, asyncio.Event]:
    """A server whose ``count`` streams 0..upto-1, then waits forever (``forever``: true)."""
    server = await make_server()
    closed = asyncio.Event()

    @server.command("count")
    async def count(connection: Connection, params: dict[str, Any]) -> AsyncIterator[int]:
        try:
            for n in range(int(params["upto"])):
                yield n
            if params.get("forever"):
                await asyncio.Event().wait()
        finally:
            closed.set()

    return server, closed


@pytest.mark.parametrize("scheme", ["ws", "http"])
async def test_call_stream_prints_each_item_as_a_json_line(
    counting_server: tuple[ProtocolServer, asyncio.Event], scheme: str
) -> None:
    server, _ = counting_server
    code, out, child = await siyi(
        "call", f"{scheme}://127.0.0.1:{server.port}", "count", '{"upto": 5}', "--stream"
    )
    assert code == 0, child.output()
    assert [json.loads(line) for line in out.splitlines()] == [0, 1, 2, 3, 4]


@posix_only
@pytest.mark.parametrize("scheme", ["ws", "http"])
async def test_ctrl_c_during_call_stream_closes_the_servers_generator(
    counting_server: tuple[ProtocolServer, asyncio.Event], scheme: str
) -> None:
    server, closed = counting_server
    url = f"{scheme}://127.0.0.1:{server.port}"
    params = '{"upto": 3, "forever": true}'
    async with running("-m", "siyi_sdk", "call", url, "count", params, "--stream") as child:
        await child.wait_line("2", "stdout")
        assert not closed.is_set()
        child.interrupt()
        assert await child.wait_exit() == 130
        await wait_for(closed.wait(), STARTUP)
