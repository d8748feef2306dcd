"""The three packets of the wire protocol and their JSON codec (PROTOCOL.md §2-§3).

Pure data: nothing here does I/O. `parse_message` is the one place a frame becomes a packet,
and `encode` the one place a packet becomes a frame; client, server and adapters all use them.

Why one module of about 560 lines: the hand-written fast parser and encoder must accept and
produce exactly what the pydantic models do, field by field (the fuzz tests hold them to it);
kept beside the models, a change to one is made in sight of the other.
"""

from __future__ import annotations

import itertools
import os
from enum import IntEnum
from random import getrandbits as _getrandbits
from typing import Annotated, Any, Final, Literal, TypeAlias, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "SESSION_EVENT",
    "SESSION_HEADER",
    "SUBPROTOCOL",
    "TAKEN_OVER",
    "Event",
    "Packet",
    "Request",
    "RequestPacket",
    "Response",
    "ResponsePacket",
    "StatusCode",
    "encode",
    "format_validation_error",
    "kept",
    "new_id",
    "parse_message",
    "parse_object",
]

PROTOCOL_VERSION: Final = 1
"""The integer protocol version this package speaks (served by `/about`)."""

MAX_ID_LENGTH: Final = 128

_M = TypeVar("_M", bound=BaseModel)

SESSION_HEADER: Final = "X-Siyi-Session"
"""The HTTP header that carries the session key, both ways (§7)."""
SESSION_EVENT: Final = "session"
"""The event a server sends first on every packet WebSocket (§7)."""
SUBPROTOCOL: Final = "siyi.v1"
"""The WebSocket subprotocol a browser offers (with ``bearer.<key>``) and the server selects."""
TAKEN_OVER: Final = 4001
"""The close code of a WebSocket whose session a newer connection took over (§7)."""


class StatusCode(IntEnum):
    """The status codes of a Response (PROTOCOL.md §3). Codes from 1000 up are the application's."""

    OK = 0
    FAILED = 1
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    UNKNOWN_COMMAND = 404
    TIMEOUT = 408
    GONE = 410
    TOO_LARGE = 413
    BUSY = 429
    CANCELLED = 499
    INTERNAL_ERROR = 500
    UNAVAILABLE = 503


def _id_prefix() -> str:
    # The first 80 bits of a UUID4, random but for its version (4) and variant (8-b) nibbles.
    bits = _getrandbits(80) & ~(0xF << 28) & ~(0xC << 12) | (0x4 << 28) | (0x8 << 12)
    h = f"{bits:020x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:]}-"


_ID_LAST = 0xFFFFFFFFFFFF
"""The largest counter the last group of a UUID (12 hex digits) holds."""


def _fresh_ids() -> None:
    # At start, in a forked child (which must not repeat its parent's ids) and, after 2**47
    # ids at the least, when the counter would outgrow its 12 digits.
    global _id_prefix_now, _id_counter
    _id_prefix_now = _id_prefix()
    _id_counter = itertools.count(_getrandbits(47))


_id_prefix_now = ""
_id_counter = itertools.count()
_fresh_ids()
os.register_at_fork(after_in_child=_fresh_ids)


def new_id() -> str:
    """Return a fresh packet id: a UUID4 string (PROTOCOL.md §1).

    Its first 80 bits are random per process (with the version and variant nibbles of RFC
    4122), its last 48 a counter: unique, not secret. The server binds ids to their sender
    (§6), so a guessable id costs nothing, and this is several times cheaper than 122 fresh
    random bits on every packet sent.
    """
    n = next(_id_counter)
    if n > _ID_LAST:
        _fresh_ids()
        n = next(_id_counter)
    return "%s%012x" % (_id_prefix_now, n)  # noqa: UP031 - the quickest way to format it


_setattr = object.__setattr__
# BaseModel's slots, set through their descriptors: a third cheaper than object.__setattr__.
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def _trusted(cls: type[_M], values: dict[str, Any]) -> _M:
    """Build a packet from values already known valid, skipping validation (the hot path).

    It does what pydantic's `model_construct` does for these models (no aliases, no extras
    kept, no private attributes), without its generic loops. Callers check every field's
    type and constraint first, exactly as the model would; anything unusual goes through
    pydantic instead, so the result and the errors are the same either way.
    """
    packet = cls.__new__(cls)
    _setattr(packet, "__dict__", values)
    _set_fields_set(packet, set(values))
    _set_extra(packet, None)
    _set_private(packet, None)
    return packet


def _is_id(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_ID_LENGTH


PacketId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


def plain_arguments(command: object, params: object) -> bool:
    """True when a Request of `command` with `params` can be built without pydantic.

    What the model requires of them (a non-empty string, a dict or None), checked by hand: the
    SDK's senders build Requests (or their frames) directly when it holds, else ask pydantic,
    which then says what is wrong.
    """
    return type(command) is str and bool(command) and (params is None or type(params) is dict)


class Request(BaseModel):
    """Ask the other side to run `command` with `params`; it answers with one Response.

    `Request(command="echo", params={"x": 1})` generates its id.

    Attributes:
        id: unique per sender while in flight (1-128 characters).
        command: the command's name.
        params: the command's arguments, a JSON object or None.
        meta: what travels beside the packet (PROTOCOL.md §2): ``timeout``, ``window``,
            ``traceparent``, ``tracestate``; None when empty.
    """

    model_config = ConfigDict(extra="ignore")

    id: PacketId = Field(default_factory=new_id)
    type: Literal["request"] = "request"
    command: str = Field(min_length=1)
    params: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None

    @classmethod
    def make(
        cls,
        command: str,
        params: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Request:
        """Build a Request with a fresh id: what ``Request(command=..., params=...)`` builds.

        The SDK's own senders use it: the arguments are checked by hand (then the model is
        built without a second validation), and handed to pydantic when unusual.

        Raises:
            pydantic.ValidationError: `command` is empty or not a string, or `params` is not
                a dict.
        """
        if plain_arguments(command, params) and (meta is None or type(meta) is dict):
            return _trusted(
                cls,
                {
                    "id": new_id(),
                    "type": "request",
                    "command": command,
                    "params": params,
                    "meta": meta,
                },
            )
        return cls(command=command, params=params, meta=meta)


class Event(BaseModel):
    """A one-way notice; nobody answers it.

    Attributes:
        id: unique per sender (generated when not given).
        name: the event's name.
        data: any JSON value.
        meta: what travels beside the packet (PROTOCOL.md §2); None when empty.
    """

    model_config = ConfigDict(extra="ignore")

    id: PacketId = Field(default_factory=new_id)
    type: Literal["event"] = "event"
    name: str = Field(min_length=1)
    data: Any = None
    meta: dict[str, Any] | None = None


class Response(BaseModel):
    """The answer to exactly one Request, carrying its id.

    Build one with `Response.success(id, data)` or `Response.fail(id, error, code)`. `code` is 0
    exactly when `status` is "ok"; when it is left out (the seed's older form) it is read as 0 for
    ok and 1 for error.

    Attributes:
        id: the id of the Request answered; None only when that request had no usable id.
        status: "ok" or "error".
        code: 0 for ok, else a `StatusCode` or an application code (>= 1000).
        data: the result (ok).
        error: a human-readable message (error).
        meta: what travels beside the packet (PROTOCOL.md §2); None when empty.
    """

    model_config = ConfigDict(extra="ignore")

    id: PacketId | None
    type: Literal["response"] = "response"
    status: Literal["ok", "error"]
    code: int = -1  # never kept: `_default_code` fills in a missing code from `status`
    data: Any = None
    error: str | None = None
    meta: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_code(cls, data: Any) -> Any:
        # Done before validation, on the input, so that an explicit code (even -1) is checked
        # against the status like any other.
        if isinstance(data, dict) and data.get("code") is None:
            data = {**data, "code": 0 if data.get("status") == "ok" else int(StatusCode.FAILED)}
        return data

    @model_validator(mode="after")
    def _check_code(self) -> Response:
        if (self.code == 0) != (self.status == "ok"):
            raise ValueError(f"code {self.code} does not agree with status {self.status!r}")
        if self.status == "error" and self.error is None:
            self.error = f"error {self.code}"
        return self

    @property
    def ok(self) -> bool:
        """True when the status is "ok"."""
        return self.status == "ok"

    @classmethod
    def success(cls, id: str | None, data: Any = None) -> Response:
        """Build an ok Response.

        Args:
            id: the id of the Request answered.
            data: the result, any JSON-serialisable value.
        """
        if id is None or _is_id(id):
            return _trusted(
                cls,
                {
                    "id": id,
                    "type": "response",
                    "status": "ok",
                    "code": 0,
                    "data": data,
                    "error": None,
                    "meta": None,
                },
            )
        return cls(id=id, status="ok", code=0, data=data)

    @classmethod
    def fail(cls, id: str | None, error: str, code: int = StatusCode.FAILED) -> Response:
        """Build an error Response.

        Args:
            id: the id of the Request answered.
            error: a human-readable message.
            code: a non-zero status code (default 1, FAILED).

        Raises:
            pydantic.ValidationError: when `code` is 0.
        """
        # StatusCode members are ints too: the codes the SDK itself answers with.
        if (
            (id is None or _is_id(id))
            and type(error) is str
            and isinstance(code, int)
            and not isinstance(code, bool)
            and code
        ):
            return _trusted(
                cls,
                {
                    "id": id,
                    "type": "response",
                    "status": "error",
                    "code": int(code),
                    "data": None,
                    "error": error,
                    "meta": None,
                },
            )
        return cls(id=id, status="error", code=code, error=error)


RequestPacket: TypeAlias = Request
"""The adapter layer's name for `Request`."""
ResponsePacket: TypeAlias = Response
"""The adapter layer's name for `Response`."""
Packet: TypeAlias = Request | Response | Event
"""Any of the three packets."""

_MODELS: Final[dict[object, type[Request] | type[Response] | type[Event]]] = {
    "request": Request,
    "response": Response,
    "event": Event,
}


def format_validation_error(exc: ValidationError) -> str:
    """Render a pydantic error as one line: ``field: message; other: message``."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def usable_id(obj: dict[str, Any]) -> str | None:
    """Return the object's `id` if it is usable (a string of 1-128 characters), else None."""
    pid = obj.get("id")
    return pid if _is_id(pid) else None


def _parse_plain(obj: dict[str, Any]) -> Packet | None:
    """The well-formed packets of the hot path, checked by hand; None sends it to pydantic."""
    kind = obj.get("type")
    pid = obj.get("id")
    good_id = type(pid) is str and 0 < len(pid) <= MAX_ID_LENGTH  # `_is_id`, inline
    meta = obj.get("meta")
    if meta is not None and type(meta) is not dict:
        return None  # pydantic says why
    if kind == "request":
        command = obj.get("command")
        params = obj.get("params")
        if (
            good_id
            and type(command) is str
            and command
            and (params is None or type(params) is dict)
        ):
            return _trusted(
                Request,
                {"id": pid, "type": "request", "command": command, "params": params, "meta": meta},
            )
    elif kind == "response":
        status = obj.get("status")
        code = obj.get("code")
        error = obj.get("error")
        # `"id": null` is an answer to a request without a usable id; no `id` at all is not
        # a Response (the model requires the key): pydantic says so.
        if (good_id or (pid is None and "id" in obj)) and (error is None or type(error) is str):
            if status == "ok" and (code is None or (type(code) is int and code == 0)):
                code = 0
            elif status == "error" and code is None:
                code = StatusCode.FAILED.value
            elif not (status == "error" and type(code) is int and code != 0):
                return None
            if status == "error" and error is None:
                error = f"error {code}"
            return _trusted(
                Response,
                {
                    "id": pid,
                    "type": "response",
                    "status": status,
                    "code": code,
                    "data": obj.get("data"),
                    "error": error,
                    "meta": meta,
                },
            )
    elif kind == "event":
        name = obj.get("name")
        if good_id and type(name) is str and name:
            return _trusted(
                Event,
                {"id": pid, "type": "event", "name": name, "data": obj.get("data"), "meta": meta},
            )
    return None


def parse_object(obj: Any) -> Packet:
    """Validate an already-decoded JSON value as a packet.

    Args:
        obj: the decoded JSON value.

    Returns:
        The Request, Response or Event it describes.

    Raises:
        ProtocolError: with code 400 and the usable id (or None) when it is not a valid packet.
    """
    if type(obj) is dict:
        fast = _parse_plain(obj)
        if fast is not None:
            return fast
    return _parse_checked(obj)


def _parse_checked(obj: Any) -> Packet:
    """`parse_object` for what the hand-checked path did not take: pydantic says what is wrong."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"a packet must be a JSON object, not {type(obj).__name__}")
    pid = usable_id(obj)
    kind = obj.get("type")
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ProtocolError(
            f"unknown packet type {kind!r}: expected 'request', 'response' or 'event'",
            packet_id=pid,
        )
    if pid is None and model is not Response:
        raise ProtocolError(
            "no usable id: 'id' must be a string of 1 to 128 characters", packet_id=None
        )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ProtocolError(
            f"invalid {kind}: {format_validation_error(exc)}", packet_id=pid, packet_type=kind
        ) from None


def parse_message(raw: str | bytes | bytearray | memoryview) -> Packet:
    """Decode one frame (one JSON object) into its packet.

    Args:
        raw: the frame's text or UTF-8 bytes.

    Returns:
        The Request, Response or Event it carries.

    Raises:
        ProtocolError: with code 400 and the frame's usable id (or None) when the frame is not
            JSON, not an object, or not a valid packet.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not valid JSON: {exc}") from None
    if type(obj) is dict:  # `parse_object`'s first step, here: every frame read passes
        fast = _parse_plain(obj)
        if fast is not None:
            return fast
    return _parse_checked(obj)


def _default(value: Any) -> Any:
    # orjson calls this only for types it does not know: let results be pydantic models.
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def kept(frame: bytes) -> bytes:
    """An exact-size copy of a frame that will be kept (cached, buffered).

    orjson's output keeps the whole buffer it was written into (about 4 KiB): measured, 50,000
    kept 200-byte frames held 196 MiB, their copies 11 MiB. Frames that are sent and dropped
    need no copy.
    """
    return bytes(memoryview(frame))


def encode_ok(id: str | None, data: Any) -> bytes:
    """Encode the ok Response answering `id` with `data`, without building the model.

    The same bytes as `encode(Response.success(id, data))`: the server's flat path.

    Raises:
        TypeError: when `data` is not JSON-serialisable.
    """
    return orjson.dumps(
        {"id": id, "type": "response", "status": "ok", "code": 0, "data": data}, default=_default
    )


def encode_event(id: str, name: str, data: Any) -> bytes:
    """Encode the Event `name` with `data`, without building the model (streams' chunks).

    Raises:
        TypeError: when `data` is not JSON-serialisable.
    """
    return orjson.dumps({"id": id, "type": "event", "name": name, "data": data}, default=_default)


def encode_request(
    id: str, command: str, params: dict[str, Any] | None, meta: dict[str, Any] | None
) -> bytes:
    """Encode a Request without building the model (the client's calls): as `encode` does.

    Raises:
        TypeError: when `params` is not JSON-serialisable.
    """
    obj: dict[str, Any] = {"id": id, "type": "request", "command": command}
    if params is not None:
        obj["params"] = params
    if meta:
        obj["meta"] = meta
    return orjson.dumps(obj, default=_default)


def encode(packet: Packet) -> bytes:
    """Encode a packet as the UTF-8 JSON bytes of one frame.

    Args:
        packet: the packet to encode.

    Raises:
        TypeError: when its params or data are not JSON-serialisable.
    """
    # Built by hand rather than with model_dump: this is the hot path and the shape is fixed.
    if isinstance(packet, Response):
        obj: dict[str, Any] = {
            "id": packet.id,
            "type": "response",
            "status": packet.status,
            "code": packet.code,
        }
        if packet.status == "ok":
            obj["data"] = packet.data
        else:
            obj["error"] = packet.error
    elif isinstance(packet, Request):
        return encode_request(packet.id, packet.command, packet.params, packet.meta)
    else:
        obj = {"id": packet.id, "type": "event", "name": packet.name, "data": packet.data}
    meta = packet.meta
    if meta:
        obj["meta"] = meta
    return orjson.dumps(obj, default=_default)
