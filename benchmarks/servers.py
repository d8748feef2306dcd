"""Server worker: one echo server of one stack, steered over stdin by the orchestrator.

``python -m benchmarks.servers --stack raw|socketio|siyi|siyi_admin [--admin] [--heartbeat S]
[--redis URL --prefix P] [--uvloop]``

It binds 127.0.0.1 on a free port, prints ``{"port": N, "pid": P, ...}`` and then answers one
line per command read from stdin:

- ``{"cmd": "stats"}`` -> ``{"cpu": s, "rss": bytes, "conns": n}`` (its own CPU time, RSS and
  open WebSocket count);
- ``{"cmd": "gc"}`` -> ``{"gc": n}`` after a full collection;
- ``{"cmd": "broadcast", "seq": k}`` -> ``{"t0": s, "t1": s}``: one event to every connected
  client; `t0` is `time.monotonic()` just before the stack's broadcast call, `t1` just after;
- ``{"cmd": "call", "key": k, "warmup": w, "requests": n}`` -> ``{"called": n, "p50": s,
  "p99": s, ...}``: finds client `k` (siyi: a session key, wherever it is attached; socketio:
  a sid) and sends it `w` + `n` ``echo`` requests one after another, timing the last `n`
  (`perf_counter` around each call);
- ``{"cmd": "quit"}`` (or stdin closed) -> stops and exits.

Every stack echoes the same way: a request's params come back as the response's data.

- raw: plain aiohttp, the floor. WebSocket at ``/`` (ids matched by hand, orjson, answered
  inline by the reader) and ``POST /general`` (orjson in, orjson out).
- socketio: python-socketio ``AsyncServer(async_mode="aiohttp")``, an ``echo`` event whose
  return value is the ack.
- siyi: siyi-sdk's ``ProtocolServer`` with an ``echo`` route, default settings otherwise. For
  the stream phase it also has ``items`` (an ``async def`` generator: ``{"count": n}`` streams
  ``{"n": 0}`` .. ``{"n": n - 1}``, PROTOCOL.md §10) and ``events`` (``{"count": n}`` sends the
  same items to the caller as ``item`` events, one ``send_event`` after another, then answers
  `n`).

``siyi_admin`` (or ``siyi`` with ``--admin``) is the same siyi server with its dashboard on
(``admin_key=ADMIN_KEY``): the dispatcher records every request's command, outcome and latency,
and the figures are computed once a second for whatever viewer is connected.

With ``--redis URL`` the server is one node of several sharing that Redis: siyi with
``backplane=RedisBackplane(URL, prefix=P)``, python-socketio with
``client_manager=AsyncRedisManager(URL, channel=P)``; broadcasts then reach the clients of
every node of the same prefix (raw aiohttp has no such thing and refuses the option).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, NoReturn, Protocol

import orjson
from aiohttp import WSMsgType, web

from .common import (
    ADMIN_KEY,
    HOST,
    PAYLOAD,
    StdinLines,
    cpu_seconds,
    emit,
    percentile,
    pin_from_env,
    raise_nofile_limit,
    rss_bytes,
    run_worker,
)

_TEXT = WSMsgType.TEXT
_ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)
_MAX_MESSAGE = 4 * 1024 * 1024
_TIMEOUT = 30.0


class BenchServer(Protocol):
    """What the control loop needs of a stack's server."""

    async def start(self) -> int: ...

    def connections(self) -> int: ...

    async def broadcast(self, data: dict[str, Any]) -> None: ...

    async def find(self, key: str) -> object | None:
        """The client `key` as `request` takes it; None while it cannot be found."""
        ...

    async def request(self, peer: object) -> Any:
        """One ``echo`` request to `peer` (a `find` result), sent by the server: its answer."""
        ...

    async def stop(self) -> None: ...


async def _serve_app(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, backlog=4096)
    await site.start()
    for address in runner.addresses:
        if isinstance(address, tuple):
            return runner, int(address[1])
    raise RuntimeError("the server has no TCP address")


class RawServer:
    """Plain aiohttp: the floor of this stack."""

    def __init__(self, heartbeat: float | None, redis: str | None, prefix: str) -> None:
        if redis:
            raise ValueError("the raw aiohttp server has no backplane")
        self.heartbeat = heartbeat
        self.sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application(client_max_size=_MAX_MESSAGE)
        app.router.add_get("/", self._websocket)
        app.router.add_post("/general", self._general)
        self._runner, port = await _serve_app(app)
        return port

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=_MAX_MESSAGE)
        await ws.prepare(request)
        self.sockets.add(ws)
        try:
            while True:
                msg = await ws.receive()
                if msg.type is _TEXT:
                    obj = orjson.loads(msg.data)
                    if obj.get("type") == "request":
                        answer = {
                            "id": obj["id"],
                            "type": "response",
                            "status": "ok",
                            "code": 0,
                            "data": obj.get("params"),
                        }
                        await ws.send_frame(orjson.dumps(answer), _TEXT)
                elif msg.type in _ENDED:
                    break
        finally:
            self.sockets.discard(ws)
        return ws

    async def _general(self, request: web.Request) -> web.Response:
        obj = orjson.loads(await request.read())
        answer = {
            "id": obj["id"],
            "type": "response",
            "status": "ok",
            "code": 0,
            "data": obj.get("params"),
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    def connections(self) -> int:
        return len(self.sockets)

    async def broadcast(self, data: dict[str, Any]) -> None:
        event = {"id": str(uuid.uuid4()), "type": "event", "name": "bcast", "data": data}
        frame = orjson.dumps(event)  # encoded once
        for ws in list(self.sockets):
            if not ws.closed:
                # A bare try costs nothing in 3.11; contextlib.suppress() would, per socket.
                try:  # noqa: SIM105
                    await ws.send_frame(frame, _TEXT)
                except ConnectionError:
                    pass

    async def find(self, key: str) -> object | None:
        raise NotImplementedError("the raw aiohttp server sends no requests")

    async def request(self, peer: object) -> Any:
        raise NotImplementedError("the raw aiohttp server sends no requests")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class SocketIoServer:
    """python-socketio's AsyncServer on aiohttp."""

    def __init__(self, heartbeat: float | None, redis: str | None, prefix: str) -> None:
        import socketio

        interval = heartbeat or 25.0
        # Its pub/sub listener starts with the first client's connection, not before.
        manager = socketio.AsyncRedisManager(redis, channel=prefix) if redis else None
        self.sio = socketio.AsyncServer(
            client_manager=manager,
            async_mode="aiohttp",
            ping_interval=interval,
            ping_timeout=max(interval, 1.0),
            max_http_buffer_size=_MAX_MESSAGE,
        )
        self.sids: set[str] = set()
        self._runner: web.AppRunner | None = None

        async def echo(sid: str, data: Any) -> Any:
            return data

        def connect(sid: str, environ: Any, auth: Any = None) -> None:
            self.sids.add(sid)

        def disconnect(sid: str, *args: Any) -> None:
            self.sids.discard(sid)

        self.sio.on("echo", echo)
        self.sio.on("connect", connect)
        self.sio.on("disconnect", disconnect)

    async def start(self) -> int:
        app = web.Application(client_max_size=_MAX_MESSAGE)
        self.sio.attach(app)
        self._runner, port = await _serve_app(app)
        return port

    def connections(self) -> int:
        return len(self.sids)

    async def broadcast(self, data: dict[str, Any]) -> None:
        await self.sio.emit("bcast", data)

    async def find(self, key: str) -> object | None:
        # A sid: with a Redis manager, `call` reaches it on whichever node it is connected to.
        return key

    async def request(self, peer: object) -> Any:
        assert isinstance(peer, str)
        return await self.sio.call("echo", PAYLOAD, to=peer, timeout=_TIMEOUT)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class SiyiServer:
    """siyi-sdk's ProtocolServer with an ``echo`` route."""

    admin = False
    """True: the dashboard is on (`SiyiAdminServer`, ``--admin``)."""

    def __init__(self, heartbeat: float | None, redis: str | None, prefix: str) -> None:
        from siyi_sdk import Connection, ProtocolServer

        options: dict[str, Any] = {"admin_key": ADMIN_KEY} if self.admin else {}
        if redis:
            from siyi_sdk import RedisBackplane

            self.server = ProtocolServer(
                HOST,
                0,
                heartbeat_interval=heartbeat,
                shutdown_timeout=1.0,
                backplane=RedisBackplane(redis, prefix=prefix),
                **options,
            )
        else:
            self.server = ProtocolServer(
                HOST, 0, heartbeat_interval=heartbeat, shutdown_timeout=1.0, **options
            )

        # A plain function, like the raw rows' inline echo: a handler that never waits. It
        # takes the server's flat path (`Dispatcher.answer`: no task, answered as it is read);
        # an `async def` one would take a task per request (started eagerly on 3.12+).
        @self.server.command("echo")
        def echo(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
            return params

        # The stream phase: the same small items as one stream, or as as many events.
        @self.server.command("items")
        async def items(
            connection: Connection, params: dict[str, Any]
        ) -> AsyncIterator[dict[str, int]]:
            for n in range(int(params["count"])):
                yield {"n": n}

        @self.server.command("events")
        async def events(connection: Connection, params: dict[str, Any]) -> int:
            count = int(params["count"])
            for n in range(count):
                await connection.send_event("item", {"n": n})
            return count

    async def start(self) -> int:
        await self.server.start_serving()
        return self.server.port

    def connections(self) -> int:
        return len(self.server.connections)

    async def broadcast(self, data: dict[str, Any]) -> None:
        await self.server.broadcast_event("bcast", data)

    async def find(self, key: str) -> object | None:
        return await self.server.find_session(key)

    async def request(self, peer: object) -> Any:
        from siyi_sdk import Connection

        assert isinstance(peer, Connection)
        response = await self.server.send_request(peer, "echo", PAYLOAD, timeout=_TIMEOUT)
        if not response.ok:
            raise RuntimeError(f"echo failed: {response.error}")
        return response.data

    async def stop(self) -> None:
        await self.server.stop()


class SiyiAdminServer(SiyiServer):
    """The same, with its dashboard on (a viewer connects from the ``siyi_admin`` row's client)."""

    admin = True


STACKS: dict[str, type[RawServer] | type[SocketIoServer] | type[SiyiServer]] = {
    "raw": RawServer,
    "socketio": SocketIoServer,
    "siyi": SiyiServer,
    "siyi_admin": SiyiAdminServer,
}


async def _find(server: BenchServer, key: str, timeout: float) -> object:
    """`server.find(key)`, again until found: a node may learn of a session a moment late."""
    deadline = time.monotonic() + timeout
    while True:
        peer = await server.find(key)
        if peer is not None:
            return peer
        if time.monotonic() > deadline:
            raise LookupError(f"client {key!r} not found within {timeout:g} s")
        await asyncio.sleep(0.02)


async def _call(server: BenchServer, key: str, warmup: int, requests: int) -> dict[str, Any]:
    """`warmup` + `requests` sequential echo requests from the server to client `key`."""
    peer = await _find(server, key, 10.0)
    echoed = await server.request(peer)
    if echoed != PAYLOAD:
        raise AssertionError(f"the echo came back as {echoed!r}")
    for _ in range(warmup):
        await server.request(peer)
    clock = time.perf_counter
    latencies: list[float] = []
    cpu = time.process_time()
    start = clock()
    for _ in range(requests):
        t = clock()
        await server.request(peer)
        latencies.append(clock() - t)
    elapsed = clock() - start
    cpu = time.process_time() - cpu
    latencies.sort()
    return {
        "called": requests,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "rps": requests / elapsed,
        "cpu": cpu,
    }


async def serve(stack: str, heartbeat: float | None, redis: str | None, prefix: str) -> None:
    server: BenchServer = STACKS[stack](heartbeat, redis, prefix)
    port = await server.start()
    hello: dict[str, Any] = {
        "port": port,
        "pid": os.getpid(),
        "loop": type(asyncio.get_running_loop()).__module__,
    }
    if stack == "siyi":
        # Which copy of the package is measured (PYTHONPATH may point at a scratch copy).
        hello["siyi_sdk"] = sys.modules["siyi_sdk"].__file__
    emit(hello)
    lines = StdinLines()
    try:
        while True:
            msg = await lines.next()
            cmd = msg.get("cmd")
            if cmd == "stats":
                emit({"cpu": cpu_seconds(), "rss": rss_bytes(), "conns": server.connections()})
            elif cmd == "gc":
                emit({"gc": gc.collect()})
            elif cmd == "broadcast":
                data = {"seq": msg["seq"], **PAYLOAD}
                t0 = time.monotonic()
                await server.broadcast(data)
                t1 = time.monotonic()
                emit({"t0": t0, "t1": t1})
            elif cmd == "call":
                emit(await _call(server, msg["key"], msg["warmup"], msg["requests"]))
            elif cmd == "quit":
                break
            else:
                emit({"error": f"unknown command {cmd!r}"})
    finally:
        # Everything is measured: what the teardown of thousands of connections logs (some
        # servers complain about every socket their clients dropped) is noise.
        logging.disable(logging.CRITICAL)
        try:
            async with asyncio.timeout(10):
                await server.stop()
        except TimeoutError:
            logging.getLogger(__name__).warning("%s server: stop timed out", stack)


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.servers")
    parser.add_argument("--stack", choices=sorted(STACKS), required=True)
    parser.add_argument("--heartbeat", type=float, default=30.0, help="seconds; 0 turns it off")
    parser.add_argument("--redis", help="a Redis URL: be one node of several sharing it")
    parser.add_argument("--prefix", default="bench", help="with --redis: the nodes' namespace")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument(
        "--admin", action="store_true", help="siyi: with its dashboard on (as --stack siyi_admin)"
    )
    args = parser.parse_args(argv)
    if args.admin:
        if args.stack != "siyi":
            parser.error("--admin is for --stack siyi")
        args.stack = "siyi_admin"
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raise_nofile_limit()
    pin_from_env()
    run_worker(
        serve(args.stack, args.heartbeat or None, args.redis, args.prefix), use_uvloop=args.uvloop
    )


if __name__ == "__main__":
    main()
