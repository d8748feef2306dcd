"""The packets and their codec (PROTOCOL.md §2-§4), without any I/O."""

from __future__ import annotations

import itertools
import json
import os
import uuid
import warnings
from typing import Any

import pydantic
import pytest

from siyi_sdk import (
    Event,
    ProtocolError,
    Request,
    RequestPacket,
    Response,
    ResponsePacket,
    StatusCode,
    encode,
    parse_message,
)
from siyi_sdk.packets import parse_object

ValidationError = pydantic.ValidationError

SEED_ID = "f47ac10b-58cc-4372-a567-0e02b2c3d479"


def frame(obj: Any) -> str:
    return json.dumps(obj)


# Request ------------------------------------------------------------------------------------


def test_request_generates_a_uuid4_id() -> None:
    first = Request(command="echo", params={"x": 1})
    second = Request(command="echo")
    assert uuid.UUID(first.id).version == 4
    assert first.id != second.id
    assert first.type == "request"
    assert second.params is None


def test_new_ids_are_unique_uuid4s_and_a_forked_child_makes_its_own() -> None:
    from siyi_sdk.packets import new_id

    ids = [new_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    for made in (ids[0], ids[-1]):
        parsed = uuid.UUID(made)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == made
    read, write = os.pipe()
    with warnings.catch_warnings():
        # 3.12+ warns about forking a process with threads; the child only makes ids.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: its ids must not be the parent's next ones
        os.write(write, ",".join(new_id() for _ in range(1000)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode().split(",")
    parent = [new_id() for _ in range(1000)]
    assert len(child) == 1000
    assert not set(child) & set(parent)
    assert child[0].rsplit("-", 2)[0] != parent[0].rsplit("-", 2)[0]  # its own prefix


def test_ids_stay_uuid4s_when_the_counter_runs_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from siyi_sdk import packets

    monkeypatch.setattr(packets, "_id_counter", itertools.count(packets._ID_LAST))
    last, after = packets.new_id(), packets.new_id()
    assert last.endswith("-ffffffffffff")
    for made in (last, after):
        parsed = uuid.UUID(made)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == made
    assert last.rsplit("-", 1)[0] != after.rsplit("-", 1)[0]  # a fresh prefix and counter


def test_request_keeps_a_given_id() -> None:
    assert Request(id="abc", command="echo").id == "abc"


def test_request_packet_is_request() -> None:
    assert RequestPacket is Request
    assert ResponsePacket is Response


# Response -----------------------------------------------------------------------------------


def test_response_success() -> None:
    resp = Response.success("r1", data=["Player1", "Steve"])
    assert (resp.id, resp.status, resp.code, resp.data, resp.error) == (
        "r1",
        "ok",
        0,
        ["Player1", "Steve"],
        None,
    )
    assert resp.ok


def test_response_fail_defaults_to_code_1() -> None:
    resp = Response.fail("r1", "no such world")
    assert (resp.status, resp.code, resp.error) == ("error", StatusCode.FAILED, "no such world")
    assert resp.code == 1
    assert not resp.ok


def test_response_fail_with_code() -> None:
    resp = Response.fail("r1", "gone", 1234)
    assert resp.code == 1234
    assert resp.status == "error"


def test_response_fail_with_code_zero_is_rejected() -> None:
    with pytest.raises(pydantic.ValidationError):
        Response.fail("r1", "oops", 0)


@pytest.mark.parametrize(("status", "code"), [("ok", 0), ("error", 1)])
def test_response_without_code_reads_the_seed_default(status: str, code: int) -> None:
    # The seed's older form has no `code`: 0 for ok, 1 for error.
    resp = Response.model_validate({"id": "r1", "type": "response", "status": status})
    assert resp.code == code
    parsed = parse_message(frame({"id": "r1", "type": "response", "status": status}))
    assert isinstance(parsed, Response)
    assert parsed.code == code


@pytest.mark.parametrize(("status", "code"), [("ok", 1), ("ok", 500), ("ok", -1), ("error", 0)])
def test_code_disagreeing_with_status_is_rejected(status: str, code: int) -> None:
    with pytest.raises(pydantic.ValidationError):
        Response(id="r1", status=status, code=code)
    with pytest.raises(ProtocolError) as info:
        parse_message(frame({"id": "r1", "type": "response", "status": status, "code": code}))
    assert info.value.packet_id == "r1"
    assert info.value.code == 400


@pytest.mark.parametrize("code", [-1, 2, 404, 1000])
def test_any_non_zero_code_is_kept_for_an_error(code: int) -> None:
    parsed = parse_message(
        frame({"id": "r1", "type": "response", "status": "error", "code": code, "error": "x"})
    )
    assert isinstance(parsed, Response)
    assert parsed.code == code


def test_response_id_may_be_null() -> None:
    parsed = parse_message(
        frame({"id": None, "type": "response", "status": "error", "code": 400, "error": "bad"})
    )
    assert isinstance(parsed, Response)
    assert parsed.id is None


# Status codes -------------------------------------------------------------------------------


def test_status_code_values_match_the_protocol() -> None:
    assert {code.name: int(code) for code in StatusCode} == {
        "OK": 0,
        "FAILED": 1,
        "BAD_REQUEST": 400,
        "UNAUTHORIZED": 401,
        "FORBIDDEN": 403,
        "UNKNOWN_COMMAND": 404,
        "TIMEOUT": 408,
        "GONE": 410,
        "TOO_LARGE": 413,
        "BUSY": 429,
        "CANCELLED": 499,
        "INTERNAL_ERROR": 500,
        "UNAVAILABLE": 503,
    }


# parse_message: good frames -----------------------------------------------------------------


def test_parse_the_seeds_request() -> None:
    packet = parse_message(
        frame(
            {
                "id": SEED_ID,
                "type": "request",
                "command": "get_player_list",
                "params": {"world": "overworld"},
            }
        )
    )
    assert packet == Request(id=SEED_ID, command="get_player_list", params={"world": "overworld"})


def test_parse_the_seeds_event() -> None:
    raw = {
        "id": "a1b2c3d4-e5f6-7890-1234-567890abcdef",
        "type": "event",
        "name": "player_joined",
        "data": {"player_name": "Herobrine"},
    }
    packet = parse_message(frame(raw))
    assert isinstance(packet, Event)
    assert (packet.id, packet.name, packet.data) == (raw["id"], raw["name"], raw["data"])


def test_parse_accepts_text_bytes_and_bytearray() -> None:
    raw = b'{"id": "b", "type": "event", "name": "n"}'
    for form in (raw, raw.decode(), bytearray(raw), memoryview(raw)):
        assert parse_message(form) == Event(id="b", name="n")


def test_params_may_be_null_or_absent() -> None:
    for extra in ({}, {"params": None}):
        packet = parse_message(frame({"id": "a", "type": "request", "command": "c", **extra}))
        assert isinstance(packet, Request)
        assert packet.params is None


def test_extra_fields_are_ignored() -> None:
    packet = parse_message(
        frame(
            {
                "id": "a",
                "type": "request",
                "command": "c",
                "params": {"k": 1},
                "trace": "x",
                "version": 7,
            }
        )
    )
    assert packet == Request(id="a", command="c", params={"k": 1})
    assert not hasattr(packet, "trace")
    resp = parse_message(frame({"id": "a", "type": "response", "status": "ok", "extra": [1]}))
    assert isinstance(resp, Response)
    event = parse_message(frame({"id": "a", "type": "event", "name": "n", "extra": {}}))
    assert isinstance(event, Event)


def test_max_length_id_is_usable() -> None:
    packet = parse_message(frame({"id": "x" * 128, "type": "request", "command": "c"}))
    assert packet.id == "x" * 128


# parse_message: bad frames (PROTOCOL.md §4) -------------------------------------------------

NO_USABLE_ID = [
    pytest.param(b"not json at all", id="not-json"),
    pytest.param(b'{"id": "a", "type": "request",', id="truncated-json"),
    pytest.param(b"", id="empty-frame"),
    pytest.param(b"[1, 2, 3]", id="json-array"),
    pytest.param(b'"a string"', id="json-string"),
    pytest.param(b"42", id="json-number"),
    pytest.param(b"null", id="json-null"),
    pytest.param(frame({"type": "request", "command": "c"}), id="missing-id"),
    pytest.param(frame({"id": "", "type": "request", "command": "c"}), id="empty-id"),
    pytest.param(frame({"id": "x" * 129, "type": "request", "command": "c"}), id="129-char-id"),
    pytest.param(frame({"id": 123, "type": "request", "command": "c"}), id="int-id"),
    pytest.param(frame({"id": None, "type": "request", "command": "c"}), id="null-id"),
    pytest.param(frame({"id": ["a"], "type": "request", "command": "c"}), id="list-id"),
    pytest.param(frame({"id": {"a": 1}, "type": "event", "name": "n"}), id="object-id-event"),
    pytest.param(frame({"type": "banana"}), id="missing-id-unknown-type"),
]


@pytest.mark.parametrize("raw", NO_USABLE_ID)
def test_frames_without_a_usable_id(raw: str | bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message(raw)
    assert info.value.packet_id is None
    assert info.value.code == 400
    assert str(info.value)


USABLE_ID_BUT_INVALID = [
    pytest.param({"id": "k1", "type": "banana", "command": "c"}, id="unknown-type"),
    pytest.param({"id": "k1", "command": "c"}, id="missing-type"),
    pytest.param({"id": "k1", "type": 5, "command": "c"}, id="non-string-type"),
    pytest.param({"id": "k1", "type": "request"}, id="no-command"),
    pytest.param({"id": "k1", "type": "request", "command": ""}, id="empty-command"),
    pytest.param({"id": "k1", "type": "request", "command": 7}, id="non-string-command"),
    pytest.param({"id": "k1", "type": "request", "command": "c", "params": [1]}, id="list-params"),
    pytest.param({"id": "k1", "type": "request", "command": "c", "params": "x"}, id="str-params"),
    pytest.param({"id": "k1", "type": "event"}, id="event-without-name"),
    pytest.param({"id": "k1", "type": "response", "status": "maybe"}, id="bad-status"),
    pytest.param({"id": "k1", "type": "response"}, id="response-without-status"),
]


@pytest.mark.parametrize("obj", USABLE_ID_BUT_INVALID)
def test_frames_with_a_usable_id_keep_it(obj: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message(frame(obj))
    assert info.value.packet_id == "k1"
    assert info.value.code == 400


def test_protocol_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="JSON"):
        parse_message(b"{")


# encode -------------------------------------------------------------------------------------

ROUND_TRIPS = [
    pytest.param(Request(command="get_player_list", params={"world": "overworld"}), id="request"),
    pytest.param(Request(command="ping"), id="request-no-params"),
    pytest.param(Response.success("r1", data={"a": [1, 2, None]}), id="ok"),
    pytest.param(Response.success("r1"), id="ok-no-data"),
    pytest.param(Response.fail("r1", "nope", 403), id="error"),
    pytest.param(Response.fail(None, "bad frame", 400), id="error-null-id"),
    pytest.param(Event(name="player_joined", data={"player_name": "Herobrine"}), id="event"),
    pytest.param(Event(name="tick"), id="event-no-data"),
]


@pytest.mark.parametrize("packet", ROUND_TRIPS)
def test_encode_round_trips(packet: Request | Response | Event) -> None:
    raw = encode(packet)
    assert isinstance(raw, bytes)
    assert parse_message(raw) == packet
    assert parse_message(raw.decode()) == packet


def test_encoded_shapes_match_the_protocol() -> None:
    ok = json.loads(encode(Response.success("r1", ["Player1"])))
    assert ok == {"id": "r1", "type": "response", "status": "ok", "code": 0, "data": ["Player1"]}
    err = json.loads(encode(Response.fail("r1", "unknown command: 'x'", 404)))
    assert err == {
        "id": "r1",
        "type": "response",
        "status": "error",
        "code": 404,
        "error": "unknown command: 'x'",
    }
    req = json.loads(encode(Request(id=SEED_ID, command="c", params={"w": 1})))
    assert req == {"id": SEED_ID, "type": "request", "command": "c", "params": {"w": 1}}
    assert "params" not in json.loads(encode(Request(command="c")))
    event = json.loads(encode(Event(id="e1", name="n", data=[1])))
    assert event == {"id": "e1", "type": "event", "name": "n", "data": [1]}


def test_encode_serialises_pydantic_models_in_data() -> None:
    class Player(pydantic.BaseModel):
        name: str

    raw = json.loads(encode(Response.success("r1", [Player(name="Steve")])))
    assert raw["data"] == [{"name": "Steve"}]


def test_encode_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(TypeError):
        encode(Response.success("r1", object()))


# The hot path checks well-formed packets by hand: it must agree with pydantic everywhere.
SAMPLES: list[dict[str, Any]] = [
    {"id": "r1", "type": "request", "command": "echo", "params": {"a": [1, {"b": None}]}},
    {"id": "r2", "type": "request", "command": "echo", "params": None},
    {"id": "r3", "type": "request", "command": "echo"},
    {"id": "r4", "type": "request", "command": "echo", "extra": 1},
    {"id": "r5", "type": "request", "command": "", "params": {}},
    {"id": "r6", "type": "request", "command": 7},
    {"id": "r7", "type": "request", "command": "echo", "params": [1]},
    {"id": "x" * 128, "type": "request", "command": "echo"},
    {"id": "x" * 129, "type": "request", "command": "echo"},
    {"id": "", "type": "request", "command": "echo"},
    {"id": 5, "type": "request", "command": "echo"},
    {"id": "s1", "type": "response", "status": "ok", "code": 0, "data": [1, 2]},
    {"id": "s2", "type": "response", "status": "ok", "data": None},
    {"id": "s3", "type": "response", "status": "ok", "code": None, "data": 1},
    {"id": "s4", "type": "response", "status": "error", "code": 404, "error": "nope"},
    {"id": "s5", "type": "response", "status": "error", "error": "old form"},
    {"id": "s6", "type": "response", "status": "error", "code": 1004},
    {"id": None, "type": "response", "status": "error", "code": 400, "error": "bad"},
    {"id": "s7", "type": "response", "status": "ok", "code": 3},
    {"id": "s8", "type": "response", "status": "error", "code": 0, "error": "x"},
    {"id": "s9", "type": "response", "status": "maybe", "code": 0},
    {"id": "s10", "type": "response", "status": "ok", "code": 0.0},
    {"id": "s11", "type": "response", "status": "ok", "code": True},
    {"id": "s12", "type": "response", "status": "error", "code": 500, "error": 7},
    {"id": "s13", "type": "response", "status": "ok", "code": 0, "error": "kept"},
    {"id": "e1", "type": "event", "name": "player_joined", "data": {"p": "H"}},
    {"id": "e2", "type": "event", "name": "tick"},
    {"id": "e3", "type": "event", "name": ""},
    {"id": "e4", "type": "event", "name": None},
]


@pytest.mark.parametrize("sample", SAMPLES, ids=[str(s.get("id"))[:8] for s in SAMPLES])
def test_the_fast_path_agrees_with_pydantic(sample: dict[str, Any]) -> None:
    models: dict[str, type[Request] | type[Response] | type[Event]] = {
        "request": Request,
        "response": Response,
        "event": Event,
    }
    model = models[sample["type"]]
    try:
        expected: Any = model.model_validate(sample)
    except ValidationError:
        expected = None
    try:
        got: Any = parse_object(dict(sample))
    except ProtocolError:
        got = None
    if expected is None:
        assert got is None, f"{sample} was accepted by the fast path, refused by pydantic"
        return
    if not (isinstance(sample["id"], str) and 0 < len(sample["id"]) <= 128) and (
        sample["type"] != "response"
    ):
        assert got is None  # no usable id: refused before any model is tried
        return
    assert got is not None, f"{sample} was refused by the fast path, accepted by pydantic"
    assert type(got) is type(expected)
    assert got == expected
    assert got.model_dump() == expected.model_dump()
    assert encode(got) == encode(expected)


def test_fast_constructors_agree_with_validation() -> None:
    assert Response.success("a", [1]) == Response(id="a", status="ok", code=0, data=[1])
    assert Response.success(None) == Response(id=None, status="ok")
    assert Response.fail("a", "no", 404) == Response(id="a", status="error", code=404, error="no")
    with pytest.raises(ValidationError):
        Response.fail("a", "no", 0)
    with pytest.raises(ValidationError):
        Response.success("x" * 129)


def test_request_make_is_request_built_by_pydantic() -> None:
    made = Request.make("echo", {"a": 1})
    assert made == Request(id=made.id, command="echo", params={"a": 1})
    assert uuid.UUID(made.id).version == 4
    assert Request.make("echo").params is None
    with pytest.raises(ValidationError):
        Request.make("")
    with pytest.raises(ValidationError):
        Request.make("echo", [1])  # type: ignore[arg-type]
