"""The cases of the conformance suite, one or more per rule of PROTOCOL.md §1–§11.

Each case talks to the server with raw JSON (`probe`) and the reference command set that the
README documents (``echo``, ``fail``, ``crash``, ``slow``, ``was_cancelled``, ``bump``,
``runs``, ``count``, ``notify_me``, ``ask_me``, ``whoami``, ``recorded`` and the ``record``
event). A case returns when the server follows its rule and raises `CaseFailedError` with a
one-line reason when it does not.

Why one module of about 1,200 lines: it is a list of independent cases, each a short
function under its `case` name, in the order of PROTOCOL.md's sections; a reader checks a rule
by reading its case, and nothing in one case depends on another.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from .probe import (
    CaseFailedError,
    CaseSkippedError,
    HttpAnswer,
    Socket,
    Target,
    ack_packet,
    cancel_packet,
    check,
    request_packet,
    short,
)
from .registry import case

__all__ = ["REFERENCE_COMMANDS", "REFERENCE_EVENTS"]

REFERENCE_COMMANDS = (
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
"""The commands a server must provide to be tested (the README describes each)."""

REFERENCE_EVENTS = ("record",)
"""The events a server must take to be tested."""

NOTE = "conformance.note"
"""The name of the events the suite has ``notify_me`` send."""

SLOW = 30.0
"""How long a ``slow`` call that is meant to be cut short asks for, in seconds."""


# Checks ---------------------------------------------------------------------------------------


def is_int(value: object) -> bool:
    """True for a JSON integer (not a boolean, which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def code_of(response: dict[str, Any], what: str, *, strict: bool) -> Any:
    """The Response's code; without one, what §2 says a peer reads (0 ok, 1 error).

    Only the cases that judge §2's "always sent" are `strict`: the others read an answer as a
    tolerant peer would, so that one missing field fails the case about it, not every case.
    """
    if "code" in response:
        return response["code"]
    check(not strict, f"{what}: the Response has no 'code': {short(response)}")
    return 0 if response.get("status") == "ok" else 1


def expect_ok(response: dict[str, Any], what: str, *, strict: bool = False) -> Any:
    """Check an ok Response (``status`` ok, ``code`` the integer 0); its ``data``."""
    check(
        response.get("type") == "response",
        f"{what}: not a Response: {short(response)}",
    )
    check(
        response.get("status") == "ok",
        f"{what}: status {response.get('status')!r}, not 'ok': {short(response)}",
    )
    code = code_of(response, what, strict=strict)
    check(is_int(code) and code == 0, f"{what}: an ok Response has code {code!r}, not 0")
    return response.get("data")


def expect_error(response: dict[str, Any], code: int, what: str, *, strict: bool = False) -> None:
    """Check an error Response with `code` and a message."""
    check(
        response.get("type") == "response",
        f"{what}: not a Response: {short(response)}",
    )
    check(
        response.get("status") == "error",
        f"{what}: status {response.get('status')!r}, not 'error': {short(response)}",
    )
    got = code_of(response, what, strict=strict)
    check(
        is_int(got) and got == code,
        f"{what}: code {got!r}, expected {code}: {short(response)}",
    )
    check(
        isinstance(response.get("error"), str) and response["error"],
        f"{what}: an error Response without an 'error' message: {short(response)}",
    )


def expect_http(answer: HttpAnswer, status: int, what: str) -> dict[str, Any]:
    """Check an HTTP status and a Response body; the body."""
    check(
        answer.status == status,
        f"{what}: HTTP {answer.status}, expected {status}: {answer.body[:160]!r}",
    )
    body = answer.json()
    check(isinstance(body, dict), f"{what}: the body is not a JSON object: {short(body)}")
    assert isinstance(body, dict)
    return body


@contextlib.asynccontextmanager
async def opened(t: Target, **kwargs: Any) -> AsyncIterator[Socket]:
    """A packet WebSocket for the block; closed (1000: the session ends) after it."""
    sock = await t.socket(**kwargs)
    try:
        yield sock
    finally:
        if not sock.ws.closed:
            with contextlib.suppress(Exception):
                await sock.close()


async def closes_alone(sock: Socket, other: Socket, code: int, what: str) -> None:
    """`sock` closes with `code` for what it was sent (`what`); `other` still answers (§4)."""
    closed = await sock.closed()
    check(closed == code, f"{what} closed the WebSocket with {closed}, not {code}")
    expect_ok(await other.call("echo", {}), f"another connection after the {code}")


async def refused_upgrade(t: Target, **kwargs: Any) -> int:
    """The HTTP status that refused a WebSocket upgrade.

    Raises:
        CaseFailedError: the upgrade was accepted.
    """
    try:
        sock = await t.socket(greeting=False, **kwargs)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await sock.close()
    raise CaseFailedError("the WebSocket upgrade was accepted")


async def session_of(t: Target, *, key: Any = None) -> str:
    """A new session opened with ``POST /general`` (its ``X-Siyi-Session``)."""
    extra = {} if key is None else {"key": key}
    answer = await t.post(request_packet("echo", {}), **extra)
    expect_ok(expect_http(answer, 200, "POST /general echo"), "POST /general echo")
    session = answer.session
    check(session, "POST /general answered without an X-Siyi-Session header")
    assert session is not None
    return session


async def poll(
    t: Target, session: str, *, wait: float = 0, after: str | None = None
) -> list[dict[str, Any]]:
    """``GET /events`` for `session`: the packets it returned (checked: a JSON array)."""
    query = f"?wait={wait:g}" + ("" if after is None else f"&after={quote(after)}")
    answer = await t.get("/events" + query, session=session)
    check(
        answer.status == 200,
        f"GET /events: HTTP {answer.status}: {answer.body[:160]!r}",
    )
    packets = answer.json()
    check(isinstance(packets, list), f"GET /events did not answer an array: {short(packets)}")
    assert isinstance(packets, list)
    return packets


def notes(packets: list[dict[str, Any]], nonce: str) -> list[dict[str, Any]]:
    """The ``notify_me`` events of `nonce` among `packets`, in order."""
    return [
        p
        for p in packets
        if isinstance(p, dict)
        and p.get("type") == "event"
        and p.get("name") == NOTE
        and isinstance(p.get("data"), dict)
        and p["data"].get("nonce") == nonce
    ]


async def runs(t: Target, tag: str) -> int:
    """How many times the reference server ran a request tagged `tag`."""
    data = expect_ok(await t.call("runs", {"tag": tag}), "runs")
    check(isinstance(data, dict) and is_int(data.get("runs")), f"runs answered {short(data)}")
    return int(data["runs"])


async def slow_state(t: Target, tag: str, until: str = "ended") -> dict[str, Any]:
    """``was_cancelled``: the state of the ``slow`` run `tag`, waiting until it `until`."""
    data = expect_ok(
        await t.call("was_cancelled", {"tag": tag, "until": until, "wait": t.timeout}),
        "was_cancelled",
    )
    check(isinstance(data, dict), f"was_cancelled answered {short(data)}")
    assert isinstance(data, dict)
    return data


def needs_key(t: Target) -> str:
    """The target's key.

    Raises:
        CaseSkippedError: it has none.
    """
    if not t.key:
        raise CaseSkippedError("needs a server with keys (--key)")
    return t.key


def chunks_of(request_id: str) -> Any:
    """A match for the ``siyi.chunk`` events of `request_id`."""
    return lambda p: (
        p.get("type") == "event"
        and p.get("name") == "siyi.chunk"
        and isinstance(p.get("data"), dict)
        and p["data"].get("id") == request_id
    )


# §1 Endpoints ---------------------------------------------------------------------------------


@case("s1.about_describes_server", "GET /about: protocol is the integer 1, version a string (§1)")
async def about_describes_server(t: Target) -> None:
    answer = await t.get("/about")
    check(answer.status == 200, f"GET /about: HTTP {answer.status}")
    about = answer.json()
    check(isinstance(about, dict), f"GET /about is not an object: {short(about)}")
    check(
        is_int(about.get("protocol")) and about["protocol"] == 1,
        f"'protocol' is {about.get('protocol')!r}, not the integer 1",
    )
    check(isinstance(about.get("version"), str), f"'version' is {about.get('version')!r}")


@case("s1.reference_commands_listed", "/about lists the reference command set (§1, README)")
async def reference_commands_listed(t: Target) -> None:
    about = (await t.get("/about")).json()
    commands = about.get("commands") if isinstance(about, dict) else None
    check(isinstance(commands, list), f"/about has no 'commands' list: {short(about)}")
    assert isinstance(commands, list)
    names = {c.get("name") for c in commands if isinstance(c, dict)}
    missing = [name for name in REFERENCE_COMMANDS if name not in names]
    check(not missing, f"/about does not list {', '.join(missing)}")


# §2 Packets -----------------------------------------------------------------------------------


@case("s2.response_has_code", "an ok Response carries its id, status ok and the integer code 0")
async def response_has_code(t: Target) -> None:
    params = {"text": "hello", "nested": {"list": [1, 2.5, None, True]}}
    async with opened(t) as sock:
        request_id = await sock.request("echo", params)
        response = await sock.response(request_id)
    check(response.get("id") == request_id, "the Response does not carry the request's id")
    data = expect_ok(response, "echo over WebSocket", strict=True)
    check(data == params, f"echo answered {short(data)}, not its params")


@case("s2.error_response_has_code", "an error Response carries its code and a message (§2)")
async def error_response_has_code(t: Target) -> None:
    async with opened(t) as sock:
        response = await sock.call("fail", {"code": 1234, "message": "as asked"})
    expect_error(response, 1234, "fail over WebSocket", strict=True)


@case("s2.http_response_has_code", "POST /general: HTTP 200 and a Response with its code (§2, §3)")
async def http_response_has_code(t: Target) -> None:
    answer = await t.post(request_packet("echo", {"x": 1}))
    data = expect_ok(expect_http(answer, 200, "POST echo"), "POST echo", strict=True)
    check(data == {"x": 1}, f"echo answered {short(data)}")
    answer = await t.post(request_packet("fail", {"code": 1234, "message": "as asked"}))
    expect_error(expect_http(answer, 200, "POST fail"), 1234, "POST fail", strict=True)


@case("s2.unknown_fields_ignored", "unknown packet fields and meta keys are ignored (§2)")
async def unknown_fields_ignored(t: Target) -> None:
    packet = request_packet("echo", {"a": 1}, meta={"x_future_key": {"deep": 1}})
    packet["x_future_field"] = [1, 2, 3]
    async with opened(t) as sock:
        await sock.send(packet)
        data = expect_ok(await sock.response(packet["id"]), "echo with unknown fields")
    check(data == {"a": 1}, f"echo answered {short(data)}")


@case("s2.params_optional", "a Request's params may be absent or null (§2)")
async def params_optional(t: Target) -> None:
    async with opened(t) as sock:
        expect_ok(await sock.call("echo"), "echo without params")
        packet = request_packet("echo")
        packet["params"] = None
        await sock.send(packet)
        expect_ok(await sock.response(packet["id"]), "echo with null params")


@case("s2.server_sends_requests", "the server sends a Request and reads the peer's Response (§2)")
async def server_sends_requests(t: Target) -> None:
    nonce = uuid.uuid4().hex
    async with opened(t) as sock:
        asked = await sock.request(
            "ask_me", {"command": "conformance.question", "params": {"nonce": nonce}}
        )
        question = await sock.expect(
            lambda p: p.get("type") == "request" and p.get("command") == "conformance.question",
            "Request 'conformance.question' from the server",
        )
        check(question.get("params") == {"nonce": nonce}, f"its params: {short(question)}")
        await sock.send(
            {
                "id": question.get("id"),
                "type": "response",
                "status": "ok",
                "code": 0,
                "data": {"answer": nonce},
            }
        )
        data = expect_ok(await sock.response(asked), "ask_me")
    check(
        isinstance(data, dict) and data.get("data") == {"answer": nonce},
        f"ask_me did not get the answer: {short(data)}",
    )


# §3 Status codes ------------------------------------------------------------------------------


@case("s3.unknown_command_404", "a command without a handler gets 404, on both transports")
async def unknown_command_404(t: Target) -> None:
    name = f"no_such_command_{uuid.uuid4().hex[:8]}"
    async with opened(t) as sock:
        expect_error(await sock.call(name), 404, "unknown command over WebSocket")
    answer = await t.post(request_packet(name))
    expect_error(expect_http(answer, 200, "unknown command"), 404, "unknown command over HTTP")


@case("s3.failed_is_1", "a handler's failure without a code is 1 (FAILED)")
async def failed_is_1(t: Target) -> None:
    expect_error(await t.call("fail", {"message": "no code"}), 1, "fail without a code")


@case("s3.handler_error_500", "a handler that raises gets 500, without a traceback (§3)")
async def handler_error_500(t: Target) -> None:
    response = await t.call("crash")
    expect_error(response, 500, "crash")
    check("Traceback" not in str(response.get("error")), "the 500 message leaks a traceback")


# §4 Bad input ---------------------------------------------------------------------------------


@case("s4.malformed_json", "a frame that is not JSON gets 400 with id null; the socket stays")
async def malformed_json(t: Target) -> None:
    async with opened(t) as sock:
        await sock.send('{"id": "x", "type": "request", nope')
        expect_error(await sock.response(None), 400, "malformed JSON")
        expect_ok(await sock.call("echo", {}), "echo after a malformed frame")


@case("s4.not_an_object", "a JSON frame that is not an object gets 400 with id null (§4)")
async def not_an_object(t: Target) -> None:
    async with opened(t) as sock:
        for frame in ("[1, 2]", '"text"', "42", "null"):
            await sock.send(frame)
            expect_error(await sock.response(None), 400, f"the frame {frame}")
        expect_ok(await sock.call("echo", {}), "echo after bad frames")


@case("s4.no_usable_id", "a missing, empty, too long or non-string id is answered with id null")
async def no_usable_id(t: Target) -> None:
    async with opened(t) as sock:
        for label, value in (("missing", ...), ("empty", ""), ("129 chars", "x" * 129), ("5", 5)):
            packet: dict[str, Any] = {"type": "request", "command": "echo", "params": {}}
            if value is not ...:
                packet["id"] = value
            await sock.send(packet)
            expect_error(await sock.response(None), 400, f"id {label}")
        # 128 characters is still a usable id.
        long_id = "y" * 128
        expect_ok(await sock.call("echo", {}, id=long_id), "an id of 128 characters")


@case("s4.invalid_packet_keeps_id", "an invalid packet with a usable id gets 400 with that id")
async def invalid_packet_keeps_id(t: Target) -> None:
    bad = (
        ("an unknown type", {"type": "bogus"}),
        ("no command", {"type": "request"}),
        ("params a list", {"type": "request", "command": "echo", "params": [1]}),
    )
    async with opened(t) as sock:
        for label, packet in bad:
            packet_id = str(uuid.uuid4())
            await sock.send({"id": packet_id, **packet})
            expect_error(await sock.response(packet_id), 400, label)
    packet_id = str(uuid.uuid4())
    answer = await t.post({"id": packet_id, "type": "request"})
    body = expect_http(answer, 400, "POST a Request without command")
    check(body.get("id") == packet_id, f"its 400 does not carry the id: {short(body)}")
    expect_error(body, 400, "POST a Request without command")


@case("s4.http_bad_input", "POST /general of no JSON: HTTP 400, code 400, id null, no session")
async def http_bad_input(t: Target) -> None:
    answer = await t.post("this is not JSON")
    body = expect_http(answer, 400, "POST of no JSON")
    expect_error(body, 400, "POST of no JSON")
    check(body.get("id") is None, f"the 400 carries an id: {short(body)}")
    check(answer.session is None, "a refused call opened a session (X-Siyi-Session)")


@case("s4.stray_response_dropped", "a Response that answers nothing is dropped silently (§4)")
async def stray_response_dropped(t: Target) -> None:
    stray = str(uuid.uuid4())
    async with opened(t) as sock:
        await sock.send({"id": stray, "type": "response", "status": "ok", "code": 0, "data": 1})
        echoed = await sock.request("echo", {})
        first = await sock.next()
        check(first.get("id") == echoed, f"the stray Response was answered: {short(first)}")
        expect_ok(first, "echo after a stray Response")


@case("s4.event_posted_acknowledged", "an Event POSTed to /general gets an ok Response, its id")
async def event_posted_acknowledged(t: Target) -> None:
    event_id = str(uuid.uuid4())
    answer = await t.post(
        {"id": event_id, "type": "event", "name": "conformance.ping", "data": {"n": 1}}
    )
    body = expect_http(answer, 200, "POST an Event")
    expect_ok(body, "POST an Event")
    check(body.get("id") == event_id, f"the acknowledgement carries id {body.get('id')!r}")


def sized_echo(size: int) -> tuple[str, str]:
    """An echo Request of exactly `size` bytes (ASCII JSON) and its id."""
    packet_id = str(uuid.uuid4())
    frame = json.dumps(request_packet("echo", {"pad": ""}, id=packet_id))
    pad = size - len(frame)
    if pad < 0:
        raise CaseSkippedError(f"--max-message-size {size} is too small to test")
    return frame.replace('"pad": ""', '"pad": "' + "x" * pad + '"'), packet_id


@case("s4.size_limit_websocket", "a frame of the limit passes; one byte more closes with 1009")
async def size_limit_websocket(t: Target) -> None:
    limit = t.max_message_size
    async with opened(t) as sock, opened(t) as other:
        frame, packet_id = sized_echo(limit)
        await sock.send(frame)
        expect_ok(await sock.response(packet_id), f"an echo of exactly {limit} bytes")
        frame, packet_id = sized_echo(limit + 1)
        await sock.send(frame)
        await closes_alone(sock, other, 1009, f"a frame of {limit + 1} bytes")


@case("s4.size_limit_http", "a POST of the limit passes; one byte more gets 413 (§4)")
async def size_limit_http(t: Target) -> None:
    limit = t.max_message_size
    frame, _ = sized_echo(limit)
    expect_ok(expect_http(await t.post(frame), 200, "POST at the limit"), "POST at the limit")
    frame, _ = sized_echo(limit + 1)
    expect_error(
        expect_http(await t.post(frame), 413, "POST over the limit"), 413, "POST over the limit"
    )


# §5 Liveness ----------------------------------------------------------------------------------


async def heartbeat_of(t: Target) -> float:
    async with opened(t) as sock:
        interval = sock.greeting.get("heartbeat_interval")
    if not isinstance(interval, int | float) or interval <= 0:
        raise CaseSkippedError(f"the server has no heartbeat (heartbeat_interval {interval!r})")
    if interval > 2:
        raise CaseSkippedError(
            f"heartbeat_interval {interval:g} s is too long to wait for: serve with at most 2 s"
        )
    return float(interval)


@case("s5.answers_ping", "the server answers a WebSocket ping with a pong (§5)")
async def answers_ping(t: Target) -> None:
    async with opened(t, autoping=False) as sock:
        await sock.ws.ping(b"conformance")
        async with asyncio.timeout(t.timeout):
            while True:
                message = await sock.ws.receive()
                if message.type == aiohttp.WSMsgType.PONG:
                    return
                check(
                    message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.PING),
                    f"the WebSocket ended ({message.type.name}) before a pong",
                )


@case("s5.server_pings", "the server pings each WebSocket every heartbeat_interval (§5)")
async def server_pings(t: Target) -> None:
    interval = await heartbeat_of(t)
    # autoping would answer (and hide) the ping: read the frames as they come instead.
    async with opened(t, autoping=False) as sock:
        limit = 1.5 * interval + 0.5
        try:
            async with asyncio.timeout(limit):
                while True:
                    message = await sock.ws.receive()
                    if message.type == aiohttp.WSMsgType.PING:
                        await sock.ws.pong(message.data)
                        return
                    check(
                        message.type == aiohttp.WSMsgType.TEXT,
                        f"the WebSocket ended ({message.type.name}) before a ping",
                    )
        except TimeoutError:
            raise CaseFailedError(f"no ping within {limit:g} s") from None


@case("s5.silent_peer_closed", "a peer that does not answer pings is closed within 1.5 intervals")
async def silent_peer_closed(t: Target) -> None:
    interval = await heartbeat_of(t)
    async with opened(t, autoping=False) as sock:
        start = time.monotonic()
        await sock.closed(2 * interval + 1)
        elapsed = time.monotonic() - start
        check(
            elapsed <= 1.5 * interval + 0.5,
            f"closed after {elapsed:.2f} s, over 1.5 x {interval:g} s",
        )


# §6 Delivery guarantees -----------------------------------------------------------------------


@case("s6.requests_concurrent", "a slow handler does not hold up the next request (§6)")
async def requests_concurrent(t: Target) -> None:
    tag = t.tag("concurrent")
    async with opened(t) as sock:
        slow_id = await sock.request("slow", {"seconds": SLOW, "tag": tag})
        echo = await sock.call("echo", {"n": 1}, timeout=min(t.timeout, SLOW / 2))
        expect_ok(echo, "echo behind a slow request")
        await sock.cancel(slow_id)


@case("s6.at_most_once_same_transport", "a repeated id in a session runs once, same answer (§6)")
async def at_most_once_same_transport(t: Target) -> None:
    tag = t.tag("once")
    packet_id = str(uuid.uuid4())
    async with opened(t) as sock:
        first = expect_ok(await sock.call("bump", {"tag": tag}, id=packet_id), "bump")
        again = expect_ok(await sock.call("bump", {"tag": tag}, id=packet_id), "bump repeated")
    check(again == first, f"the repeat got {short(again)}, the first {short(first)}")
    count = await runs(t, tag)
    check(count == 1, f"one id ran {count} times")


@case(
    "s6.at_most_once_across_transports",
    "an id sent over WebSocket then POST /general in one session runs once (§6)",
)
async def at_most_once_across_transports(t: Target) -> None:
    tag = t.tag("across")
    packet_id = str(uuid.uuid4())
    async with opened(t) as sock:
        first = expect_ok(await sock.call("bump", {"tag": tag}, id=packet_id), "bump over WS")
        answer = await t.post(
            request_packet("bump", {"tag": tag}, id=packet_id), session=sock.session
        )
        again = expect_ok(expect_http(answer, 200, "bump over HTTP"), "bump over HTTP")
    check(again == first, f"POST got {short(again)}, the WebSocket {short(first)}")
    count = await runs(t, tag)
    check(count == 1, f"one id ran {count} times across the two transports")


@case("s6.repeat_while_running_waits", "a repeat of an id still running waits for its answer")
async def repeat_while_running_waits(t: Target) -> None:
    tag = t.tag("waits")
    packet_id = str(uuid.uuid4())
    async with opened(t) as sock:
        await sock.request("slow", {"seconds": 0.3, "tag": tag}, id=packet_id)
        await slow_state(t, tag, "started")
        answer = await t.post(
            request_packet("slow", {"seconds": 0.3, "tag": tag}, id=packet_id),
            session=sock.session,
        )
        expect_ok(expect_http(answer, 200, "the repeat over HTTP"), "the repeat over HTTP")
        expect_ok(await sock.response(packet_id), "slow over WebSocket")
    count = await runs(t, tag)
    check(count == 1, f"one id ran {count} times")


@case("s6.ids_scoped_by_session", "the same id from two sessions runs twice, each its own (§6)")
async def ids_scoped_by_session(t: Target) -> None:
    tag = t.tag("scoped")
    packet_id = str(uuid.uuid4())
    first = expect_ok(await t.call("bump", {"tag": tag}, id=packet_id), "bump, session 1")
    second = expect_ok(await t.call("bump", {"tag": tag}, id=packet_id), "bump, session 2")
    check(first != second, f"a second session got the first one's answer {short(first)}")
    count = await runs(t, tag)
    check(count == 2, f"two sessions' requests ran {count} times, not 2")


@case("s6.finishes_after_drop", "a request finishes after its socket drops; its repeat gets it")
async def finishes_after_drop(t: Target) -> None:
    tag = t.tag("drop")
    packet_id = str(uuid.uuid4())
    sock = await t.socket()
    session = sock.session
    await sock.request("slow", {"seconds": 0.2, "tag": tag}, id=packet_id)
    await slow_state(t, tag, "started")
    await sock.drop()
    async with opened(t, session=session) as back:
        response = await back.call("slow", {"seconds": 0.2, "tag": tag}, id=packet_id)
    expect_ok(response, "the repeat after the drop")
    count = await runs(t, tag)
    check(count == 1, f"one id ran {count} times")


@case("s6.events_in_order", "events from one sender are handled one at a time, in order (§6)")
async def events_in_order(t: Target) -> None:
    tag = t.tag("order")
    count = 30
    async with opened(t) as sock:
        for n in range(count):
            await sock.send(
                {
                    "id": str(uuid.uuid4()),
                    "type": "event",
                    "name": "record",
                    "data": {"tag": tag, "n": n},
                }
            )
        data = expect_ok(
            await sock.call("recorded", {"tag": tag, "count": count, "wait": t.timeout}),
            "recorded",
        )
    check(data == list(range(count)), f"the events were handled as {short(data)}")


# §7 Authentication and sessions ---------------------------------------------------------------


@case("s7.session_event_first", "the first frame of a WebSocket is the session event (§7)")
async def session_event_first(t: Target) -> None:
    async with opened(t) as sock:
        data = sock.greeting
    key = data.get("session")
    check(isinstance(key, str) and len(key) >= 22, f"session key {key!r}: under 128 bits")
    check(
        is_int(data.get("protocol")) and data["protocol"] == 1,
        f"'protocol' {data.get('protocol')!r}",
    )
    check("heartbeat_interval" in data, "no 'heartbeat_interval'")
    check(data.get("resumed") is False, f"a new session says resumed {data.get('resumed')!r}")
    check(data.get("dropped") == 0, f"a new session says dropped {data.get('dropped')!r}")


@case("s7.http_session_header", "an HTTP call returns X-Siyi-Session; presenting it is accepted")
async def http_session_header(t: Target) -> None:
    session = await session_of(t)
    answer = await t.post(request_packet("echo", {}), session=session)
    expect_ok(expect_http(answer, 200, "POST with the session"), "POST with the session")
    check(
        answer.session in (None, session),
        f"presenting a session key gave another one: {answer.session!r}",
    )


@case("s7.key_required", "a missing or wrong key gets 401 and no session (§7)", needs_key=True)
async def key_required(t: Target) -> None:
    key = needs_key(t)
    for label, wrong in (("no key", None), ("a wrong key", key + "-wrong")):
        status = await refused_upgrade(t, key=wrong)
        check(status == 401, f"a WebSocket with {label}: HTTP {status}, not 401")
        answer = await t.post(request_packet("echo", {}), key=wrong)
        expect_error(expect_http(answer, 401, f"POST with {label}"), 401, f"POST with {label}")
        check(answer.session is None, f"POST with {label} opened a session")
        answer = await t.get("/events?wait=0", key=wrong)
        check(answer.status == 401, f"GET /events with {label}: HTTP {answer.status}")


@case(
    "s7.subprotocol_key",
    "a browser's subprotocols siyi.v1 + bearer.<key> are accepted (§7)",
    needs_key=True,
)
async def subprotocol_key(t: Target) -> None:
    key = needs_key(t)
    async with opened(t, key=None, protocols=("siyi.v1", f"bearer.{key}")) as sock:
        check(sock.ws.protocol == "siyi.v1", f"the server selected {sock.ws.protocol!r}")
        expect_ok(await sock.call("echo", {}), "echo")


@case("s7.replay_after_reconnect", "an event buffered while away is replayed on resume (§7)")
async def replay_after_reconnect(t: Target) -> None:
    nonce = uuid.uuid4().hex
    sock = await t.socket()
    session = sock.session
    await sock.drop()
    expect_ok(
        await t.call("notify_me", {"name": NOTE, "data": {"nonce": nonce}}, session=session),
        "notify_me while away",
    )
    async with opened(t, session=session) as back:
        greeting = back.greeting
        check(greeting.get("session") == session, "the resumed session has another key")
        check(greeting.get("resumed") is True, f"resumed is {greeting.get('resumed')!r}")
        check(is_int(greeting.get("dropped")), f"dropped is {greeting.get('dropped')!r}")
        event = await back.expect(
            lambda p: bool(notes([p], nonce)), "replay of the event sent while away"
        )
    check(event.get("data") == {"nonce": nonce}, f"the replayed event: {short(event)}")


@case("s7.takeover_closes_4001", "a second WebSocket with the key takes over; the first gets 4001")
async def takeover_closes_4001(t: Target) -> None:
    async with opened(t) as first, opened(t, session=first.session) as second:
        code = await first.closed()
        check(code == 4001, f"the first WebSocket was closed with {code}, not 4001")
        check(second.greeting.get("resumed") is True, "the takeover did not resume")
        expect_ok(await second.call("echo", {}), "echo on the new WebSocket")


@case(
    "s7.session_owned_by_principal",
    "another principal's session key is refused with 403 on every adapter (§7)",
    needs_key2=True,
)
async def session_owned_by_principal(t: Target) -> None:
    me = expect_ok(await t.call("whoami"), "whoami --key")
    other = expect_ok(await t.call("whoami", key=t.key2), "whoami --key2")
    check(me != other, f"--key and --key2 are one principal ({short(me)})")
    async with opened(t) as sock:
        session = sock.session
        status = await refused_upgrade(t, key=t.key2, session=session)
        check(status == 403, f"a WebSocket of --key2 with --key's session: HTTP {status}")
        answer = await t.post(request_packet("echo", {}), key=t.key2, session=session)
        expect_error(expect_http(answer, 403, "POST of --key2"), 403, "POST of --key2")
        check(answer.session != session, "the refusal reveals the session")
        answer = await t.get("/events?wait=0", key=t.key2, session=session)
        check(answer.status == 403, f"GET /events of --key2: HTTP {answer.status}")
        expect_ok(await sock.call("echo", {}), "the owner's WebSocket afterwards")


@case(
    "s7.request_id_owned_by_principal",
    "a request id of one principal never answers another (§6, §7)",
    needs_key2=True,
)
async def request_id_owned_by_principal(t: Target) -> None:
    packet_id = str(uuid.uuid4())
    secret = {"secret": uuid.uuid4().hex}
    async with opened(t) as sock:
        expect_ok(await sock.call("echo", secret, id=packet_id), "echo of --key")
        answer = await t.post(request_packet("echo", {"mine": 1}, id=packet_id), key=t.key2)
        data = expect_ok(expect_http(answer, 200, "echo of --key2"), "echo of --key2")
    check(data == {"mine": 1}, f"--key2 got {short(data)} for its own id")


@case("s7.provisional_session_buffers", "a session opened by POST buffers for its first poll")
async def provisional_session_buffers(t: Target) -> None:
    nonce = uuid.uuid4().hex
    answer = await t.post(request_packet("notify_me", {"name": NOTE, "data": {"nonce": nonce}}))
    expect_ok(expect_http(answer, 200, "notify_me"), "notify_me")
    session = answer.session
    check(session, "POST /general answered without X-Siyi-Session")
    assert session is not None
    packets = await poll(t, session, wait=t.timeout)
    check(notes(packets, nonce), f"the first poll did not get the event: {short(packets)}")


@case("s7.events_wait", "GET /events?wait=0 answers [] at once; a wait of no number gets 400")
async def events_wait(t: Target) -> None:
    session = await session_of(t)
    packets = await poll(t, session, wait=0)
    check(packets == [], f"an empty buffer answered {short(packets)}")
    answer = await t.get("/events?wait=soon", session=session)
    check(answer.status == 400, f"wait=soon: HTTP {answer.status}, not 400")


@case("s7.events_after_acknowledges", "after= keeps what is not acknowledged; no after consumes")
async def events_after_acknowledges(t: Target) -> None:
    session = await session_of(t)
    nonce = uuid.uuid4().hex
    for n in range(2):
        expect_ok(
            await t.call(
                "notify_me", {"name": NOTE, "data": {"nonce": nonce, "n": n}}, session=session
            ),
            "notify_me",
        )
    both = notes(await poll(t, session, after=""), nonce)
    check(len(both) == 2, f"after= returned {len(both)} of the 2 events")
    again = notes(await poll(t, session, after=""), nonce)
    check(again == both, "after= (acknowledging nothing) lost events")
    rest = notes(await poll(t, session, after=str(both[0].get("id"))), nonce)
    check(rest == both[1:], f"after=<first> returned {short(rest)}")
    taken = notes(await poll(t, session), nonce)
    check(taken == both[1:], f"a poll without after returned {short(taken)}")
    left = notes(await poll(t, session), nonce)
    check(left == [], "a poll without after did not consume what it returned")


@case("s7.events_long_poll", "a waiting GET /events answers as soon as a packet arrives (§7)")
async def events_long_poll(t: Target) -> None:
    session = await session_of(t)
    nonce = uuid.uuid4().hex
    start = time.monotonic()
    waiting = asyncio.ensure_future(poll(t, session, wait=t.timeout))
    try:
        expect_ok(
            await t.call("notify_me", {"name": NOTE, "data": {"nonce": nonce}}, session=session),
            "notify_me",
        )
        packets = await waiting
    finally:
        waiting.cancel()
    elapsed = time.monotonic() - start
    check(notes(packets, nonce), f"the poll returned {short(packets)}")
    check(elapsed < t.timeout * 0.8, f"the poll answered after {elapsed:.2f} s")


@case("s7.http_answers_server_request", "a poller answers a server Request with POST (§7)")
async def http_answers_server_request(t: Target) -> None:
    session = await session_of(t)
    nonce = uuid.uuid4().hex
    asking = asyncio.ensure_future(
        t.call(
            "ask_me",
            {"command": "conformance.question", "params": {"nonce": nonce}},
            session=session,
        )
    )
    try:
        question: dict[str, Any] | None = None
        deadline = time.monotonic() + t.timeout
        while question is None and time.monotonic() < deadline:
            for packet in await poll(t, session, wait=deadline - time.monotonic()):
                if packet.get("type") == "request" and packet.get("command") == (
                    "conformance.question"
                ):
                    question = packet
        check(question is not None, "no poll returned the server's Request")
        assert question is not None
        reply = {
            "id": question.get("id"),
            "type": "response",
            "status": "ok",
            "code": 0,
            "data": {"answer": nonce},
        }
        answer = await t.post(reply, session=session)
        expect_ok(expect_http(answer, 200, "POST the Response"), "POST the Response")
        data = expect_ok(await asking, "ask_me")
    finally:
        asking.cancel()
    check(
        isinstance(data, dict) and data.get("data") == {"answer": nonce},
        f"ask_me did not get the answer: {short(data)}",
    )


# §8 Uploads -----------------------------------------------------------------------------------


CONTENT = bytes(range(256)) * 8
"""The bytes the upload cases send (2 KiB)."""


def upload_headers(upload_id: str, name: str, content: bytes) -> dict[str, str]:
    return {
        "X-Siyi-Upload-Id": upload_id,
        "X-Siyi-File-Name": quote(name),
        "X-Siyi-File-MD5": hashlib.md5(content, usedforsecurity=False).hexdigest(),
        "X-Siyi-File-SHA256": hashlib.sha256(content).hexdigest(),
        "Content-Type": "application/octet-stream",
    }


async def post_upload(
    t: Target, body: bytes, headers: dict[str, str], *, key: Any = None
) -> HttpAnswer:
    extra = {} if key is None else {"key": key}
    return await t.post(body, path="/upload", headers=headers, **extra)


def expect_stored(data: Any, name: str, content: bytes) -> None:
    check(isinstance(data, dict), f"the upload answered {short(data)}")
    check(isinstance(data.get("file_id"), str) and data["file_id"], "no 'file_id'")
    check(data.get("name") == name, f"stored as {data.get('name')!r}, not {name!r}")
    check(data.get("size") == len(content), f"size {data.get('size')!r}, not {len(content)}")
    md5 = hashlib.md5(content, usedforsecurity=False).hexdigest()
    check(data.get("md5") == md5, f"md5 {data.get('md5')!r}, not {md5}")
    sha256 = hashlib.sha256(content).hexdigest()
    check(data.get("sha256") == sha256, f"sha256 {data.get('sha256')!r}")


@case("s8.upload_post", "POST /upload stores the file and answers its id, name, size, digests")
async def upload_post(t: Target) -> None:
    name = "conformance file.bin"
    answer = await post_upload(t, CONTENT, upload_headers(str(uuid.uuid4()), name, CONTENT))
    data = expect_ok(expect_http(answer, 200, "POST /upload"), "POST /upload")
    expect_stored(data, name, CONTENT)


@case("s8.upload_websocket", "the upload WebSocket: header, binary frames, last md5 frame (§8)")
async def upload_websocket(t: Target) -> None:
    name = "conformance.bin"
    sock = await t.socket(path="/upload", greeting=False)
    try:
        await sock.send(
            {"upload_id": str(uuid.uuid4()), "name": name, "size": len(CONTENT), "offset": 0}
        )
        half = len(CONTENT) // 2
        await sock.ws.send_bytes(CONTENT[:half])
        await sock.ws.send_bytes(CONTENT[half:])
        await sock.send({"md5": hashlib.md5(CONTENT, usedforsecurity=False).hexdigest()})
        response = await sock.next()
    finally:
        await sock.close()
    expect_stored(expect_ok(response, "the upload WebSocket"), name, CONTENT)


@case("s8.upload_digest_mismatch", "an upload whose digest does not match gets 400 (§8)")
async def upload_digest_mismatch(t: Target) -> None:
    headers = upload_headers(str(uuid.uuid4()), "bad.bin", CONTENT)
    headers["X-Siyi-File-MD5"] = "0" * 32
    del headers["X-Siyi-File-SHA256"]
    answer = await post_upload(t, CONTENT, headers)
    expect_error(expect_http(answer, 400, "a wrong MD5"), 400, "a wrong MD5")


@case("s8.upload_too_large", "an upload declared over the limit gets 413 before its bytes (§8)")
async def upload_too_large(t: Target) -> None:
    sock = await t.socket(path="/upload", greeting=False)
    try:
        await sock.send(
            {
                "upload_id": str(uuid.uuid4()),
                "name": "big.bin",
                "size": t.max_upload_size + 1,
                "offset": 0,
            }
        )
        response = await sock.next()
    finally:
        await sock.close()
    expect_error(response, 413, "an upload over --max-upload-size")


async def upload_status(t: Target, upload_id: str, *, key: Any = None) -> HttpAnswer:
    extra = {} if key is None else {"key": key}
    return await t.get(f"/upload/{quote(upload_id, safe='')}", **extra)


@case("s8.upload_resume", "a cut upload resumes from GET /upload/{id} with Content-Range (§8)")
async def upload_resume(t: Target) -> None:
    upload_id = str(uuid.uuid4())
    name = "resumed.bin"
    half = len(CONTENT) // 2
    sock = await t.socket(path="/upload", greeting=False)
    await sock.send({"upload_id": upload_id, "name": name, "size": len(CONTENT), "offset": 0})
    await sock.ws.send_bytes(CONTENT[:half])
    await sock.drop()
    # The server notices the cut on its own time: ask until it has stored the first half.
    deadline = time.monotonic() + t.timeout
    status: Any = None
    while time.monotonic() < deadline:
        answer = await upload_status(t, upload_id)
        status = answer.json() if answer.status == 200 else answer.status
        if isinstance(status, dict) and status.get("received") == half:
            break
        await asyncio.sleep(0.02)
    check(
        isinstance(status, dict)
        and status.get("received") == half
        and status.get("size") == len(CONTENT)
        and status.get("upload_id") == upload_id,
        f"GET /upload/{{id}} after the cut: {short(status)}",
    )
    headers = upload_headers(upload_id, name, CONTENT)
    headers["Content-Range"] = f"bytes {half}-{len(CONTENT) - 1}/{len(CONTENT)}"
    answer = await post_upload(t, CONTENT[half:], headers)
    data = expect_ok(expect_http(answer, 200, "the resumed part"), "the resumed part")
    expect_stored(data, name, CONTENT)


@case(
    "s8.upload_owned_by_principal",
    "another principal's upload id is 404, as an unknown one (§8)",
    needs_key2=True,
)
async def upload_owned_by_principal(t: Target) -> None:
    upload_id = str(uuid.uuid4())
    half = len(CONTENT) // 2
    headers = upload_headers(upload_id, "owned.bin", CONTENT)
    headers["Content-Range"] = f"bytes 0-{half - 1}/{len(CONTENT)}"
    answer = await post_upload(t, CONTENT[:half], headers)
    check(answer.status in (200, 202), f"the first part: HTTP {answer.status}")
    status = await upload_status(t, upload_id, key=t.key2)
    check(status.status == 404, f"GET /upload/{{id}} of --key2: HTTP {status.status}, not 404")
    headers["Content-Range"] = f"bytes {half}-{len(CONTENT) - 1}/{len(CONTENT)}"
    answer = await post_upload(t, b"\0" * half, headers, key=t.key2)
    check(answer.status == 404, f"--key2 resuming it: HTTP {answer.status}, not 404")
    mine = await upload_status(t, upload_id)
    body = mine.json() if mine.status == 200 else None
    check(
        isinstance(body, dict) and body.get("received") == half,
        f"the owner's upload after --key2 tried: {short(body)}",
    )


# §9 Deadlines ---------------------------------------------------------------------------------


@case("s9.deadline_websocket", "meta.timeout runs out: 408, and the handler is stopped (§9)")
async def deadline_websocket(t: Target) -> None:
    tag = t.tag("deadline")
    async with opened(t) as sock:
        response = await sock.call("slow", {"seconds": SLOW, "tag": tag}, meta={"timeout": 0.2})
    expect_error(response, 408, "slow under meta.timeout 0.2")
    state = await slow_state(t, tag)
    check(state.get("cancelled") is True, f"the handler was not stopped: {short(state)}")


@case("s9.deadline_http", "meta.timeout in a POSTed Request: 408 as well (§9)")
async def deadline_http(t: Target) -> None:
    tag = t.tag("deadline-http")
    response = await t.call("slow", {"seconds": SLOW, "tag": tag}, meta={"timeout": 0.2})
    expect_error(response, 408, "POST slow under meta.timeout 0.2")
    state = await slow_state(t, tag)
    check(state.get("cancelled") is True, f"the handler was not stopped: {short(state)}")


# §10 Cancellation and streams -----------------------------------------------------------------


@case("s10.cancel_websocket", "siyi.cancel stops the handler: 499, and a repeat never runs")
async def cancel_websocket(t: Target) -> None:
    tag = t.tag("cancel")
    packet_id = str(uuid.uuid4())
    async with opened(t) as sock:
        await sock.request("slow", {"seconds": SLOW, "tag": tag}, id=packet_id)
        await slow_state(t, tag, "started")
        await sock.cancel(packet_id)
        expect_error(await sock.response(packet_id), 499, "the cancelled request")
        state = await slow_state(t, tag)
        check(state.get("cancelled") is True, f"the handler was not stopped: {short(state)}")
        repeat = await sock.call("slow", {"seconds": SLOW, "tag": tag}, id=packet_id)
        expect_error(repeat, 499, "a repeat of the cancelled id")
    count = await runs(t, tag)
    check(count == 1, f"the cancelled id ran {count} times")


@case("s10.cancel_http", "siyi.cancel POSTed in the session cancels a POSTed request (§10)")
async def cancel_http(t: Target) -> None:
    tag = t.tag("cancel-http")
    session = await session_of(t)
    packet_id = str(uuid.uuid4())
    running = asyncio.ensure_future(
        t.call("slow", {"seconds": SLOW, "tag": tag}, session=session, id=packet_id)
    )
    try:
        await slow_state(t, tag, "started")
        answer = await t.post(cancel_packet(packet_id), session=session)
        expect_ok(expect_http(answer, 200, "POST siyi.cancel"), "POST siyi.cancel")
        expect_error(await running, 499, "the cancelled request")
    finally:
        running.cancel()


@case("s10.cancel_unknown_ignored", "a cancel for an unknown id changes nothing (§10)")
async def cancel_unknown_ignored(t: Target) -> None:
    unknown = str(uuid.uuid4())
    async with opened(t) as sock:
        await sock.cancel(unknown)
        expect_ok(await sock.call("echo", {}), "echo after the cancel")
        check(
            not any(p.get("id") == unknown for p in sock.backlog),
            "the cancel of an unknown id was answered",
        )


@case("s10.stream_chunks", "a stream sends siyi.chunk events seq 0.., then ok with the count")
async def stream_chunks(t: Target) -> None:
    async with opened(t) as sock:
        request_id = await sock.request("count", {"n": 5}, meta={"window": 16})
        seen = []
        for _ in range(5):
            chunk = await sock.expect(chunks_of(request_id), "a siyi.chunk event")
            seen.append((chunk["data"].get("seq"), chunk["data"].get("data")))
        await sock.send(ack_packet(request_id, 4))
        data = expect_ok(await sock.response(request_id), "the stream's Response")
    check(seen == [(n, n) for n in range(5)], f"the chunks (seq, data): {seen}")
    check(data == 5, f"the final Response's data is {data!r}, not the count 5")


@case("s10.stream_flow_control", "no more than window chunks are unacknowledged (§10)")
async def stream_flow_control(t: Target) -> None:
    async with opened(t) as sock:
        request_id = await sock.request("count", {"n": 6}, meta={"window": 2})
        seqs: list[Any] = []
        for ack in (1, 3, 5):
            for _ in range(2):
                chunk = await sock.expect(chunks_of(request_id), "a siyi.chunk event")
                seqs.append(chunk["data"].get("seq"))
            if ack < 5:
                extra = await sock.nothing(chunks_of(request_id), 0.2)
                check(extra is None, f"chunk {short(extra)} came past a window of 2")
            await sock.send(ack_packet(request_id, ack))
        data = expect_ok(await sock.response(request_id), "the stream's Response")
    check(seqs == list(range(6)), f"the chunks' seq: {seqs}")
    check(data == 6, f"the final Response's data is {data!r}")


@case("s10.stream_ndjson", "POST with Accept: application/x-ndjson streams NDJSON lines (§10)")
async def stream_ndjson(t: Target) -> None:
    answer = await t.post(
        request_packet("count", {"n": 3}), headers={"Accept": "application/x-ndjson"}
    )
    check(answer.status == 200, f"HTTP {answer.status}")
    lines = [json.loads(line) for line in answer.body.splitlines() if line.strip()]
    check(len(lines) == 4, f"{len(lines)} lines, not 3 chunks and a Response")
    items = [line.get("data", {}).get("data") for line in lines[:3]]
    check(
        all(line.get("name") == "siyi.chunk" for line in lines[:3]) and items == [0, 1, 2],
        f"the chunk lines: {short(lines[:3])}",
    )
    check(expect_ok(lines[3], "the last line") == 3, f"the last line: {short(lines[3])}")


@case("s10.stream_without_window", "a stream asked without a window answers one array (§10)")
async def stream_without_window(t: Target) -> None:
    async with opened(t) as sock:
        data = expect_ok(await sock.call("count", {"n": 3}), "count without a window")
    check(data == [0, 1, 2], f"count answered {short(data)}")
    data = expect_ok(await t.call("count", {"n": 3}), "count over POST")
    check(data == [0, 1, 2], f"count over POST answered {short(data)}")


@case("s10.stream_cancel", "a cancelled stream ends with 499 (§10)")
async def stream_cancel(t: Target) -> None:
    async with opened(t) as sock:
        request_id = await sock.request("count", {"n": 1000}, meta={"window": 1})
        await sock.expect(chunks_of(request_id), "a siyi.chunk event")
        await sock.cancel(request_id)
        expect_error(await sock.response(request_id), 499, "the cancelled stream")


@case("s10.about_marks_streams", "/about marks a streaming command with stream: true (§10)")
async def about_marks_streams(t: Target) -> None:
    about = (await t.get("/about")).json()
    commands = about.get("commands", []) if isinstance(about, dict) else []
    count = [c for c in commands if isinstance(c, dict) and c.get("name") == "count"]
    check(count and count[0].get("stream") is True, f"/about's count: {short(count)}")


# §11 Describing the API -----------------------------------------------------------------------


@case("s11.asyncapi_document", "GET /asyncapi.json is an AsyncAPI 3.0.0 document of siyi (§11)")
async def asyncapi_document(t: Target) -> None:
    answer = await t.get("/asyncapi.json")
    check(answer.status == 200, f"GET /asyncapi.json: HTTP {answer.status}")
    document = answer.json()
    check(isinstance(document, dict), "the document is not a JSON object")
    check(document.get("asyncapi") == "3.0.0", f"asyncapi is {document.get('asyncapi')!r}")
    info = document.get("info") if isinstance(document.get("info"), dict) else {}
    marker = document.get("x-siyi-protocol", info.get("x-siyi-protocol"))
    check(marker == 1, f"x-siyi-protocol is {marker!r}, not 1")


@case(
    "s11.description_needs_key",
    "/about without the key omits commands; /asyncapi.json answers 401 (§11)",
    needs_key=True,
)
async def description_needs_key(t: Target) -> None:
    needs_key(t)
    answer = await t.get("/about", key=None)
    check(answer.status == 200, f"GET /about without a key: HTTP {answer.status}")
    about = answer.json()
    check(isinstance(about, dict) and about.get("protocol") == 1, f"/about: {short(about)}")
    check("commands" not in about, "/about lists the commands to a caller without the key")
    answer = await t.get("/asyncapi.json", key=None)
    check(answer.status == 401, f"GET /asyncapi.json without a key: HTTP {answer.status}")
