"""Client worker: the clients of one row, steered over stdin by the orchestrator.

``python -m benchmarks.clients load --row ROW --port N [--uvloop]`` opens one client (one
WebSocket, or one HTTP session) and answers:

- ``{"cmd": "warm", "requests": n, "concurrency": c}`` -> ``{"warmed": n}`` (checks the echo);
- ``{"cmd": "go", "requests": n, "concurrency": c}`` -> ``{"result": {...}}``: `c` workers
  each send requests one after another until `n` have been answered; the result has the
  wall time, req/s and the p50/p99 round-trip latency.

``python -m benchmarks.clients hold --row ROW --port N --count K [--uvloop]`` holds `K`
connections of the row's own client, each listening for the ``bcast`` event:

- ``{"cmd": "warm", "count": w}`` -> ``{"warmed": w}``: opens and closes `w` connections;
- ``{"cmd": "connect"}`` -> ``{"connected": k, "failed": f, "start": s, "end": s}``;
- ``{"cmd": "check"}`` -> ``{"open": k}``: connections still open;
- on its own, once every held connection has received broadcast `seq`:
  ``{"seq": seq, "received": k, "first": s, "last": s}`` with `time.monotonic()` receipt
  times, which are comparable across processes (CLOCK_MONOTONIC is system-wide on Linux).

``python -m benchmarks.clients answer --row siyi_client|socketio --port N [--uvloop]`` opens
one client that answers the server's ``echo`` requests (their params come back as the data)
and says ``{"ready": true, "key": k}``: `k` names it to any node of the cluster (siyi: its
session key; python-socketio: its sid). The server side times the round trips; this process
only answers.

``python -m benchmarks.clients stream --row siyi_client --port N [--uvloop]`` opens one
ProtocolClient to a siyi server, says ``{"ready": true, "default_window": w}`` (the window
``ProtocolClient.stream`` uses when given none) and answers:

- ``{"cmd": "go", "how": "stream", "items": n, "window": w|null}`` -> ``{"result": {...}}``:
  ``client.stream("items", {"count": n}, window=w)`` (null: the default window), consumed
  to the end; the clock runs from before the request until the last item is consumed;
- ``{"cmd": "go", "how": "events", "items": n}`` -> ``{"result": {...}}``: asks the server's
  ``events`` command to send `n` ``item`` events; the clock runs from before the request
  until the client's event handler has received the last one.

The result has the wall time, items/s and this process's CPU time; the order and the count
of the items are checked.

All stop on ``{"cmd": "quit"}`` or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

import aiohttp
import orjson

from .common import (
    ADMIN_KEY,
    HOST,
    PAYLOAD,
    StdinLines,
    emit,
    percentile,
    pin_from_env,
    raise_nofile_limit,
    run_worker,
)
from .rows import ROW_BY_NAME

EventSink = Callable[[Any], None]
"""Called with a broadcast's data when a held connection receives it."""

_TEXT = aiohttp.WSMsgType.TEXT
_ENDED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)
_MAX_MESSAGE = 4 * 1024 * 1024
_TIMEOUT = 30.0


class Client(Protocol):
    """One client of a row: what the load and hold modes need."""

    async def start(self) -> None: ...

    async def call(self) -> Any: ...

    @property
    def is_open(self) -> bool: ...

    async def close(self) -> None: ...


class Shared:
    """Per-process resources some rows share (raw aiohttp uses one ClientSession)."""

    def __init__(self, *, pool_limit: int = 100) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._pool_limit = pool_limit

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Requests: aiohttp's default pool of 100, as the siyi adapters' sessions have.
            # Holding: no limit, since a WebSocket keeps its pool slot for as long as it is open.
            connector = aiohttp.TCPConnector(limit=self._pool_limit)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class RawWs:
    """A plain aiohttp WebSocket: ids matched by hand, orjson, one reader task."""

    def __init__(self, port: int, shared: Shared, on_event: EventSink | None) -> None:
        self.url = f"ws://{HOST}:{port}"
        self.shared = shared
        self.on_event = on_event
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._ws = await self.shared.session().ws_connect(
            self.url, max_msg_size=_MAX_MESSAGE, autoping=True
        )
        self._reader = asyncio.create_task(self._read(self._ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        pending = self.pending
        try:
            while True:
                msg = await ws.receive()
                if msg.type is _TEXT:
                    obj = orjson.loads(msg.data)
                    kind = obj.get("type")
                    if kind == "response":
                        future = pending.pop(obj["id"], None)
                        if future is not None and not future.done():
                            future.set_result(obj)
                    elif kind == "event" and self.on_event and obj.get("name") == "bcast":
                        self.on_event(obj["data"])
                elif msg.type in _ENDED:
                    break
        finally:
            for future in pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the WebSocket closed"))

    async def call(self) -> Any:
        assert self._ws is not None
        rid = str(next(self._ids))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        frame = {"id": rid, "type": "request", "command": "echo", "params": PAYLOAD}
        await self._ws.send_frame(orjson.dumps(frame), _TEXT)
        answer = await future
        return answer["data"]

    @property
    def is_open(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class RawHttp:
    """Plain aiohttp ``ClientSession.post`` to the raw server's ``/general``, orjson both ways."""

    def __init__(self, port: int, shared: Shared, on_event: EventSink | None) -> None:
        self.url = f"http://{HOST}:{port}/general"
        self.shared = shared
        self._ids = itertools.count()
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}

    async def start(self) -> None:
        self.shared.session()

    async def call(self) -> Any:
        frame = {
            "id": str(next(self._ids)),
            "type": "request",
            "command": "echo",
            "params": PAYLOAD,
        }
        async with self.shared.session().post(
            self.url, data=orjson.dumps(frame), headers=self._headers
        ) as reply:
            body = await reply.read()
        return orjson.loads(body)["data"]

    @property
    def is_open(self) -> bool:
        return True

    async def close(self) -> None:
        pass


class SocketIo:
    """python-socketio's AsyncClient over its WebSocket transport; requests are ``call()``."""

    def __init__(self, port: int, shared: Shared, on_event: EventSink | None) -> None:
        import socketio

        self.url = f"http://{HOST}:{port}"
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        if on_event is not None:
            self.sio.on("bcast", on_event)

    async def start(self) -> None:
        await self.sio.connect(self.url, transports=["websocket"], wait_timeout=_TIMEOUT)

    async def call(self) -> Any:
        return await self.sio.call("echo", PAYLOAD, timeout=_TIMEOUT)

    @property
    def is_open(self) -> bool:
        return bool(self.sio.connected)

    async def close(self) -> None:
        await self.sio.disconnect()


class SiyiClient:
    """siyi-sdk's ProtocolClient; requests are ``send_request("echo", payload)``."""

    def __init__(self, port: int, shared: Shared, on_event: EventSink | None) -> None:
        from siyi_sdk import Event, ProtocolClient

        self.client = ProtocolClient(
            f"ws://{HOST}:{port}", request_timeout=_TIMEOUT, connect_timeout=_TIMEOUT
        )
        if on_event is not None:
            sink = on_event

            def deliver(event: Event) -> None:
                if event.name == "bcast":
                    sink(event.data)

            self.client.on_event(deliver)

    async def start(self) -> None:
        await self.client.start()
        if not self.client.is_connected:
            await self.client.close()
            raise ConnectionError(f"could not connect to {self.client.url}")

    async def call(self) -> Any:
        response = await self.client.send_request("echo", PAYLOAD)
        if not response.ok:
            raise RuntimeError(f"echo failed: {response.error}")
        return response.data

    @property
    def is_open(self) -> bool:
        return self.client.is_connected

    async def close(self) -> None:
        await self.client.disconnect()


class SiyiAdminClient(SiyiClient):
    """`SiyiClient` against the server with its dashboard on, and one viewer of its feed.

    The viewer is what a browser tab does: it opens the dashboard's WebSocket feed (with the
    dashboard key as a bearer), asks for the first page of the sessions table, and reads every
    message the server sends it (one a second, and the page's changes) while the load runs.
    """

    def __init__(self, port: int, shared: Shared, on_event: EventSink | None) -> None:
        super().__init__(port, shared, on_event)
        self.port = port
        self.viewed = 0
        self._viewer: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await super().start()
        self._http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        feed = await self._http.ws_connect(f"http://{HOST}:{self.port}/admin/feed")
        await feed.receive()  # the whole document, once
        await feed.send_str('{"sessions": {"query": "", "page": 0, "size": 50}}')
        self._viewer = asyncio.create_task(self._view(feed))

    async def _view(self, feed: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in feed:
            self.viewed += 1

    async def close(self) -> None:
        if self._viewer is not None:
            self._viewer.cancel()
        if self._http is not None:
            await self._http.close()
        await super().close()


class SiyiApiWs:
    """siyi-sdk's typed Api over a WebSocketAdapter; requests are ``api.echo(payload)``.

    The demo's `GameApi`: an `Api` subclass with a method per command, as a user's would be.
    """

    def __init__(self, port: int, shared: Shared, on_event: EventSink | None) -> None:
        from siyi_sdk import WebSocketAdapter
        from siyi_sdk.demo import GameApi

        self.adapter = WebSocketAdapter(
            f"ws://{HOST}:{port}", request_timeout=_TIMEOUT, connect_timeout=_TIMEOUT
        )
        self.api = GameApi(self.adapter)

    async def start(self) -> None:
        await self.adapter.start()
        if not self.adapter.is_connected:
            await self.adapter.close()
            raise ConnectionError(f"could not connect to {self.adapter.url}")

    async def call(self) -> Any:
        return await self.api.echo(PAYLOAD)

    @property
    def is_open(self) -> bool:
        return self.adapter.is_connected

    async def close(self) -> None:
        await self.adapter.close()


class SiyiApiHttp:
    """siyi-sdk's typed Api (the demo's `GameApi`) over an HttpAdapter: ``api.echo(payload)``."""

    def __init__(self, port: int, shared: Shared, on_event: EventSink | None) -> None:
        from siyi_sdk import HttpAdapter
        from siyi_sdk.demo import GameApi

        self.adapter = HttpAdapter(f"http://{HOST}:{port}", request_timeout=_TIMEOUT)
        self.api = GameApi(self.adapter)

    async def start(self) -> None:
        await self.adapter.start()

    async def call(self) -> Any:
        return await self.api.echo(PAYLOAD)

    @property
    def is_open(self) -> bool:
        return True

    async def close(self) -> None:
        await self.adapter.close()


class Answering(Protocol):
    """A client that answers the server's ``echo`` requests; `key` names it to the server."""

    async def start(self) -> None: ...

    @property
    def key(self) -> str: ...

    async def close(self) -> None: ...


class SiyiAnswering(SiyiClient):
    """A ProtocolClient whose request handler echoes; its key is its session key."""

    def __init__(self, port: int, shared: Shared) -> None:
        from siyi_sdk import Request, Response

        super().__init__(port, shared, None)

        def echo(request: Request) -> Response:
            return Response.success(request.id, request.params)

        self.client.on_request(echo)

    @property
    def key(self) -> str:
        key = self.client.session.key
        if key is None:
            raise RuntimeError("the server opened no session")
        return key


class SocketIoAnswering(SocketIo):
    """A python-socketio AsyncClient whose ``echo`` handler returns its data (the ack)."""

    def __init__(self, port: int, shared: Shared) -> None:
        super().__init__(port, shared, None)

        async def echo(data: Any) -> Any:
            return data

        self.sio.on("echo", echo)

    @property
    def key(self) -> str:
        sid = self.sio.get_sid()
        if not isinstance(sid, str):
            raise RuntimeError("no sid: not connected")
        return sid


class SiyiStreaming(SiyiClient):
    """A ProtocolClient that takes the server's small items as one stream or as events."""

    def __init__(self, port: int, shared: Shared) -> None:
        from siyi_sdk import Event

        super().__init__(port, shared, None)
        self._expected = 0
        self._received = 0
        self._last = 0.0
        self._all_in: asyncio.Future[None] | None = None

        def on_item(event: Event) -> None:
            all_in = self._all_in
            if event.name != "item" or all_in is None or all_in.done():
                return
            if event.data != {"n": self._received}:
                all_in.set_exception(
                    AssertionError(f"event {self._received} came as {event.data!r}")
                )
                return
            self._received += 1
            if self._received == self._expected:
                self._last = time.perf_counter()
                all_in.set_result(None)

        self.client.on_event(on_item)

    @property
    def default_window(self) -> int:
        """The window `ProtocolClient.stream` uses when given none."""
        import inspect

        from siyi_sdk import ProtocolClient

        window = inspect.signature(ProtocolClient.stream).parameters["window"].default
        return int(window)

    async def streamed(self, items: int, window: int | None) -> float:
        """Stream `items` items to the end: seconds from the request to the last item."""
        params = {"count": items}
        clock = time.perf_counter
        received = 0
        last = start = clock()
        stream = (
            self.client.stream("items", params)
            if window is None
            else self.client.stream("items", params, window=window)
        )
        async for item in stream:
            if item["n"] != received:
                raise AssertionError(f"item {received} came as {item!r}")
            received += 1
            if received == items:
                last = clock()
        if received != items:
            raise AssertionError(f"{received} of {items} items streamed")
        return last - start

    async def evented(self, items: int) -> float:
        """Have `items` events sent: seconds from the request to the last one's receipt."""
        self._expected, self._received = items, 0
        all_in = self._all_in = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        response = await self.client.send_request("events", {"count": items})
        if not response.ok or response.data != items:
            raise RuntimeError(f"events failed: {response.error or response.data}")
        # Sent before the response, in order on one WebSocket: the handler has them all.
        async with asyncio.timeout(_TIMEOUT):
            await all_in
        return self._last - start


ANSWERING: dict[str, Callable[[int, Shared], Answering]] = {
    "siyi_client": SiyiAnswering,
    "socketio": SocketIoAnswering,
}


ClientFactory = Callable[[int, Shared, EventSink | None], Client]

CLIENTS: dict[str, ClientFactory] = {
    "raw_ws": RawWs,
    "siyi_server": RawWs,  # the same frames; it ignores the session event siyi's server sends
    "raw_http": RawHttp,
    "socketio": SocketIo,
    "siyi_client": SiyiClient,
    "siyi_admin": SiyiAdminClient,
    "siyi_api_ws": SiyiApiWs,
    "siyi_api_http": SiyiApiHttp,
}
assert set(CLIENTS) == set(ROW_BY_NAME), "every row needs a client"


async def _drive(client: Client, requests: int, concurrency: int) -> dict[str, float]:
    """`concurrency` workers send requests back to back until `requests` were answered."""
    latencies: list[float] = []
    remaining = requests
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = clock()
            await client.call()
            latencies.append(clock() - t)

    cpu = time.process_time()
    start = clock()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, requests)))))
    elapsed = clock() - start
    cpu = time.process_time() - cpu
    latencies.sort()
    return {
        "requests": requests,
        "concurrency": concurrency,
        "elapsed": elapsed,
        "rps": requests / elapsed,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "cpu": cpu,
    }


async def load(row: str, port: int) -> None:
    shared = Shared()
    client = CLIENTS[row](port, shared, None)
    await client.start()
    emit({"ready": True})
    lines = StdinLines()
    try:
        while True:
            msg = await lines.next()
            cmd = msg.get("cmd")
            if cmd == "warm":
                echoed = await client.call()
                if echoed != PAYLOAD:
                    raise AssertionError(f"{row}: the echo came back as {echoed!r}")
                await _drive(client, msg["requests"], msg["concurrency"])
                emit({"warmed": msg["requests"]})
            elif cmd == "go":
                emit({"result": await _drive(client, msg["requests"], msg["concurrency"])})
            elif cmd == "quit":
                break
            else:
                emit({"error": f"unknown command {cmd!r}"})
    finally:
        await client.close()
        await shared.close()


async def answer(row: str, port: int) -> None:
    if row not in ANSWERING:
        raise ValueError(f"row {row!r} cannot answer server requests")
    shared = Shared()
    client = ANSWERING[row](port, shared)
    await client.start()
    emit({"ready": True, "key": client.key})
    lines = StdinLines()
    try:
        while True:
            msg = await lines.next()
            cmd = msg.get("cmd")
            if cmd == "quit":
                break
            emit({"error": f"unknown command {cmd!r}"})
    finally:
        await client.close()
        await shared.close()


async def stream(row: str, port: int) -> None:
    if row != "siyi_client":
        raise ValueError(f"row {row!r} has no streams: only siyi_client")
    shared = Shared()
    client = SiyiStreaming(port, shared)
    await client.start()
    emit({"ready": True, "default_window": client.default_window})
    lines = StdinLines()
    try:
        while True:
            msg = await lines.next()
            cmd = msg.get("cmd")
            if cmd == "go":
                items = int(msg["items"])
                cpu = time.process_time()
                if msg["how"] == "stream":
                    elapsed = await client.streamed(items, msg.get("window"))
                else:
                    elapsed = await client.evented(items)
                cpu = time.process_time() - cpu
                result = {"items": items, "elapsed": elapsed, "ips": items / elapsed, "cpu": cpu}
                emit({"result": result})
            elif cmd == "quit":
                break
            else:
                emit({"error": f"unknown command {cmd!r}"})
    finally:
        await client.close()
        await shared.close()


class Receipts:
    """Receipt times of broadcasts across the held connections of this process."""

    def __init__(self) -> None:
        self.expected = 0
        self.seen: dict[int, list[float]] = {}

    def __call__(self, data: Any) -> None:
        now = time.monotonic()
        seq = int(data["seq"])
        entry = self.seen.get(seq)
        if entry is None:
            entry = self.seen[seq] = [0, now, now]
        entry[0] += 1
        entry[2] = now
        if entry[0] == self.expected:
            emit({"seq": seq, "received": int(entry[0]), "first": entry[1], "last": entry[2]})


async def _open_many(
    row: str, port: int, shared: Shared, count: int, parallel: int, sink: EventSink | None
) -> tuple[list[Client], int]:
    semaphore = asyncio.Semaphore(parallel)
    opened: list[Client] = []
    failed = 0

    async def open_one() -> None:
        nonlocal failed
        async with semaphore:
            client = CLIENTS[row](port, shared, sink)
            try:
                async with asyncio.timeout(_TIMEOUT):
                    await client.start()
            except Exception as exc:
                failed += 1
                logging.getLogger(__name__).debug("connect failed: %r", exc)
                return
            opened.append(client)

    await asyncio.gather(*(open_one() for _ in range(count)))
    return opened, failed


async def _close_all(clients: list[Client], parallel: int) -> None:
    semaphore = asyncio.Semaphore(parallel)

    async def close_one(client: Client) -> None:
        async with semaphore:
            try:
                await client.close()
            except Exception as exc:
                logging.getLogger(__name__).debug("close failed: %r", exc)

    await asyncio.gather(*(close_one(c) for c in clients))


async def hold(row: str, port: int, count: int, parallel: int) -> None:
    shared = Shared(pool_limit=0)
    receipts = Receipts()
    held: list[Client] = []
    emit({"ready": True})
    lines = StdinLines()
    try:
        while True:
            msg = await lines.next()
            cmd = msg.get("cmd")
            if cmd == "warm":
                warm, _ = await _open_many(row, port, shared, msg["count"], parallel, None)
                await _close_all(warm, parallel)
                emit({"warmed": len(warm)})
            elif cmd == "connect":
                start = time.monotonic()
                held, failed = await _open_many(row, port, shared, count, parallel, receipts)
                end = time.monotonic()
                receipts.expected = len(held)
                emit({"connected": len(held), "failed": failed, "start": start, "end": end})
            elif cmd == "check":
                emit({"open": sum(1 for c in held if c.is_open)})
            elif cmd == "quit":
                break
            else:
                emit({"error": f"unknown command {cmd!r}"})
    finally:
        # No goodbye: closing thousands of connections one by one (python-socketio takes
        # seconds per thousand) measures nothing. The process exits now and the kernel closes
        # every socket; the server is stopped right after.
        logging.disable(logging.CRITICAL)


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clients")
    parser.add_argument("mode", choices=["load", "hold", "answer", "stream"])
    parser.add_argument("--row", choices=sorted(CLIENTS), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=1, help="hold: connections to hold")
    parser.add_argument("--parallel", type=int, default=50, help="hold: connects at once")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raise_nofile_limit()
    pin_from_env()
    if args.mode == "load":
        run_worker(load(args.row, args.port), use_uvloop=args.uvloop)
    if args.mode == "answer":
        run_worker(answer(args.row, args.port), use_uvloop=args.uvloop)
    if args.mode == "stream":
        run_worker(stream(args.row, args.port), use_uvloop=args.uvloop)
    run_worker(hold(args.row, args.port, args.count, args.parallel), use_uvloop=args.uvloop)


if __name__ == "__main__":
    main()
