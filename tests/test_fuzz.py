"""Fuzzing the packet parser and the HTTP and WebSocket endpoints (PROTOCOL.md §2-§4, §7).

Issue 11, "what it must show" item 5: whatever a peer sends, the parser and the endpoints
answer as §4 says: no crash, no hang, no other answer.

- The parser (pure, fast): arbitrary bytes and text, arbitrary JSON values, and near-valid
  packets (valid ones with fields removed, mutated or of the wrong type, ids of every kind).
  `parse_message` returns a packet or raises `ProtocolError` (code 400, the usable id or None),
  never anything else; what it accepts obeys §2 and survives encode/parse; its hand-written
  fast path agrees with pydantic.
- ``POST /general`` and ``GET /events`` over one real server on loopback, with a real aiohttp
  client: arbitrary bodies (plain, gzip, deflate, chunked), credentials, session keys (random,
  and live keys of this and of another principal), content types, extra headers, and query
  strings. The status is exactly the one §3/§4/§7 give (401, 403, 413, 400, else 200), the body
  is a §2 Response (or, for ``/events``, an array of packets), a refusal carries no
  ``X-Siyi-Session``, and nothing is logged at ERROR. Every call runs under a timeout.
- The WebSocket: random text and binary frames on one connection; each gets its §4 answer (or
  none, for an Event or a Response) and the connection stays open, except invalid UTF-8 in a
  text frame (1007) and a frame over the size limit (1009).

About 5,900 cases, the same on every run (``derandomize``), in about 30 s on 2 cores. Deeper:
``SIYI_FUZZ_PROFILE=siyi-explore SIYI_FUZZ_SCALE=10 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import logging
import math
import os
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
import yarl
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st
from pydantic import Field, ValidationError

from siyi_sdk import Command, Connection, Event, ProtocolServer, Request, Response
from siyi_sdk.errors import ProtocolError
from siyi_sdk.packets import SESSION_HEADER, Packet, encode, parse_message, parse_object

# Settings ------------------------------------------------------------------------------------

settings.register_profile(
    "siyi-ci",
    derandomize=True,  # the same cases on every run: CI never flakes on a new random draw
    database=None,  # nothing written to .hypothesis/
    deadline=None,  # loopback calls on a busy 2-core runner: time is bounded by CALL_TIMEOUT
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "siyi-explore",
    parent=settings.get_profile("siyi-ci"),
    derandomize=False,
)
PROFILE = settings.get_profile(os.environ.get("SIYI_FUZZ_PROFILE", "siyi-ci"))
SCALE = float(os.environ.get("SIYI_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    """This module's settings with `examples` cases (times SIYI_FUZZ_SCALE)."""
    return settings(PROFILE, max_examples=max(1, round(examples * SCALE)))


MAX_ID = 128
LIMIT = 2048
"""The server's `max_message_size`: small, so that fuzzed bodies and frames reach it."""
CALL_TIMEOUT = 10.0
"""The bound on one fuzzed call: reached only if the server hangs."""
PRINCIPALS = ("anon", "alice", "bob")
URL_SECRETS = frozenset({"key", "token", "verify_key", "access_token", "authorization", "auth"})
"""Query names that make the server refuse a call with 401 (keys in URLs, §7)."""
T = TypeVar("T")


def usable(value: object) -> bool:
    """A usable id (§2): a string of 1 to 128 characters."""
    return type(value) is str and 0 < len(value) <= MAX_ID


def usable_id_of(raw: bytes | str | bytearray | memoryview) -> str | None:
    """The id a §4 answer to this frame must carry, decided without the SDK's parser."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is dict and usable(obj.get("id")):
        return str(obj["id"])
    return None


# Strategies ----------------------------------------------------------------------------------

text = st.text(max_size=24)
surrogates = st.characters(categories=["Cs"])
text_with_surrogates = st.text(st.characters() | surrogates, max_size=24)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)


def json_of(ints: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | ints | finite | text
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=8,
    )


json_values = json_of(st.integers())  # unbounded ints: the wire may carry any
json64 = json_of(int64)  # what orjson can encode, for packets built in Python

usable_ids = st.text(min_size=1, max_size=MAX_ID) | st.sampled_from(["x" * MAX_ID, "1", "a"])
any_ids = st.one_of(
    usable_ids,
    st.just(""),
    st.text(min_size=MAX_ID + 1, max_size=MAX_ID + 40),
    st.just("x" * (MAX_ID + 1)),
    st.none(),
    st.booleans(),
    st.integers(),
    finite,
    st.lists(text, max_size=2),
    st.dictionaries(text, text, max_size=2),
)
COMMANDS = ["echo", "typed", "fail", "size", "no_such_command"]
commands = st.sampled_from(COMMANDS) | st.text(min_size=1, max_size=12)
EVENT_NAMES = ["tick", "siyi.cancel", "siyi.ack", "siyi.chunk", "siyi.other", "session"]
event_names = st.sampled_from(EVENT_NAMES) | st.text(min_size=1, max_size=12)
meta_values = st.one_of(
    json_values,
    st.sampled_from([0, -1, 0.001, 1e-9, 1e300, 2**64, "1", None, True]),
)
metas = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "timeout": meta_values,
            "window": meta_values,
            "traceparent": text | meta_values,
            "tracestate": text | meta_values,
            "extra": json_values,
        },
    ),
    st.dictionaries(text, json_values, max_size=3),
)


def packet_dicts(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid packets as JSON objects (optional fields present or not), of every kind."""
    params = st.none() | st.dictionaries(text, values, max_size=4)
    request = st.fixed_dictionaries(
        {"id": usable_ids, "type": st.just("request"), "command": commands},
        optional={"params": params, "meta": metas, "unknown": values},
    )
    event = st.fixed_dictionaries(
        {"id": usable_ids, "type": st.just("event"), "name": event_names},
        optional={"data": values, "meta": metas, "unknown": values},
    )
    ok = st.fixed_dictionaries(
        {"id": usable_ids | st.none(), "type": st.just("response"), "status": st.just("ok")},
        optional={"code": st.just(0), "data": values, "meta": metas, "error": text},
    )
    error = st.fixed_dictionaries(
        {"id": usable_ids | st.none(), "type": st.just("response"), "status": st.just("error")},
        optional={
            "code": int64.filter(bool) | st.sampled_from([1, 400, 404, 1000]),
            "error": text,
            "data": values,
            "meta": metas,
        },
    )
    return st.one_of(request, event, ok, error)


FIELDS = ["id", "type", "command", "params", "name", "data", "status", "code", "error", "meta"]
WRONG: list[Any] = [
    None, True, False, 0, 1, -1, 0.0, 1.5, 404.0, 1e300, 2**63, 2**64, -(2**63) - 1,
    "", "404", "ok", "error", "request", "response", "event", "Request", " request",
    "x" * (MAX_ID + 1), [], {}, [1], {"a": 1}, {"": None},
]  # fmt: skip
wrong_values = st.sampled_from(WRONG) | json_values


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid packet with up to four fields removed, mutated or given the wrong type."""
    obj = dict(draw(packet_dicts(json_values)))
    for _ in range(draw(st.integers(0, 4))):
        what = draw(st.sampled_from(["drop", "wrong", "id", "type", "add"]))
        key = draw(st.sampled_from(FIELDS))
        if what == "drop":
            obj.pop(key, None)
        elif what == "wrong":
            obj[key] = draw(wrong_values)
        elif what == "id":
            obj["id"] = draw(any_ids)
        elif what == "type":
            obj["type"] = draw(st.sampled_from(["request", "response", "event"]) | wrong_values)
        else:
            obj[draw(text)] = draw(json_values)
    return obj


def dumps(value: Any, ascii_only: bool = True) -> bytes:
    """JSON text as another peer might write it (Python's json: NaN and big ints allowed)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


json_bodies = st.builds(dumps, json_values, st.booleans())
near_valid_bodies = st.builds(dumps, near_valid(), st.booleans())
valid_bodies = st.builds(dumps, packet_dicts(json_values), st.booleans())


@st.composite
def damaged_bodies(draw: st.DrawFn) -> bytes:
    """A valid packet's bytes, truncated, or with bytes replaced or inserted."""
    raw = bytearray(draw(valid_bodies))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        what = draw(st.sampled_from(["cut", "replace", "insert"]))
        if what == "cut":
            del raw[at:]
        elif what == "replace" and at < len(raw):
            raw[at] = draw(st.integers(0, 255))
        else:
            raw[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(raw)


@st.composite
def sized_bodies(draw: st.DrawFn) -> bytes:
    """A valid packet of exactly LIMIT + delta bytes (delta mostly -1, 0 or 1).

    Padded with 2-byte characters half the time: the limit counts bytes, not characters.
    """
    delta = draw(st.sampled_from([-1, 0, 1, 2]) | st.integers(-64, 64))
    wide = draw(st.booleans())
    pid = f"sized-{draw(st.integers(0, 10**6))}"
    if draw(st.booleans()):
        obj: dict[str, Any] = {"id": pid, "type": "request", "command": "size", "params": {}}

        def padded(pad: str) -> bytes:
            obj["params"] = {"pad": pad}
            return dumps(obj, ascii_only=False)

    else:
        obj = {"id": pid, "type": "event", "name": "sized"}

        def padded(pad: str) -> bytes:
            obj["data"] = pad
            return dumps(obj, ascii_only=False)

    need = LIMIT + delta - len(padded(""))
    body = padded("é" * (need // 2) + "x" * (need % 2) if wide else "x" * need)
    assert len(body) == LIMIT + delta
    return body


bodies = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    json_bodies,
    valid_bodies,
    near_valid_bodies,
    damaged_bodies(),
    sized_bodies(),
)


# The parser ---------------------------------------------------------------------------------


def check_packet(packet: Packet) -> None:
    """A parsed packet obeys §2 and is a fixpoint of encode/parse."""
    if isinstance(packet, Response):
        assert packet.id is None or usable(packet.id)
        assert packet.status in ("ok", "error")
        assert type(packet.code) is int
        assert (packet.code == 0) == (packet.status == "ok")
        if packet.status == "error":
            assert type(packet.error) is str
    elif isinstance(packet, Request):
        assert usable(packet.id)
        assert type(packet.command) is str
        assert packet.command
        assert packet.params is None or type(packet.params) is dict
    else:
        assert isinstance(packet, Event)
        assert usable(packet.id)
        assert type(packet.name) is str
        assert packet.name
    assert packet.meta is None or type(packet.meta) is dict
    frame = encode(packet)
    wire = orjson.loads(frame)
    assert wire["type"] == packet.type
    assert wire["id"] == packet.id
    if isinstance(packet, Response):
        assert type(wire["code"]) is int  # always sent (§2)
        assert ("error" in wire) == (packet.status == "error")
    again = parse_message(frame)
    assert type(again) is type(packet)
    assert encode(again) == frame


def check_parse(raw: bytes | str | bytearray | memoryview) -> Packet | ProtocolError:
    """`parse_message` gives a §2 packet or a §4 ProtocolError, never anything else."""
    try:
        packet = parse_message(raw)
    except ProtocolError as exc:
        error = exc
    else:
        check_packet(packet)
        return packet
    assert error.code == 400
    assert str(error)
    assert error.packet_id is None or usable(error.packet_id)
    assert error.packet_id == usable_id_of(raw)
    assert error.packet_type in (None, "request", "response", "event")
    return error


@fuzz(1000)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100),
        text_with_surrogates,
        st.binary(max_size=100).map(bytearray),
        st.binary(max_size=100).map(lambda raw: memoryview(raw)),
        json_bodies.map(lambda b: b.decode("utf-8", "surrogatepass")),
        damaged_bodies(),
    )
)
def test_parser_on_arbitrary_input(raw: bytes | str | bytearray | memoryview) -> None:
    check_parse(raw)


@fuzz(600)
@given(value=json_values, ascii_only=st.booleans())
def test_parser_on_arbitrary_json(value: Any, ascii_only: bool) -> None:
    result = check_parse(dumps(value, ascii_only))
    if not isinstance(value, dict):
        assert isinstance(result, ProtocolError)
        assert result.packet_id is None


MODELS: dict[str, type[Request] | type[Response] | type[Event]] = {
    "request": Request,
    "response": Response,
    "event": Event,
}


@fuzz(1500)
@given(obj=near_valid() | packet_dicts(json_values), ascii_only=st.booleans())
@example(obj={"id": "a", "type": "response", "status": "ok", "code": False}, ascii_only=True)
@example(obj={"id": "a", "type": "response", "status": "error", "code": 1e30}, ascii_only=True)
@example(
    obj={"id": "a", "type": "request", "command": "c", "params": {"n": 2**70}}, ascii_only=True
)
def test_parser_on_near_valid_packets(obj: dict[str, Any], ascii_only: bool) -> None:
    raw = dumps(obj, ascii_only)
    result = check_parse(raw)
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        assert isinstance(result, ProtocolError)  # NaN or an int too large for a double
        return
    # What the parser accepts is what §2 allows; and its hand-written fast path agrees with
    # pydantic: it never accepts what the models refuse, and builds the same packet.
    kind = decoded.get("type")
    if not (isinstance(kind, str) and kind in MODELS):
        assert isinstance(result, ProtocolError)
        return
    try:
        expected: Packet | None = MODELS[kind].model_validate(copy.deepcopy(decoded))
    except ValidationError:
        expected = None
    try:
        got: Packet | None = parse_object(copy.deepcopy(decoded))
    except ProtocolError:
        got = None
    assert (got is None) == isinstance(result, ProtocolError)
    if expected is None or (kind != "response" and not usable(decoded.get("id"))):
        assert got is None, f"accepted by the parser, refused by the model: {decoded!r}"
        return
    assert got is not None, f"refused by the parser, accepted by the model: {decoded!r}"
    assert type(got) is type(expected)
    assert got == expected
    assert got.model_dump() == expected.model_dump()
    assert encode(got) == encode(expected)


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "response", "status": "ok"},
        {"type": "response", "status": "error", "code": 500, "error": "x"},
    ],
)
def test_a_response_without_id_is_read_as_the_model_reads_it(obj: dict[str, Any]) -> None:
    try:
        expected: Response | None = Response.model_validate(obj)
    except ValidationError:
        expected = None
    try:
        got: Packet | None = parse_message(orjson.dumps(obj))
    except ProtocolError as exc:
        assert (exc.code, exc.packet_id) == (400, None)  # noqa: PT017 - not the point here
        got = None
    assert got == expected


json64_objects = st.dictionaries(text, json64, max_size=4)
metas64 = st.none() | st.dictionaries(text, json64, min_size=1, max_size=3)
valid_packets = st.one_of(
    st.builds(Request, id=usable_ids, command=commands, params=st.none() | json64_objects),
    st.builds(Event, id=usable_ids, name=event_names, data=json64),
    st.builds(Response.success, usable_ids | st.none(), json64),
    st.builds(
        Response.fail,
        usable_ids | st.none(),
        text,
        int64.filter(bool),
    ),
)


@fuzz(400)
@given(packet=valid_packets, meta=metas64)
def test_valid_packets_round_trip(packet: Packet, meta: dict[str, Any] | None) -> None:
    packet = packet.model_copy(update={"meta": meta})
    again = parse_message(encode(packet))
    assert type(again) is type(packet)
    assert again == packet
    check_packet(again)


# One real server for the endpoint fuzzers ------------------------------------------------------


def principal_of(authorization: str | None) -> str | None:
    """The test's `authenticate`: no credentials is "anon", alice and bob by their bearer key."""
    if authorization is None:
        return "anon"
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token in PRINCIPALS[1:]:
        return token
    return None


def auth_headers(principal: str) -> dict[str, str]:
    return {} if principal == "anon" else {"Authorization": f"Bearer {principal}"}


class Typed(Command[dict[str, int]]):
    """A typed route: its params are validated (400 when they do not fit)."""

    n: int = Field(ge=-(2**63), lt=2**63)
    label: str = ""


class ErrorLog(logging.Handler):
    """Every record at ERROR or above, from any logger (aiohttp logs a handler that raised)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


@dataclass
class Live:
    """The server, a client session, and what the fuzzers check against."""

    loop: asyncio.AbstractEventLoop
    server: ProtocolServer
    http: aiohttp.ClientSession
    keys: dict[str, str]
    """A full session per principal, opened once: presented by others, each must get 403."""
    errors: ErrorLog
    loop_errors: list[str]
    seen: set[tuple[str, str]] = field(default_factory=set)
    """(session key, request id) already sent: a repeat gets the first answer (§6)."""
    tally: Counter[str] = field(default_factory=Counter)
    """What the cases reached: a run that never reached a refusal would prove little."""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        """Run one call on the server's loop; a hang fails the test instead of the run."""
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def problems(self) -> list[str]:
        return self.errors.records + self.loop_errors

    def clear(self) -> None:
        self.errors.records.clear()
        self.loop_errors.clear()
        self.tally.clear()

    def reached(self, *outcomes: str) -> None:
        """Each outcome was reached at least once (only checked at full scale)."""
        if SCALE >= 1:
            missing = [outcome for outcome in outcomes if not self.tally[outcome]]
            assert not missing, f"never reached: {missing} in {dict(self.tally)}"


async def start_live(loop: asyncio.AbstractEventLoop, errors: ErrorLog) -> Live:
    def authenticate(headers: Any) -> str | None:
        return principal_of(headers.get("Authorization"))

    server = ProtocolServer(
        port=0,
        authenticate=authenticate,
        max_message_size=LIMIT,
        session_buffer=50,
        shutdown_timeout=1.0,
    )

    @server.command("echo")
    def echo(connection: Connection, params: dict[str, Any]) -> Any:
        return params

    @server.command("size")
    def size(connection: Connection, params: dict[str, Any]) -> int:
        return len(str(params.get("pad", "")))

    @server.command("fail")
    def fail(connection: Connection, params: dict[str, Any]) -> Response:
        return Response.fail("ignored", "failed on purpose", 1001)

    @server.command(Typed)
    def typed(connection: Connection, params: Typed) -> dict[str, int]:
        return {"n": params.n, "length": len(params.label)}

    @server.on_event
    def ignore(connection: Connection, event: Event) -> None:
        return None

    await server.start_serving()
    http = aiohttp.ClientSession(auto_decompress=False)
    keys: dict[str, str] = {}
    for principal in PRINCIPALS:
        # A poll opens a full session (§7): it lives for the whole run.
        async with http.get(
            f"http://127.0.0.1:{server.port}/events", headers=auth_headers(principal)
        ) as reply:
            assert reply.status == 200
            keys[principal] = reply.headers[SESSION_HEADER]
    loop_errors: list[str] = []
    loop.set_exception_handler(lambda _, context: loop_errors.append(str(context)))
    return Live(loop, server, http, keys, errors, loop_errors)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """One server and one client for every endpoint fuzzer, on a loop of this module's own.

    Hypothesis drives synchronous tests; each case runs its calls with `Live.run`.
    """
    loop = asyncio.new_event_loop()
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        live = loop.run_until_complete(start_live(loop, errors))
        try:
            yield live
        finally:
            loop.run_until_complete(live.http.close())
            loop.run_until_complete(live.server.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        logging.getLogger().removeHandler(errors)
        loop.close()


def check_response(body: bytes) -> dict[str, Any]:
    """The body is one Response as §2 describes it, and the SDK reads it back."""
    obj = orjson.loads(body)
    assert type(obj) is dict
    assert obj["type"] == "response"
    assert obj["status"] in ("ok", "error")
    assert type(obj["code"]) is int
    assert (obj["code"] == 0) == (obj["status"] == "ok")
    if obj["status"] == "error":
        assert type(obj["error"]) is str
        assert obj["error"]
    assert obj["id"] is None or usable(obj["id"])
    assert isinstance(parse_message(body), Response)
    return obj


async def assert_healthy(live: Live) -> None:
    """After the fuzzing, a normal call on every endpoint is still answered normally."""
    headers = {**auth_headers("alice"), SESSION_HEADER: live.keys["alice"]}
    packet = {"id": "health-check", "type": "request", "command": "echo", "params": {"a": 1}}
    async with live.http.post(f"{live.base}/general", json=packet, headers=headers) as reply:
        assert reply.status == 200
        assert check_response(await reply.read())["data"] == {"a": 1}
    async with live.http.get(f"{live.base}/events?wait=0", headers=headers) as reply:
        assert reply.status == 200
        assert type(orjson.loads(await reply.read())) is list
    async with live.http.ws_connect(f"ws://127.0.0.1:{live.server.port}/") as ws:
        greeting = await ws.receive_json()
        assert (greeting["type"], greeting["name"]) == ("event", "session")
        await ws.send_json(packet)
        assert (await ws.receive_json())["data"] == {"a": 1}


# Requests of every kind: headers -----------------------------------------------------------

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
FRAMING = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "content-encoding",
        "host",
        "connection",
        "expect",
        "upgrade",
        "authorization",
        "sec-websocket-protocol",
        SESSION_HEADER.lower(),
    }
)
extra_headers = st.lists(
    st.tuples(
        st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,15}\Z").filter(
            lambda name: name.lower() not in FRAMING
        ),
        header_text,
    ),
    max_size=3,
)


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of `choices`, each drawn about `weight` times in the sum of the weights."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(pool) - 1).flatmap(lambda index: pool[index])


# Mostly accepted credentials, so that most calls go on to be read; a third refused (401).
authorizations = weighted(
    (4, st.none()),
    (3, st.sampled_from(["Bearer alice", "Bearer bob", "bearer  alice "])),
    (1, st.sampled_from(["Bearer carol", "Bearer", "Basic YWxpY2U6eA==", "", " "])),
    (
        2,
        st.sampled_from(["Bearer ", "Basic ", "bearer.", ""]).flatmap(
            lambda scheme: header_text.map(lambda rest: scheme + rest)
        ),
    ),
)


@dataclass(frozen=True)
class Key:
    """The session key a call presents: none, a live one of some principal, or any text."""

    owner: str | None = None
    raw: str | None = None

    def value(self, live: Live) -> str | None:
        return live.keys[self.owner] if self.owner is not None else self.raw


keys = weighted(
    (4, st.just(Key())),
    (2, st.sampled_from(PRINCIPALS).map(lambda owner: Key(owner=owner))),
    (2, header_text.map(lambda raw: Key(raw=raw))),
)


def headers_of(
    live: Live, authorization: str | None, key: Key, extra: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    headers = list(extra)
    if authorization is not None:
        headers.append(("Authorization", authorization))
    presented = key.value(live)
    if presented is not None:
        headers.append((SESSION_HEADER, presented))
    return headers


def refusal_by_credentials(authorization: str | None, key: Key, secret_in_url: bool) -> int:
    """401 or 403 when §7 refuses the caller before anything else, else 0."""
    principal = principal_of(authorization)
    if principal is None or secret_in_url:
        return 401
    if key.owner is not None and key.owner != principal:
        return 403
    return 0


def check_session_header(
    live: Live, status: int, headers: Any, authorization: str | None, key: Key
) -> None:
    """A refused call gets no session key (§4); an accepted one gets its own session's."""
    returned = headers.get(SESSION_HEADER)
    if status != 200:
        assert returned is None, f"a {status} refusal opened a session"
        return
    assert returned
    if key.owner is not None and key.owner == principal_of(authorization):
        assert returned == live.keys[key.owner]
    else:
        assert returned not in live.keys.values()  # nobody else's session, ever


# POST /general ---------------------------------------------------------------------------------

content_types = st.none() | st.sampled_from(
    [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "",
    ]
)


@dataclass(frozen=True)
class GeneralCall:
    body: bytes
    encoding: str
    chunked: bool
    authorization: str | None
    key: Key
    content_type: str | None
    extra: list[tuple[str, str]]


general_calls = st.builds(
    GeneralCall,
    body=bodies,
    encoding=st.sampled_from(["identity", "identity", "gzip", "deflate"]),
    chunked=st.booleans(),
    authorization=authorizations,
    key=keys,
    content_type=content_types,
    extra=extra_headers,
)


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    return body


async def post_general(
    live: Live,
    body: bytes,
    headers: list[tuple[str, str]],
    chunked: bool,
) -> tuple[int, str, Any, bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        half = len(body) // 2
        yield body[:half]
        yield body[half:]

    data: Any = chunks() if chunked else body
    async with live.http.post(f"{live.base}/general", data=data, headers=headers) as reply:
        return reply.status, reply.content_type, reply.headers, await reply.read()


def expected_answer(live: Live, call: GeneralCall, packet: Packet, answer: dict[str, Any]) -> None:
    """A dispatched packet gets the answer §4 gives it (a repeat of an id, the first one's)."""
    assert answer["id"] == packet.id
    if not isinstance(packet, Request):
        # An Event or a Response is acknowledged with an ok Response carrying its id.
        assert (answer["status"], answer["code"]) == ("ok", 0)
        return
    session = call.key.value(live) if call.key.owner is not None else None
    if session is not None:
        repeat = (session, packet.id) in live.seen
        live.seen.add((session, packet.id))
        if repeat:
            return
    meta = packet.meta or {}
    if "timeout" in meta or "window" in meta:
        return  # a deadline or a stream (§9, §10) may change the answer
    if packet.command == "echo":
        assert (answer["status"], answer["data"]) == ("ok", packet.params or {})
    elif packet.command == "fail":
        assert answer["code"] == 1001
    elif packet.command == "size":
        assert answer["status"] == "ok"
    elif packet.command == "typed":
        assert answer["code"] in (0, 400)
    else:
        assert answer["code"] == 404


async def check_general(live: Live, call: GeneralCall) -> None:
    headers = headers_of(live, call.authorization, call.key, call.extra)
    if call.content_type is not None:
        headers.append(("Content-Type", call.content_type))
    if call.encoding != "identity":
        headers.append(("Content-Encoding", call.encoding))
    status, content_type, reply_headers, reply = await post_general(
        live, compress(call.body, call.encoding), headers, call.chunked
    )
    note(f"-> {status} {reply!r}")
    assert content_type == "application/json"
    answer = check_response(reply)

    expected = refusal_by_credentials(call.authorization, call.key, secret_in_url=False)
    packet: Packet | None = None
    if not expected and len(call.body) > LIMIT:
        expected = 413  # counted after decompression (§4)
    if not expected:
        try:
            packet = parse_message(call.body)
        except ProtocolError:
            expected = 400
        else:
            expected = 200
    assert status == expected
    live.tally[f"status {status}"] += 1
    if len(call.body) in (LIMIT, LIMIT + 1):
        live.tally[f"{len(call.body) - LIMIT:+} byte at the limit: {status}"] += 1
    if call.encoding != "identity":
        live.tally[f"{call.encoding}: {status}"] += 1
    check_session_header(live, status, reply_headers, call.authorization, call.key)
    if status != 200:
        assert answer["code"] == status
        assert answer["status"] == "error"
        # Only a frame that was read has an id to answer with (§4).
        assert answer["id"] == (usable_id_of(call.body) if status == 400 else None)
        return
    assert packet is not None
    expected_answer(live, call, packet, answer)


def test_general_endpoint_fuzz(live: Live) -> None:
    live.clear()

    @fuzz(1200)
    @given(call=general_calls)
    @example(
        call=GeneralCall(b"x" * (LIMIT + 1), "gzip", False, None, Key(), "application/json", [])
    )
    def run(call: GeneralCall) -> None:
        live.run(check_general(live, call))

    run()
    live.run(assert_healthy(live))
    assert live.problems() == []
    live.reached(
        *(f"status {status}" for status in (200, 400, 401, 403, 413)),
        "+0 byte at the limit: 200",
        "+1 byte at the limit: 413",
        "gzip: 200",
        "gzip: 413",
        "deflate: 200",
    )


def test_general_endpoint_corrupt_compressed_body(live: Live) -> None:
    @settings(PROFILE, max_examples=20, phases=[Phase.explicit, Phase.generate])
    @given(body=st.binary(min_size=1, max_size=64), encoding=st.sampled_from(["gzip", "deflate"]))
    @example(body=b"garbage", encoding="gzip")
    def run(body: bytes, encoding: str) -> None:
        try:
            zlib.decompress(body, wbits=47)  # either format, as a server would read it
        except zlib.error:
            pass
        else:
            return  # a valid stream by chance: not what this test is about
        call = GeneralCall(body, encoding, False, None, Key(), None, [])
        headers = [("Content-Encoding", encoding)]
        status, content_type, reply_headers, reply = live.run(
            post_general(live, body, headers, False)
        )
        assert status == 400, (status, reply)
        # A body that aiohttp's parser inflates as it arrives is refused by aiohttp itself
        # (400, text/plain) before any handler runs; one read by the handler gets §4's
        # Response. Either way: 400, and no session.
        if content_type == "application/json":
            answer = check_response(reply)
            assert (answer["code"], answer["id"]) == (400, None)
        assert SESSION_HEADER not in reply_headers
        check_session_header(live, status, reply_headers, call.authorization, call.key)

    try:
        run()
    finally:
        live.clear()  # aiohttp's parser logs the bodies it cannot inflate


# GET /events -----------------------------------------------------------------------------------

WAIT_SPECIALS = [
    "0", "-1", "0.01", "0.05", "-0", "1e-400", "nan", "NaN", "-nan", "inf", "-inf", "Infinity",
    "-Infinity", "60", "61", "1e9", "1e999", "-1e999", " 0 ", "0x10", "1_0", "", "٣", "½", "abc",
]  # fmt: skip
tiny_waits = st.floats(max_value=0.05, allow_nan=False).map(repr)
waits = st.one_of(st.sampled_from(WAIT_SPECIALS), tiny_waits, text, st.none())
afters = st.none() | st.just("") | text
query_names = st.sampled_from(["x", "key", "token", "Auth", "wait", "after", ""]) | text


@dataclass(frozen=True)
class Poll:
    query: str
    authorization: str | None
    key: Key
    extra: list[tuple[str, str]]


@st.composite
def polls(draw: st.DrawFn) -> Poll:
    if draw(st.integers(0, 9)) == 0:
        # Raw query text: percent escapes that decode to nothing valid, stray separators.
        alphabet = st.sampled_from(list("%&=;+?/abcfFzZ019.-_")) | st.sampled_from(
            ["wait=", "after=", "%ff", "%zz", "%00", "%2", "%C3%A9", "wait=1", "wait=-"]
        )
        query = "".join(draw(st.lists(alphabet, max_size=12)))
    else:
        params: list[tuple[str, str]] = []
        wait = draw(waits)
        if wait is not None:
            params.append(("wait", wait))
        after = draw(afters)
        if after is not None:
            params.append(("after", after))
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
            params.append((draw(query_names), draw(text)))
        params = draw(st.permutations(params))
        query = yarl.URL("http://h/events").with_query(params).raw_query_string
    return Poll(query, draw(authorizations), draw(keys), draw(extra_headers))


def seconds(wait: str) -> float:
    """What the server makes of `wait` (§7: clamped to 0-60; NaN when not a number)."""
    try:
        value = float(wait)
    except ValueError:
        return math.nan
    return value if math.isnan(value) else min(max(value, 0.0), 60.0)


async def get_events(live: Live, poll: Poll, wake: bool) -> tuple[int, str, Any, bytes]:
    url = yarl.URL(f"{live.base}/events?{poll.query}", encoded=True)
    headers = headers_of(live, poll.authorization, poll.key, poll.extra)
    request = asyncio.ensure_future(live.http.get(url, headers=headers))
    if wake:
        # A long wait ends at the first packet: broadcast until the poll is answered.
        while not request.done():
            await live.server.broadcast_event("fuzz.wake", {"to": "a long poll"})
            await asyncio.wait({request}, timeout=0.02)
    async with await request as reply:
        return reply.status, reply.content_type, reply.headers, await reply.read()


async def check_events(live: Live, poll: Poll) -> None:
    query = yarl.URL(f"http://h/events?{poll.query}", encoded=True).query
    secret = any(name.lower() in URL_SECRETS for name in query)
    expected = refusal_by_credentials(poll.authorization, poll.key, secret)
    wait = seconds(query.get("wait", "0"))
    note(f"query {dict(query)!r}, wait {wait}")
    if not expected:
        expected = 400 if math.isnan(wait) else 200
    status, content_type, reply_headers, reply = await get_events(
        live, poll, wake=expected == 200 and wait > 0.05
    )
    note(f"-> {status} {reply!r}")
    assert content_type == "application/json"
    assert status == expected
    live.tally[f"status {status}"] += 1
    if status == 200 and wait > 0.05:
        live.tally["a long wait, woken"] += 1
    check_session_header(live, status, reply_headers, poll.authorization, poll.key)
    if status != 200:
        answer = check_response(reply)
        assert (answer["status"], answer["code"], answer["id"]) == ("error", status, None)
        return
    frames = orjson.loads(reply)
    assert type(frames) is list
    for frame in frames:
        packet = parse_object(frame)
        assert isinstance(packet, Event | Request)
        check_packet(packet)


def test_events_endpoint_fuzz(live: Live) -> None:
    live.clear()

    @fuzz(600)
    @given(poll=polls())
    @example(poll=Poll("wait=inf", None, Key(), []))
    @example(poll=Poll("wait=nan", None, Key(), []))
    @example(poll=Poll("wait=1&key=x", "Bearer alice", Key(owner="alice"), []))
    def run(poll: Poll) -> None:
        live.run(check_events(live, poll))

    run()
    live.run(assert_healthy(live))
    assert live.problems() == []
    live.reached(*(f"status {status}" for status in (200, 400, 401, 403)), "a long wait, woken")


# The WebSocket -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    payload: bytes
    kind: str
    """"text" (valid UTF-8), "binary", or "raw" (a text frame of any bytes)."""
    compress: bool


frames = st.builds(
    Frame,
    payload=st.one_of(
        bodies,
        st.text(max_size=64).map(str.encode),
    ),
    kind=st.sampled_from(["text", "text", "binary", "raw"]),
    compress=st.booleans(),
)


@dataclass
class Socket:
    """The fuzzers' one WebSocket, reopened only after a frame that must close it."""

    ws: aiohttp.ClientWebSocketResponse | None = None
    seen: set[str] = field(default_factory=set)
    count: int = 0
    reopened: int = 0

    async def open(self, live: Live) -> aiohttp.ClientWebSocketResponse:
        if self.ws is None:
            self.ws = await live.http.ws_connect(
                f"ws://127.0.0.1:{live.server.port}/", compress=15, max_msg_size=0
            )
            greeting = await self.ws.receive_json()
            assert (greeting["type"], greeting["name"]) == ("event", "session")
            self.seen.clear()
            self.reopened += 1
        return self.ws


async def check_frame(live: Live, sock: Socket, frame: Frame) -> None:
    ws = await sock.open(live)
    payload = frame.payload
    try:
        payload.decode()
        valid_text = True
    except UnicodeDecodeError:
        valid_text = False
    if frame.kind == "text" and not valid_text:
        payload = payload.decode(errors="replace").encode()  # a text frame of valid UTF-8
        valid_text = True
    opcode = aiohttp.WSMsgType.BINARY if frame.kind == "binary" else aiohttp.WSMsgType.TEXT
    await ws.send_frame(payload, opcode, compress=None if frame.compress else 0)

    closing = set()
    if frame.kind != "binary" and not valid_text:
        closing.add(1007)  # RFC 6455: a text frame must be UTF-8
    if len(payload) > LIMIT:
        closing.add(1009)  # over the size limit (§4)
    if closing:
        message = await ws.receive()
        assert message.type is aiohttp.WSMsgType.CLOSE, message
        assert message.data in closing
        live.tally[f"closed {message.data}"] += 1
        await ws.close()
        sock.ws = None
        return

    expected_id: str | None = None
    answered = True
    try:
        packet = parse_message(payload)
    except ProtocolError:
        expected_id = usable_id_of(payload)
        kind = "bad"
    else:
        answered = isinstance(packet, Request)  # an Event or a Response gets no answer
        expected_id = packet.id
        kind = packet.type
    sock.count += 1
    sentinel = f"sentinel-{sock.count}-{id(sock)}"
    await ws.send_json({"id": sentinel, "type": "request", "command": "echo"})
    got: list[dict[str, Any]] = []
    while not any(answer["id"] == sentinel for answer in got) or (answered and len(got) < 2):
        message = await ws.receive()
        assert message.type is aiohttp.WSMsgType.TEXT, message
        got.append(check_response(message.data.encode()))
    assert sum(answer["id"] == sentinel for answer in got) == 1
    others = [answer for answer in got if answer["id"] != sentinel]
    note(f"{kind} -> {others!r}")
    live.tally[kind] += 1
    if len(payload) == LIMIT:
        live.tally["exactly the limit"] += 1
    if not answered:
        assert others == []
        return
    [answer] = others
    assert answer["id"] == expected_id
    if kind == "bad":
        assert (answer["status"], answer["code"]) == ("error", 400)
        return
    assert isinstance(packet, Request)
    repeat = packet.id in sock.seen
    sock.seen.add(packet.id)
    meta = packet.meta or {}
    if packet.command == "echo" and not repeat and "timeout" not in meta and "window" not in meta:
        assert (answer["status"], answer["data"]) == ("ok", packet.params or {})


def test_websocket_fuzz(live: Live) -> None:
    live.clear()
    sock = Socket()

    @fuzz(600)
    @given(frame=frames)
    @example(frame=Frame(b"\xff\xfe", "raw", False))
    @example(frame=Frame(b'{"id": "a", "type": "request"}', "binary", False))
    def run(frame: Frame) -> None:
        live.run(check_frame(live, sock, frame))

    try:
        run()
    finally:
        still_open = sock.ws is not None
        if sock.ws is not None:
            live.run(sock.ws.close())
    # One connection carried everything but the frames that must close it.
    closes = live.tally["closed 1007"] + live.tally["closed 1009"]
    assert sock.reopened == closes + still_open
    live.run(assert_healthy(live))
    assert live.problems() == []
    live.reached(
        "closed 1007",
        "closed 1009",
        "exactly the limit",
        "bad",
        "request",
        "event",
        "response",
    )
