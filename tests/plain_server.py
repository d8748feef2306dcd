"""A siyi server written with plain aiohttp, none of siyi's code: the conformance suite's foil.

It implements the wire contract (PROTOCOL.md) and the reference command set just far enough for
the suite, so that a test can prove the suite judges the wire and not our own server. Each
`Flaws` field breaks one rule on purpose, as a buggy implementation would, so that a test can
check the suite names the case of that rule and no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import WSMsgType, web

SESSION = "X-Siyi-Session"
LIMIT = 4 * 1024 * 1024
UPLOAD_LIMIT = 1024 * 1024
MAX_IN_FLIGHT = 1000
URL_SECRETS = {"key", "token", "access_token", "auth", "authorization"}
HEARTBEAT = 0.5
KEYS = {"key-alice": "alice", "key-bob": "bob"}
STREAMING = {"count"}
COMMANDS = (
    "echo",
    "fail",
    "crash",
    "slow",
    "was_cancelled",
    "bump",
    "runs",
    "count",
    "notify_me",
    "ask_me",
    "whoami",
    "recorded",
)


@dataclass(frozen=True)
class Flaws:
    """The rules this server breaks on purpose."""

    no_code_on_ok: bool = False
    """An ok Response without ``code`` (§2 says it is always sent)."""
    runs_repeats: bool = False
    """A repeated id runs again (§6 at most once)."""
    ignores_cancel: bool = False
    """``siyi.cancel`` is ignored (§10)."""
    loses_buffer_on_resume: bool = False
    """What was buffered for a session is lost when it reconnects (§7 replay)."""
    shares_sessions: bool = False
    """A session key is honoured whoever presents it (§7 ownership)."""
    keeps_session_on_close: bool = False
    """A WebSocket closed with 1000 leaves its session resumable (§7 End)."""
    no_in_flight_bound: bool = False
    """Requests in flight on one WebSocket are not bounded: none gets 429 (§4)."""
    accepts_key_in_query: bool = False
    """A key in the URL's query string is taken like the header (§7 Keys)."""


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Stream:
    acked: int = -1
    moved: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Session:
    key: str
    principal: str | None
    ws: web.WebSocketResponse | None = None
    buffer: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    answers: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    asked: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    streams: dict[str, Stream] = field(default_factory=dict)


@dataclass
class Slow:
    started: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    finished: bool = False


@dataclass
class Upload:
    owner: str | None
    name: str
    size: int
    data: bytearray = field(default_factory=bytearray)


def ok(packet_id: str | None, data: Any, flaws: Flaws) -> dict[str, Any]:
    answer = {"id": packet_id, "type": "response", "status": "ok", "code": 0, "data": data}
    if flaws.no_code_on_ok:
        del answer["code"]
    return answer


def error(packet_id: str | None, code: int, message: str) -> dict[str, Any]:
    return {"id": packet_id, "type": "response", "status": "error", "code": code, "error": message}


class Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse(text: str | bytes) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The packet, or the 400 Response that answers the frame."""
    try:
        packet = json.loads(text)
    except ValueError:
        return None, error(None, 400, "bad request: not JSON")
    if not isinstance(packet, dict):
        return None, error(None, 400, "bad request: not an object")
    packet_id = packet.get("id")
    if not isinstance(packet_id, str) or not 0 < len(packet_id) <= 128:
        return None, error(None, 400, "bad request: no usable id")
    kind = packet.get("type")
    if kind == "request":
        if not isinstance(packet.get("command"), str) or not packet["command"]:
            return None, error(packet_id, 400, "bad request: no command")
        if packet.get("params") is not None and not isinstance(packet["params"], dict):
            return None, error(packet_id, 400, "bad request: params must be an object")
    elif kind == "event":
        if not isinstance(packet.get("name"), str):
            return None, error(packet_id, 400, "bad request: no name")
    elif kind != "response":
        return None, error(packet_id, 400, "bad request: unknown type")
    return packet, None


class PlainServer:
    """The server: sessions, the reference commands, and the endpoints of PROTOCOL.md §1."""

    def __init__(self, flaws: Flaws = Flaws()) -> None:
        self.flaws = flaws
        self.sessions: dict[str, Session] = {}
        self.runs: dict[str, int] = {}
        self.slow: dict[str, Slow] = {}
        self.records: dict[str, list[Any]] = {}
        self.recorded = asyncio.Condition()
        self.uploads: dict[str, Upload] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.sockets: set[web.WebSocketResponse] = set()
        self.in_flight: dict[web.WebSocketResponse, int] = {}
        self.app = web.Application(client_max_size=LIMIT)
        self.app.router.add_get("/", self.websocket)
        self.app.router.add_post("/general", self.general)
        self.app.router.add_get("/events", self.events)
        self.app.router.add_get("/about", self.about)
        self.app.router.add_get("/asyncapi.json", self.asyncapi)
        self.app.router.add_post("/upload", self.upload_post)
        self.app.router.add_get("/upload", self.upload_websocket)
        self.app.router.add_get("/upload/{upload_id}", self.upload_status)
        self.app.on_shutdown.append(self._shutdown)
        self.port = 0

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve on a free loopback port for the block; yields the base URL."""
        runner = web.AppRunner(self.app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{self.port}"
        finally:
            await runner.cleanup()

    async def _shutdown(self, app: web.Application) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for ws in list(self.sockets):
            await ws.close(code=1001)

    def spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # Authentication and sessions ------------------------------------------------------------

    def principal(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        token = header[len("Bearer ") :] if header.startswith("Bearer ") else None
        in_url = [name for name in request.query if name.lower() in URL_SECRETS]
        if in_url and self.flaws.accepts_key_in_query:
            token = token or request.query[in_url[0]]
        elif in_url:
            raise Refused(401, "unauthorized: keys in the URL are refused")
        for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            if offered.strip().startswith("bearer."):
                token = offered.strip()[len("bearer.") :]
        if token is None or token not in KEYS:
            raise Refused(401, "unauthorized: missing or wrong key")
        return KEYS[token]

    def session(self, request: web.Request, principal: str) -> tuple[Session, bool]:
        """The caller's session and whether it existed."""
        key = request.headers.get(SESSION)
        session = self.sessions.get(key) if key else None
        if session is not None:
            if session.principal != principal and not self.flaws.shares_sessions:
                raise Refused(403, "forbidden: the session belongs to another principal")
            return session, True
        key = secrets.token_urlsafe(24)
        session = self.sessions[key] = Session(key, principal)
        return session, False

    @staticmethod
    def refusal(exc: Refused) -> web.Response:
        return web.json_response(error(None, exc.status, str(exc)), status=exc.status)

    async def deliver(self, session: Session, packet: dict[str, Any]) -> None:
        ws = session.ws
        if ws is not None and not ws.closed:
            try:
                await ws.send_str(json.dumps(packet))
                return
            except (ConnectionError, RuntimeError):
                pass
        session.buffer.append(packet)
        session.changed.set()

    # The packet WebSocket -------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        try:
            principal = self.principal(request)
            session, resumed = self.session(request, principal)
        except Refused as exc:
            return self.refusal(exc)
        ws = web.WebSocketResponse(
            heartbeat=HEARTBEAT, max_msg_size=LIMIT + 1, protocols=("siyi.v1",)
        )
        await ws.prepare(request)
        self.sockets.add(ws)
        old, session.ws = session.ws, ws
        if old is not None and not old.closed:
            await old.close(code=4001)
        await ws.send_str(
            json.dumps(
                {
                    "id": str(uuid.uuid4()),
                    "type": "event",
                    "name": "session",
                    "data": {
                        "session": session.key,
                        "protocol": 1,
                        "heartbeat_interval": HEARTBEAT,
                        "resumed": resumed,
                        "dropped": 0,
                    },
                }
            )
        )
        if resumed and self.flaws.loses_buffer_on_resume:
            session.buffer.clear()
        replay, session.buffer = session.buffer, []
        for packet in replay:
            await ws.send_str(json.dumps(packet))
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                taken, refused = parse(message.data)
                if refused is not None:
                    await ws.send_str(json.dumps(refused))
                elif taken is not None:
                    await self.take(session, taken, ws)
        finally:
            self.sockets.discard(ws)
            if session.ws is ws:
                session.ws = None
            if ws.close_code == 1000 and not self.flaws.keeps_session_on_close:
                self.sessions.pop(session.key, None)
        return ws

    async def take(
        self, session: Session, packet: dict[str, Any], ws: web.WebSocketResponse | None
    ) -> dict[str, Any] | None:
        """Handle a packet from the peer; over WebSocket a request is answered down `ws`."""
        kind = packet["type"]
        if kind == "response":
            waiting = session.asked.pop(packet["id"], None)
            if waiting is not None and not waiting.done():
                waiting.set_result(packet)
            return ok(packet["id"], None, self.flaws)
        if kind == "event":
            await self.on_event(session, packet)
            return ok(packet["id"], None, self.flaws)
        if ws is None:
            return await self.run_once(session, packet, None)
        running = self.in_flight.get(ws, 0)
        if running >= MAX_IN_FLIGHT and not self.flaws.no_in_flight_bound:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps(error(packet["id"], 429, "busy: too many in flight")))
            return None
        self.in_flight[ws] = running + 1

        async def answer() -> None:
            try:
                response = await self.run_once(session, packet, ws)
                if not ws.closed:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.send_str(json.dumps(response))
            finally:
                left = self.in_flight.get(ws, 1) - 1
                if left:
                    self.in_flight[ws] = left
                else:
                    self.in_flight.pop(ws, None)

        self.spawn(answer())
        return None

    async def on_event(self, session: Session, packet: dict[str, Any]) -> None:
        name, data = packet["name"], packet.get("data")
        target = data.get("id") if isinstance(data, dict) else None
        if name == "siyi.cancel" and not self.flaws.ignores_cancel:
            task = session.running.get(str(target))
            if task is not None:
                task.cancel()
        elif name == "siyi.ack" and isinstance(data, dict):
            stream = session.streams.get(str(target))
            if stream is not None and isinstance(data.get("seq"), int):
                stream.acked = max(stream.acked, data["seq"])
                stream.moved.set()
        elif name == "record" and isinstance(data, dict):
            async with self.recorded:
                self.records.setdefault(str(data.get("tag")), []).append(data.get("n"))
                self.recorded.notify_all()

    async def run_once(
        self, session: Session, packet: dict[str, Any], ws: web.WebSocketResponse | None
    ) -> dict[str, Any]:
        """Run a request at most once per session (unless flawed) and return its Response."""
        request_id = packet["id"]
        known = session.answers.get(request_id)
        if known is not None and not self.flaws.runs_repeats:
            return await asyncio.shield(known)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        session.answers[request_id] = future

        async def job() -> None:
            meta = packet.get("meta") or {}
            timeout = meta.get("timeout") if isinstance(meta, dict) else None
            window = meta.get("window") if isinstance(meta, dict) and ws is not None else None
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self.command(session, packet, window, deadline)
                response = ok(request_id, data, self.flaws)
            except asyncio.CancelledError:
                response = error(request_id, 499, "cancelled")
            except TimeoutError:
                response = error(request_id, 408, "timeout")
            except Failed as exc:
                response = error(request_id, exc.code, str(exc))
            except Exception:
                response = error(request_id, 500, "internal error: the handler raised")
            finally:
                session.running.pop(request_id, None)
            future.set_result(response)

        session.running[request_id] = self.spawn(job())
        return await asyncio.shield(future)

    # The reference commands -----------------------------------------------------------------

    async def command(
        self, session: Session, packet: dict[str, Any], window: Any, deadline: float | None
    ) -> Any:
        name, params = packet["command"], packet.get("params") or {}
        if name == "echo":
            return params
        if name == "fail":
            raise Failed(params.get("code", 1), params.get("message") or "failed")
        if name == "crash":
            raise RuntimeError("crash")
        if name in ("slow", "bump"):
            tag = params["tag"]
            self.runs[tag] = self.runs.get(tag, 0) + 1
            if name == "bump":
                return {"tag": tag, "runs": self.runs[tag]}
            slow = self.slow.setdefault(tag, Slow())
            slow.started.set()
            try:
                await asyncio.sleep(params["seconds"])
            except asyncio.CancelledError:
                slow.cancelled = True
                raise
            finally:
                slow.ended.set()
            slow.finished = True
            return {"slept": params["seconds"]}
        if name == "was_cancelled":
            slow = self.slow.setdefault(params["tag"], Slow())
            until = slow.started if params.get("until") == "started" else slow.ended
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(params.get("wait", 0)):
                    await until.wait()
            return {
                "started": slow.started.is_set(),
                "cancelled": slow.cancelled,
                "finished": slow.finished,
            }
        if name == "runs":
            return {"runs": self.runs.get(params["tag"], 0)}
        if name == "count":
            if window is None:
                items = list(range(params["n"]))
                if len(json.dumps(items, separators=(",", ":"))) > LIMIT:
                    raise Failed(413, "too large: ask for a stream")
                return items
            return await self.stream(session, packet["id"], params["n"], int(window))
        if name == "notify_me":
            await self.deliver(
                session,
                {
                    "id": str(uuid.uuid4()),
                    "type": "event",
                    "name": params["name"],
                    "data": params.get("data"),
                },
            )
            return {"sent": True}
        if name == "ask_me":
            asked_id = str(uuid.uuid4())
            wait = float(params.get("timeout", 10))
            if deadline is not None:  # what is left of this request's own budget (§9)
                wait = min(wait, deadline - asyncio.get_running_loop().time())
            waiting: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            session.asked[asked_id] = waiting
            await self.deliver(
                session,
                {
                    "id": asked_id,
                    "type": "request",
                    "command": params["command"],
                    "params": params.get("params"),
                    "meta": {"timeout": wait},
                },
            )
            async with asyncio.timeout(wait):
                answer = await waiting
            read = {k: answer.get(k) for k in ("status", "code", "data", "error")}
            if "code" not in answer:  # the seed's older form (§2)
                read["code"] = 0 if answer.get("status") == "ok" else 1
            return read
        if name == "whoami":
            return {"principal": session.principal}
        if name == "recorded":
            tag = params["tag"]

            def enough() -> bool:
                return len(self.records.get(tag, [])) >= int(params.get("count", 0))

            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(params.get("wait", 0)), self.recorded:
                    await self.recorded.wait_for(enough)
            return self.records.get(tag, [])
        raise Failed(404, f"unknown command: {name!r}")

    async def stream(self, session: Session, request_id: str, n: int, window: int) -> int:
        state = session.streams[request_id] = Stream()
        try:
            for seq in range(n):
                while seq - state.acked > window:
                    state.moved.clear()
                    await state.moved.wait()
                await self.deliver(session, chunk(request_id, seq, seq))
            return n
        finally:
            session.streams.pop(request_id, None)

    # HTTP -----------------------------------------------------------------------------------

    async def general(self, request: web.Request) -> web.StreamResponse:
        try:
            principal = self.principal(request)
        except Refused as exc:
            return self.refusal(exc)
        try:
            body = await request.read()  # over client_max_size (LIMIT): 413
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(error(None, 413, "too large"), status=413)
        packet, refused = parse(body)
        if refused is not None:
            return web.json_response(refused, status=400)
        assert packet is not None
        try:
            session, _ = self.session(request, principal)
        except Refused as exc:
            return self.refusal(exc)
        headers = {SESSION: session.key}
        accept = request.headers.get("Accept", "")
        if (
            packet["type"] == "request"
            and packet["command"] in STREAMING
            and ("application/x-ndjson" in accept)
        ):
            reply = web.StreamResponse(headers=headers)
            reply.content_type = "application/x-ndjson"
            await reply.prepare(request)
            n = (packet.get("params") or {}).get("n", 0)
            for seq in range(n):
                await reply.write(json.dumps(chunk(packet["id"], seq, seq)).encode() + b"\n")
            await reply.write(json.dumps(ok(packet["id"], n, self.flaws)).encode() + b"\n")
            await reply.write_eof()
            return reply
        response = await self.take(session, packet, None)
        return web.json_response(response, headers=headers)

    async def events(self, request: web.Request) -> web.Response:
        try:
            principal = self.principal(request)
            session, _ = self.session(request, principal)
        except Refused as exc:
            return self.refusal(exc)
        try:
            wait = min(max(float(request.query.get("wait", "0")), 0.0), 60.0)
        except ValueError:
            return web.json_response(error(None, 400, "wait is seconds"), status=400)
        after = request.query.get("after")

        def take() -> list[dict[str, Any]]:
            if after is None:
                taken, session.buffer = session.buffer, []
                return taken
            ids = [packet["id"] for packet in session.buffer]
            if after in ids:
                del session.buffer[: ids.index(after) + 1]
            return list(session.buffer)

        packets = take()
        if not packets and wait:
            session.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await session.changed.wait()
            packets = take()
        return web.json_response(packets, headers={SESSION: session.key})

    def authorized(self, request: web.Request) -> bool:
        try:
            self.principal(request)
        except Refused:
            return False
        return True

    async def about(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"protocol": 1, "version": "0.0-plain"}
        if self.authorized(request):
            body["commands"] = [
                {"name": name} | ({"stream": True} if name in STREAMING else {})
                for name in COMMANDS
            ]
        return web.json_response(body)

    async def asyncapi(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response(error(None, 401, "unauthorized"), status=401)
        return web.json_response(
            {
                "asyncapi": "3.0.0",
                "info": {"title": "plain", "version": "0.0-plain"},
                "x-siyi-protocol": 1,
            }
        )

    # Uploads --------------------------------------------------------------------------------

    def upload_of(self, upload_id: str, principal: str, name: str, size: int) -> Upload:
        upload = self.uploads.get(upload_id)
        if upload is None:
            upload = self.uploads[upload_id] = Upload(principal, name, size)
        elif upload.owner != principal:
            raise Refused(404, "no such upload")
        return upload

    def finish(self, upload_id: str, upload: Upload, digests: dict[str, str]) -> dict[str, Any]:
        data = bytes(upload.data)
        actual = {
            "md5": hashlib.md5(data, usedforsecurity=False).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        if any(actual[kind] != value for kind, value in digests.items()):
            del self.uploads[upload_id]
            raise Refused(400, "bad request: digest mismatch")
        return {"file_id": uuid.uuid4().hex, "name": upload.name, "size": upload.size, **actual}

    async def upload_post(self, request: web.Request) -> web.Response:
        try:
            principal = self.principal(request)
            upload_id = request.headers.get("X-Siyi-Upload-Id") or uuid.uuid4().hex
            name = unquote(request.headers.get("X-Siyi-File-Name", "upload"))
            length = int(request.headers.get("Content-Length", "0"))
            start, size = 0, length
            ranged = request.headers.get("Content-Range")
            if ranged:
                span, _, total = ranged.removeprefix("bytes ").partition("/")
                start, size = int(span.partition("-")[0]), int(total)
            if size > UPLOAD_LIMIT:
                raise Refused(413, "too large")
            upload = self.upload_of(upload_id, principal, name, size)
            if start != len(upload.data):
                raise Refused(400, f"resume from byte {len(upload.data)}")
            upload.data += await request.read()
            if len(upload.data) < upload.size:
                status = {"upload_id": upload_id, "received": len(upload.data), "size": size}
                return web.json_response(ok(None, status, Flaws()), status=202)
            digests = {
                kind: request.headers[header]
                for kind, header in (("md5", "X-Siyi-File-MD5"), ("sha256", "X-Siyi-File-SHA256"))
                if header in request.headers
            }
            return web.json_response(ok(None, self.finish(upload_id, upload, digests), Flaws()))
        except Refused as exc:
            return self.refusal(exc)

    async def upload_websocket(self, request: web.Request) -> web.StreamResponse:
        try:
            principal = self.principal(request)
        except Refused as exc:
            return self.refusal(exc)
        ws = web.WebSocketResponse(max_msg_size=LIMIT + 1)
        await ws.prepare(request)
        try:
            header = json.loads((await ws.receive()).data)
            if header["size"] > UPLOAD_LIMIT:
                raise Refused(413, "too large")
            upload_id = header.get("upload_id") or uuid.uuid4().hex
            upload = self.upload_of(upload_id, principal, header["name"], header["size"])
            while len(upload.data) < upload.size:
                message = await ws.receive()
                if message.type != WSMsgType.BINARY:
                    return ws
                upload.data += message.data
            digests = {k: header[k] for k in ("md5", "sha256") if header.get(k)}
            if not digests:
                last = json.loads((await ws.receive()).data)
                digests = {k: last[k] for k in ("md5", "sha256") if last.get(k)}
            answer = ok(None, self.finish(upload_id, upload, digests), Flaws())
        except Refused as exc:
            answer = error(None, exc.status, str(exc))
        await ws.send_str(json.dumps(answer))
        await ws.close()
        return ws

    async def upload_status(self, request: web.Request) -> web.Response:
        try:
            principal = self.principal(request)
            upload_id = request.match_info["upload_id"]
            upload = self.uploads.get(upload_id)
            if upload is None or upload.owner != principal:
                raise Refused(404, "no such upload")
        except Refused as exc:
            return self.refusal(exc)
        return web.json_response(
            {"upload_id": upload_id, "received": len(upload.data), "size": upload.size}
        )


def chunk(request_id: str, seq: int, item: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": "event",
        "name": "siyi.chunk",
        "data": {"id": request_id, "seq": seq, "data": item},
    }
