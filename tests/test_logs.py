"""Structured logs: each line about a call carries its command, request id and hashed session.

Real servers and clients on loopback sockets; the records are caught with pytest's `caplog`.
Every record checked must also not hold the session key itself anywhere (it is a bearer
credential): not in its message, its arguments, its extras or its traceback. The lines about a
handler's failure (it raised, ran past its deadline, was withdrawn by its sender) name the
transport that carried the request, over each of them; an upload's lines name the upload,
its session and its transport, and never hold a byte of the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

import pytest
from websockets.asyncio.client import connect

from siyi_sdk import (
    Connection,
    Event,
    HttpAdapter,
    ProtocolClient,
    ProtocolServer,
    Request,
    Response,
    StatusCode,
    StoredFile,
)
from siyi_sdk.logs import (
    COMMAND,
    EVENT,
    EVENT_ID,
    KEYS,
    REQUEST_ID,
    SESSION,
    TRANSPORT,
    UPLOAD_ID,
    JsonFormatter,
    call_extra,
    session_tag,
)
from siyi_sdk.pipeline import CallNext
from siyi_sdk.server import ServerCall
from tests.conftest import (
    WAIT,
    ClientFactory,
    ServerFactory,
    greeting_of,
    http_url,
    open_http_session,
    post_packet,
    recv_json,
    wait_for,
    wait_until,
    ws_url,
)
from tests.proxy import TcpProxy, sleep_until_accepting
from tests.test_cli import STARTUP, posix_only, running, siyi

Transport = Literal["websocket", "http"]
TRANSPORTS: tuple[Transport, ...] = ("websocket", "http")


def tag(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def records_with(caplog: pytest.LogCaptureFixture, key: str, value: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, key, None) == value]


def one_record(caplog: pytest.LogCaptureFixture, request_id: str) -> logging.LogRecord:
    found = records_with(caplog, REQUEST_ID, request_id)
    assert len(found) == 1, [r.getMessage() for r in caplog.records]
    return found[0]


def assert_no_key(record: logging.LogRecord, key: str) -> None:
    """The session key appears nowhere in the record, formatted either way."""
    assert key not in repr(vars(record))
    assert key not in record.getMessage()
    assert key not in logging.Formatter().format(record)
    assert key not in JsonFormatter().format(record)


def request_frame(rid: str, command: str, **fields: Any) -> str:
    return json.dumps({"id": rid, "type": "request", "command": command, **fields})


async def ask(
    server: ProtocolServer, transport: Transport, rid: str, command: str, **fields: Any
) -> tuple[dict[str, Any], str]:
    """One request over a raw WebSocket or one ``POST /general``: its answer, the session key."""
    if transport == "websocket":
        async with connect(ws_url(server)) as ws:
            key = (await greeting_of(ws))["session"]
            await ws.send(request_frame(rid, command, **fields))
            return await recv_json(ws), key
    packet = {"id": rid, "type": "request", "command": command, **fields}
    status, body, key = await post_packet(server, packet)
    assert status == 200
    assert key is not None
    return body, key


def assert_call_tags(
    record: logging.LogRecord, command: str, key: str, transport: Transport
) -> None:
    """The record names the call's command, its hashed session and what carried it."""
    assert getattr(record, COMMAND) == command
    assert getattr(record, SESSION) == tag(key)
    assert getattr(record, TRANSPORT) == transport
    assert_no_key(record, key)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="siyi_sdk")
    return caplog


# The server ------------------------------------------------------------------------------------


async def failing_server(make_server: ServerFactory, **kwargs: Any) -> ProtocolServer:
    server = await make_server(**kwargs)

    @server.command("boom_plain")
    def boom_plain(connection: Connection, params: dict[str, Any]) -> Any:
        raise RuntimeError("plain handler broke")

    @server.command("boom_async")
    async def boom_async(connection: Connection, params: dict[str, Any]) -> Any:
        raise RuntimeError("async handler broke")

    @server.command("boom_stream")
    async def boom_stream(connection: Connection, params: dict[str, Any]) -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("streaming handler broke")

    @server.command("echo")
    def echo(connection: Connection, params: dict[str, Any]) -> Any:
        return params

    return server


# Each way a handler runs (inline, in a task, as a stream), over each transport.
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("command", ["boom_plain", "boom_async", "boom_stream"])
async def test_a_handler_that_raises_logs_its_command_id_session_and_transport(
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    command: str,
    transport: Transport,
) -> None:
    server = await failing_server(make_server)
    rid = str(uuid.uuid4())
    answer, key = await ask(server, transport, rid, command)
    assert (answer["id"], answer["code"]) == (rid, StatusCode.INTERNAL_ERROR)
    record = one_record(caplog, rid)
    assert record.levelno == logging.ERROR
    assert record.name == "siyi_sdk.outcome"
    assert record.exc_info is not None
    assert_call_tags(record, command, key, transport)


async def test_an_http_call_is_logged_as_http_while_its_sessions_websocket_is_open(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The connection says "websocket" while one is attached: the line must name what
    # carried this request instead.
    server = await failing_server(make_server)
    async with connect(ws_url(server)) as ws:
        key = (await greeting_of(ws))["session"]
        packet = {"id": "beside-1", "type": "request", "command": "boom_plain"}
        status, body, _ = await post_packet(server, packet, key)
        assert (status, body["code"]) == (200, StatusCode.INTERNAL_ERROR)
        await ws.send(request_frame("beside-2", "boom_async"))
        assert (await recv_json(ws))["code"] == StatusCode.INTERNAL_ERROR
    assert_call_tags(one_record(caplog, "beside-1"), "boom_plain", key, "http")
    assert_call_tags(one_record(caplog, "beside-2"), "boom_async", key, "websocket")


async def test_an_event_handler_that_raises_logs_the_event_and_hashed_session(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server()
    handled = asyncio.Event()

    @server.on_event
    def broken(connection: Connection, event: Event) -> None:
        handled.set()
        raise ValueError("event handler broke")

    async with connect(ws_url(server)) as ws:
        key = (await greeting_of(ws))["session"]
        await ws.send(json.dumps({"id": "ev-1", "type": "event", "name": "ping", "data": {}}))
        await wait_for(handled.wait())
        # Events run in order: an answered request after it means its handler has returned.
        await ws.send(request_frame("after", "nothing"))
        await recv_json(ws)
    # Over HTTP the event's handlers have run when its POST is answered.
    status, _, http_key = await post_packet(
        server, {"id": "ev-2", "type": "event", "name": "pong", "data": {}}
    )
    assert status == 200
    assert http_key is not None
    [record] = records_with(caplog, EVENT_ID, "ev-1")
    assert (getattr(record, EVENT), getattr(record, SESSION)) == ("ping", tag(key))
    assert getattr(record, TRANSPORT) == "websocket"
    assert_no_key(record, key)
    [record] = records_with(caplog, EVENT_ID, "ev-2")
    assert (getattr(record, EVENT), getattr(record, SESSION)) == ("pong", tag(http_key))
    assert getattr(record, TRANSPORT) == "http"
    assert_no_key(record, http_key)


async def test_a_bad_frame_with_a_usable_id_logs_it_over_a_websocket(
    make_server: ServerFactory, debug_logs: pytest.LogCaptureFixture
) -> None:
    server = await failing_server(make_server)
    async with connect(ws_url(server)) as ws:
        key = (await greeting_of(ws))["session"]
        await ws.send(json.dumps({"id": "bad-1", "type": "request", "params": {}}))  # no command
        answer = await recv_json(ws)
    assert (answer["id"], answer["code"]) == ("bad-1", StatusCode.BAD_REQUEST)
    record = one_record(debug_logs, "bad-1")
    assert record.name == "siyi_sdk.peer"
    assert getattr(record, SESSION) == tag(key)
    assert getattr(record, TRANSPORT) == "websocket"
    assert_no_key(record, key)


async def test_a_bad_packet_with_a_usable_id_logs_it_over_http(
    make_server: ServerFactory, debug_logs: pytest.LogCaptureFixture
) -> None:
    server = await failing_server(make_server)
    status, _, key = await post_packet(server, {"id": "open", "type": "request", "command": "echo"})
    assert status == 200
    assert key is not None
    status, body, _ = await post_packet(server, {"id": "bad-2", "type": "request"}, key)
    assert (status, body["id"]) == (400, "bad-2")
    record = one_record(debug_logs, "bad-2")
    assert (getattr(record, SESSION), getattr(record, TRANSPORT)) == (tag(key), "http")
    assert_no_key(record, key)


class Blocker:
    """A handler that blocks until cancelled, and tells when it started and was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def block(self, connection: Connection, params: dict[str, Any]) -> Any:
        self.started.set()
        try:
            await asyncio.Event().wait()  # until cancelled: by the deadline, or by its sender
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def blocking_server(
    make_server: ServerFactory, **kwargs: Any
) -> tuple[ProtocolServer, Blocker]:
    server = await failing_server(make_server, **kwargs)
    blocker = Blocker()
    server.command("block")(blocker.block)
    return server, blocker


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("deadline", ["meta.timeout", "handler_timeout"])
async def test_a_handler_past_its_deadline_logs_the_408_with_its_transport(
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    transport: Transport,
    deadline: str,
) -> None:
    caplog.set_level(logging.INFO, logger="siyi_sdk")
    if deadline == "meta.timeout":  # the sender's budget
        server, blocker = await blocking_server(make_server)
        fields: dict[str, Any] = {"meta": {"timeout": 0.05}}
    else:  # the server's own
        server, blocker = await blocking_server(make_server, handler_timeout=0.05)
        fields = {}
    answer, key = await ask(server, transport, "slow-1", "block", **fields)
    assert blocker.cancelled.is_set()
    assert answer["code"] == StatusCode.TIMEOUT
    record = one_record(caplog, "slow-1")
    assert record.levelno == logging.INFO
    assert record.name == "siyi_sdk.calls"
    assert "408" in record.getMessage()
    assert_call_tags(record, "block", key, transport)


async def test_a_request_its_sender_withdraws_logs_the_499_over_a_websocket(
    make_server: ServerFactory, make_client: ClientFactory, debug_logs: pytest.LogCaptureFixture
) -> None:
    server, blocker = await blocking_server(make_server)
    client = await make_client(ws_url(server))
    request = Request.make("block")
    task = asyncio.create_task(client.send_packet(request))
    await wait_for(blocker.started.wait())
    task.cancel()  # the client sends siyi.cancel: the server cancels the handler, answers 499
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(blocker.cancelled.wait())
    record = await withdrawn(debug_logs, request.id)
    assert client.session.key is not None
    assert_call_tags(record, "block", client.session.key, "websocket")


async def test_a_request_its_sender_withdraws_logs_the_499_over_http(
    make_server: ServerFactory, debug_logs: pytest.LogCaptureFixture
) -> None:
    server, blocker = await blocking_server(make_server)
    async with HttpAdapter(http_url(server), request_timeout=WAIT) as http:
        await http.send_packet(Request.make("echo"))  # opens the session
        request = Request.make("block")
        task = asyncio.create_task(http.send_packet(request))
        await wait_for(blocker.started.wait())
        task.cancel()  # the adapter POSTs siyi.cancel on its own
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(blocker.cancelled.wait())
        record = await withdrawn(debug_logs, request.id)
        assert http.session.key is not None
        assert_call_tags(record, "block", http.session.key, "http")


async def withdrawn(caplog: pytest.LogCaptureFixture, rid: str) -> logging.LogRecord:
    """The server's line about the 499 of `rid` (the client logs about the same id too)."""

    def found() -> list[logging.LogRecord]:
        return [r for r in records_with(caplog, REQUEST_ID, rid) if r.name == "siyi_sdk.calls"]

    # Written as the handler's cancellation unwinds, in the handler's own task.
    await wait_until(lambda: bool(found()))
    [record] = found()
    assert record.levelno == logging.DEBUG
    assert "499" in record.getMessage()
    return record


async def rate_limited(make_server: ServerFactory) -> ProtocolServer:
    server = await failing_server(make_server)

    async def refuse_all(call: ServerCall, call_next: CallNext[ServerCall]) -> Response | None:
        if isinstance(call.packet, Request):
            return Response.fail(call.packet.id, "slow down", StatusCode.BUSY)
        return await call_next(call)

    server.use(refuse_all)
    return server


async def test_a_429_from_a_middleware_is_logged_over_a_websocket(
    make_server: ServerFactory, debug_logs: pytest.LogCaptureFixture
) -> None:
    server = await rate_limited(make_server)
    async with connect(ws_url(server)) as ws:
        key = (await greeting_of(ws))["session"]
        await ws.send(request_frame("limited-1", "echo"))
        answer = await recv_json(ws)
    assert answer["code"] == StatusCode.BUSY
    record = one_record(debug_logs, "limited-1")
    assert record.name == "siyi_sdk.server.dispatch"
    assert "429" in record.getMessage()
    assert getattr(record, COMMAND) == "echo"
    assert (getattr(record, SESSION), getattr(record, TRANSPORT)) == (tag(key), "websocket")
    assert_no_key(record, key)


async def test_a_429_from_a_middleware_is_logged_over_http(
    make_server: ServerFactory, debug_logs: pytest.LogCaptureFixture
) -> None:
    server = await rate_limited(make_server)
    status, body, key = await post_packet(
        server, {"id": "limited-2", "type": "request", "command": "echo"}
    )
    assert (status, body["code"]) == (200, StatusCode.BUSY)
    assert key is not None
    record = one_record(debug_logs, "limited-2")
    assert (getattr(record, SESSION), getattr(record, TRANSPORT)) == (tag(key), "http")
    assert_no_key(record, key)


async def test_a_call_that_logs_nothing_hashes_nothing(
    make_server: ServerFactory, debug_logs: pytest.LogCaptureFixture
) -> None:
    server = await failing_server(make_server)
    connections: list[Connection] = []

    @server.command("who")
    def who(connection: Connection, params: dict[str, Any]) -> Any:
        connections.append(connection)
        return None

    async with connect(ws_url(server)) as ws:
        await greeting_of(ws)
        await ws.send(request_frame("w", "who"))
        assert (await recv_json(ws))["code"] == 0
        [connection] = connections
        # The connect line (DEBUG) needed the tag: made then, once.
        assert connection.log_session is connection.log_session
        assert connection.log_session == tag(connection.session)
    plain = await make_server()
    answered: list[Connection] = []

    @plain.command("who")
    def who_plain(connection: Connection, params: dict[str, Any]) -> Any:
        answered.append(connection)
        return None

    debug_logs.set_level(logging.INFO, logger="siyi_sdk")
    async with connect(ws_url(plain)) as ws:
        await greeting_of(ws)
        await ws.send(request_frame("w", "who"))
        assert (await recv_json(ws))["code"] == 0
    # Nothing logged about this session at INFO: its key was never hashed.
    assert "_log_session" not in vars(answered[0])


# The client ------------------------------------------------------------------------------------


async def test_a_client_handler_that_raises_logs_the_clients_hashed_session(
    make_server: ServerFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server()
    connected: asyncio.Queue[Connection] = asyncio.Queue()
    server.on_connect(connected.put_nowait)
    client = await make_client(ws_url(server))

    @client.on_request
    def broken(request: Request) -> Response:
        raise RuntimeError("client handler broke")

    connection = await wait_for(connected.get())
    answer = await connection.send_request("ask_client")
    assert answer.code == StatusCode.INTERNAL_ERROR
    [record] = [r for r in caplog.records if getattr(r, COMMAND, None) == "ask_client"]
    assert getattr(record, REQUEST_ID) == answer.id
    assert_call_tags(record, "ask_client", connection.session, "websocket")


# Uploads ---------------------------------------------------------------------------------------

CONTENTS = b"the file's own bytes, never logged; " * 1000


def uploader(
    transport: Transport, port: int, key: str, **kwargs: Any
) -> ProtocolClient | HttpAdapter:
    """A client uploading over `transport` in the session of `key`; its packet channel closed."""
    client: ProtocolClient | HttpAdapter
    if transport == "websocket":
        client = ProtocolClient(f"ws://127.0.0.1:{port}", **kwargs)
    else:
        client = HttpAdapter(f"http://127.0.0.1:{port}", **kwargs)
    client.session.update(key, "the test")
    return client


def upload_records(
    caplog: pytest.LogCaptureFixture, upload_id: str, logger: str
) -> list[logging.LogRecord]:
    return [r for r in records_with(caplog, UPLOAD_ID, upload_id) if r.name == logger]


def assert_upload_tags(record: logging.LogRecord, key: str, transport: Transport) -> None:
    """The record names the upload's session (hashed) and transport, and holds none of its bytes."""
    assert getattr(record, SESSION) == tag(key)
    assert getattr(record, TRANSPORT) == transport
    assert_no_key(record, key)
    assert CONTENTS[:24].decode() not in JsonFormatter().format(record)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_uploads_lines_carry_its_id_session_and_transport(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture, transport: Transport
) -> None:
    caplog.set_level(logging.INFO, logger="siyi_sdk")
    server = await make_server()
    handled = asyncio.Event()

    @server.on_upload
    def broken(connection: Connection, stored: StoredFile) -> None:
        handled.set()
        raise RuntimeError("upload handler broke")

    key = await open_http_session(server)
    upload_id = str(uuid.uuid4())
    client = uploader(transport, server.port, key)
    try:
        await wait_for(client.upload(CONTENTS, name="notes.txt", upload_id=upload_id))
    finally:
        await client.close()
    # The handler runs in a task of its own: its line is written as its exception unwinds.
    await wait_for(handled.wait())
    [stored] = upload_records(caplog, upload_id, "siyi_sdk.server.uploads.receiver")
    assert "stored" in stored.getMessage()
    assert_upload_tags(stored, key, transport)
    [failed] = upload_records(caplog, upload_id, "siyi_sdk.outcome")
    assert (failed.levelno, getattr(failed, EVENT)) == (logging.ERROR, "upload")
    assert_upload_tags(failed, key, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cut_uploads_lines_carry_its_tags_on_both_sides(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture, transport: Transport
) -> None:
    caplog.set_level(logging.INFO, logger="siyi_sdk")
    server = await make_server()
    key = await open_http_session(server)
    upload_id = str(uuid.uuid4())
    data = CONTENTS * 600  # 21 MiB: far more than the sockets buffer, so the cut lands mid-way
    cut = False
    async with TcpProxy(server.port) as proxy:

        async def cut_once(sent: int, total: int) -> None:
            nonlocal cut
            if not cut and sent >= total // 3:
                cut = True

                async def cut_and_resume() -> None:
                    await proxy.cut()
                    await proxy.resume()

                # Shielded: over HTTP this runs in aiohttp's body writer, which the cut cancels.
                await asyncio.shield(asyncio.create_task(cut_and_resume()))

        client = uploader(transport, proxy.port, key, sleep=sleep_until_accepting(proxy))
        try:
            await wait_for(
                client.upload(data, name="big.txt", progress=cut_once, upload_id=upload_id), 30
            )
        finally:
            await client.close()
    assert cut
    # The client's line about the resume, and the server's about the part cut short (its
    # second part waited for the first to end: the line was written before the upload ended).
    resumed = upload_records(caplog, upload_id, "siyi_sdk.adapters.upload")
    assert resumed
    interrupted = [
        r
        for r in upload_records(caplog, upload_id, "siyi_sdk.server.uploads.receiver")
        if "interrupted" in r.getMessage()
    ]
    assert interrupted
    for record in (*resumed, *interrupted):
        assert_upload_tags(record, key, transport)


# The helpers and the formatter -----------------------------------------------------------------


class _Tagged:
    log_session = "abcdef012345"


def test_call_extra_names_what_it_knows_and_nothing_else() -> None:
    request = Request(id="r1", command="go")
    assert call_extra(request, _Tagged(), "http") == {
        COMMAND: "go",
        REQUEST_ID: "r1",
        SESSION: "abcdef012345",
        TRANSPORT: "http",
    }
    assert call_extra(Event(id="e1", name="tick")) == {EVENT: "tick", EVENT_ID: "e1"}
    assert call_extra(request_id="r2") == {REQUEST_ID: "r2"}
    assert call_extra(session=_Tagged(), upload_id="u1") == {
        SESSION: "abcdef012345",
        UPLOAD_ID: "u1",
    }
    assert call_extra() == {}
    assert set(call_extra(request, _Tagged(), "http")) <= set(KEYS)
    assert session_tag("secret") == tag("secret")
    assert len(session_tag("secret")) == 12


def test_the_json_formatter_writes_one_object_per_line_with_the_extras() -> None:
    logger = logging.getLogger("siyi_sdk.test")
    try:
        raise KeyError("inner")
    except KeyError:
        exc_info = sys.exc_info()
    record = logger.makeRecord(
        logger.name,
        logging.WARNING,
        __file__,
        1,
        "two\nlines: %s",
        ("argument",),
        exc_info,
        extra={**call_extra(Request(id="r1", command="go"), _Tagged(), "websocket"), "x": 1},
    )
    record.siyi_custom = object()  # a middleware's own key, not JSON: written as its str
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "WARNING"
    assert data["logger"] == "siyi_sdk.test"
    assert data["message"] == "two\nlines: argument"
    assert data[COMMAND] == "go"
    assert data[REQUEST_ID] == "r1"
    assert data[SESSION] == "abcdef012345"
    assert data[TRANSPORT] == "websocket"
    assert data["siyi_custom"].startswith("<object")
    assert "x" not in data  # only the siyi_* extras
    assert "KeyError: 'inner'" in data["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["time"])
    when = datetime.fromisoformat(data["time"])
    offset = when.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0
    assert abs(when.timestamp() - record.created) < 0.001
    plain = json.loads(
        JsonFormatter().format(logger.makeRecord("x", logging.INFO, "", 0, "hi", (), None))
    )
    assert set(plain) == {"time", "level", "logger", "message"}


# The command line ------------------------------------------------------------------------------


@posix_only
async def test_siyi_serve_log_format_json_writes_only_json_lines_on_stderr() -> None:
    args = (
        "-m",
        "siyi_sdk",
        "serve",
        "--port",
        "0",
        "--log-format",
        "json",
        "--log-level",
        "debug",
    )
    async with running(*args) as child:
        banner = await child.wait_line("serving the demo game on ws://", "stdout")
        match = re.search(r"ws://127\.0\.0\.1:(\d+)", banner)
        assert match, banner
        async with connect(f"ws://127.0.0.1:{match.group(1)}") as ws:
            key = (await greeting_of(ws))["session"]
            await ws.send(json.dumps({"id": "cli-bad", "type": "request"}))
            while (answer := await recv_json(ws, STARTUP)).get("id") != "cli-bad":
                pass  # the demo game asks each client for its status as it connects
            assert answer["code"] == StatusCode.BAD_REQUEST
        await child.wait_line('"cli-bad"')
        child.interrupt()
        assert await child.wait_exit() == 0
    lines = child.lines["stderr"]
    assert lines, child.output()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    [bad] = [r for r in records if r.get(REQUEST_ID) == "cli-bad"]
    assert (bad[SESSION], bad[TRANSPORT], bad["level"]) == (tag(key), "websocket", "DEBUG")
    assert any(r["message"] == "server stopped" for r in records)
    assert key not in child.text("stderr")


async def test_siyi_serve_log_format_json_says_why_it_cannot_start_in_json_too() -> None:
    code, _, child = await siyi(
        "serve", "--port", "0", "--log-format", "json", "--redis", "nonsense://x"
    )
    assert code == 2, child.output()
    [line] = child.lines["stderr"]
    record = json.loads(line)
    assert record["level"] == "ERROR"
    assert record["message"].startswith("siyi serve: --redis:")
