"""The server's API as an AsyncAPI 3.0 document (PROTOCOL.md §11), served at ``/asyncapi.json``.

`asyncapi_document` builds it from a server's registry: its typed routes, the typed events it
takes, the events and commands it declared it sends, the status codes of §3 and the security
scheme of §7. `AsyncApiEndpoint` serves it, to a caller with the key when the server has one.

The document's shape, which ``siyi codegen`` reads back:

- ``servers``: ``websocket`` (``ws``/``wss``, the packet WebSocket) and ``http``
  (``http``/``https``, ``POST /general``), both on the host the caller reached.
- ``channels.packets``: the one channel every packet travels on, with every message.
- ``operations``: one per command the server answers (``action: receive`` with a ``reply``),
  per typed event it takes (``receive``), per event and command it declared it sends
  (``send``), and the protocol's own packets (``session``, ``siyi.cancel``, ``siyi.ack``).
  Each carries ``x-siyi-kind`` (``command``, ``event`` or ``protocol``) and ``x-siyi-name``
  (the wire name); a streaming command has ``x-siyi-stream: true`` and its reply lists the
  ``siyi.chunk`` message before the final Response.
- ``components.schemas``: the params of each command as ``<Name>Params``, each result as
  its model's title or ``<Name>Result``, each event's data as its model's title or
  ``<Name>Data``, the models they use, the packet envelopes and ``StatusCode`` (§3).
- ``x-siyi-protocol``: the protocol version, an integer.

Why one module of about 680 lines: most of it is the document's fixed parts (the envelopes,
the protocol's own messages, the security scheme) written out as data, next to the code that
adds the server's own commands and events; ``siyi codegen`` reads back exactly this shape.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson
from aiohttp import web

from .._version import __version__
from ..api.command import Command, EventModel
from ..packets import PROTOCOL_VERSION, SESSION_HEADER, SUBPROTOCOL, StatusCode
from .answers import JSON, refusal

if TYPE_CHECKING:
    from ssl import SSLContext

    from .auth import Gate
    from .dispatch import Dispatcher
    from .lifecycle import ServerSettings

__all__ = ["ASYNCAPI_PATH", "ASYNCAPI_VERSION", "AsyncApiEndpoint", "asyncapi_document"]

ASYNCAPI_PATH: Final = "/asyncapi.json"
"""Where a server serves its AsyncAPI document (under its mount prefix)."""

ASYNCAPI_VERSION: Final = "3.0.0"
"""The version of the AsyncAPI specification the document follows."""

CHANNEL: Final = "packets"
"""The name of the one channel every packet travels on."""

STATUS_TEXT: Final[dict[StatusCode, str]] = {
    StatusCode.OK: "success",
    StatusCode.FAILED: "a handler reported failure without a code",
    StatusCode.BAD_REQUEST: "the frame is not JSON, not an object, not a valid packet, or the "
    "params fail validation",
    StatusCode.UNAUTHORIZED: "missing or wrong credentials",
    StatusCode.FORBIDDEN: "authenticated, but not allowed",
    StatusCode.UNKNOWN_COMMAND: "no handler for the command",
    StatusCode.TIMEOUT: "the handler ran past its deadline (the server's, or the sender's "
    "meta.timeout)",
    StatusCode.GONE: "the request already ran, but its answer is no longer kept; it will not "
    "run again",
    StatusCode.TOO_LARGE: "a packet or upload over the configured limit",
    StatusCode.BUSY: "too many requests in flight for this peer, or over its rate limit",
    StatusCode.CANCELLED: "the sender cancelled the request before it finished",
    StatusCode.INTERNAL_ERROR: "the handler raised",
    StatusCode.UNAVAILABLE: "the server is shutting down",
}
"""What each status code of PROTOCOL.md §3 means."""

_SCHEMAS = "#/components/schemas/"
_DEFS_REF = re.compile(r"^#/\$defs/(.+)$")
_KEY_UNSAFE = re.compile(r"[^\w.\-]")


def camel_case(name: str) -> str:
    """A wire name as a class name: ``get_player_list`` -> ``GetPlayerList``.

    Args:
        name: a command or event name (any text).

    Returns:
        An identifier in CamelCase (``X`` prefixed when it would start with a digit).
    """
    words = re.split(r"[^0-9A-Za-z]+", name)
    camel = "".join(word[:1].upper() + word[1:] for word in words if word)
    if not camel or camel[0].isdigit():
        camel = "X" + camel
    return camel


class _Components:
    """The named schemas of the document, and the `$ref` that names each."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def _name(self, wanted: str, schema: Any) -> str:
        """A free name for `schema` (the one it already has when identical)."""
        name = _KEY_UNSAFE.sub("_", wanted) or "Schema"
        candidate, n = name, 1
        while candidate in self.schemas and self.schemas[candidate] != schema:
            n += 1
            candidate = f"{name}{n}"
        return candidate

    def add(self, wanted: str, schema: dict[str, Any]) -> dict[str, str]:
        """Hoist a pydantic JSON Schema (and its ``$defs``) into the components.

        Args:
            wanted: the name to give `schema` (numbered when another schema has it).
            schema: a JSON Schema whose references point into its own ``$defs``.

        Returns:
            ``{"$ref": "#/components/schemas/<name>"}``.
        """
        schema = copy.deepcopy(schema)
        defs: dict[str, Any] = schema.pop("$defs", {})
        # Name the definitions first: they may refer to one another, and to the same name of
        # another command's schema with other content (two models both called `Item`).
        renamed: dict[str, str] = {}
        for def_name, definition in defs.items():
            renamed[def_name] = self._name(def_name, _rewrite(definition, {}))
        for def_name, definition in defs.items():
            self.schemas[renamed[def_name]] = _rewrite(definition, renamed)
        body = _rewrite(schema, renamed)
        name = self._name(wanted, body)
        self.schemas[name] = body
        return {"$ref": _SCHEMAS + name}


def _rewrite(schema: Any, renamed: dict[str, str]) -> Any:
    """`schema` with each ``#/$defs/X`` reference pointing at the component of X."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str):
                match = _DEFS_REF.match(value)
                if match is not None:
                    target = match.group(1)
                    value = _SCHEMAS + renamed.get(target, target)
            out[key] = _rewrite(value, renamed)
        return out
    if isinstance(schema, list):
        return [_rewrite(item, renamed) for item in schema]
    return schema


def _is_model(schema: dict[str, Any]) -> bool:
    """True for the schema of a model (an object with a title): it keeps its own name."""
    return schema.get("type") == "object" and isinstance(schema.get("title"), str)


def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)}


def _envelopes() -> dict[str, Any]:
    """The packet envelopes of PROTOCOL.md §2 and the status codes of §3."""
    packet_id = {
        "type": "string",
        "minLength": 1,
        "maxLength": 128,
        "description": "unique per sender while in flight (a UUID4 by default)",
    }
    codes: list[dict[str, Any]] = [
        {"const": int(code), "title": code.name, "description": STATUS_TEXT[code]}
        for code in StatusCode
    ]
    codes.append({"minimum": 1000, "title": "APPLICATION", "description": "free for applications"})
    return {
        "PacketId": packet_id,
        "Meta": {
            "type": "object",
            "description": "what travels beside a packet; unknown keys are ignored",
            "properties": {
                "traceparent": {"type": "string", "description": "W3C Trace Context"},
                "tracestate": {"type": "string", "description": "W3C Trace Context"},
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "a Request's time budget in seconds, as its sender sees it",
                },
                "window": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "a streamed Request's flow-control window (WebSocket)",
                },
            },
        },
        "StatusCode": {
            "type": "integer",
            "description": "the status code of a Response (0 exactly when status is ok)",
            "oneOf": codes,
        },
        "ErrorResponse": {
            "type": "object",
            "description": "an error answer; id is null only when the request had no usable id",
            "required": ["id", "type", "status", "code", "error"],
            "properties": {
                "id": {"oneOf": [{"$ref": _SCHEMAS + "PacketId"}, {"type": "null"}]},
                "type": {"const": "response"},
                "status": {"const": "error"},
                "code": {"$ref": _SCHEMAS + "StatusCode"},
                "error": {"type": "string", "description": "a human-readable message"},
                "meta": {"$ref": _SCHEMAS + "Meta"},
            },
        },
    }


def _request(command: str, params: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "type", "command"],
        "properties": {
            "id": {"$ref": _SCHEMAS + "PacketId"},
            "type": {"const": "request"},
            "command": {"const": command},
            "params": params,
            "meta": {"$ref": _SCHEMAS + "Meta"},
        },
    }


def _ok(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "type", "status", "code"],
        "properties": {
            "id": {"$ref": _SCHEMAS + "PacketId"},
            "type": {"const": "response"},
            "status": {"const": "ok"},
            "code": {"const": 0},
            "data": data,
            "meta": {"$ref": _SCHEMAS + "Meta"},
        },
    }


def _response(data: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [_ok(data), {"$ref": _SCHEMAS + "ErrorResponse"}]}


def _event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "type", "name"],
        "properties": {
            "id": {"$ref": _SCHEMAS + "PacketId"},
            "type": {"const": "event"},
            "name": {"const": name},
            "data": data,
            "meta": {"$ref": _SCHEMAS + "Meta"},
        },
    }


def _described(schema: dict[str, Any]) -> dict[str, str]:
    """The summary (first line) and description of a model's docstring, when it has one."""
    text = schema.get("description")
    if not isinstance(text, str) or not text.strip():
        return {}
    summary = text.strip().splitlines()[0]
    out = {"summary": summary}
    if text.strip() != summary:
        out["description"] = text.strip()
    return out


class _Builder:
    """Assembles one document (see the module docstring)."""

    def __init__(self) -> None:
        self.components = _Components()
        self.messages: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}

    def _key(self, wanted: str, table: dict[str, Any]) -> str:
        key = _KEY_UNSAFE.sub("_", wanted)
        candidate, n = key, 1
        while candidate in table:
            n += 1
            candidate = f"{key}_{n}"
        return candidate

    def message(self, wanted: str, payload: dict[str, Any], **fields: Any) -> dict[str, str]:
        """Add a message; return the reference to it in the channel."""
        key = self._key(wanted, self.messages)
        self.messages[key] = {
            "name": key,
            "contentType": JSON,
            **fields,
            "payload": payload,
        }
        return _ref("channels", CHANNEL, "messages", key)

    def operation(self, wanted: str, body: dict[str, Any]) -> None:
        self.operations[self._key(wanted, self.operations)] = {
            "channel": _ref("channels", CHANNEL),
            **body,
        }

    def schema(self, wanted: str, schema: dict[str, Any], keep_title: bool = True) -> Any:
        """A reference to `schema` in the components (an inline ``{}`` for anything)."""
        if not schema:
            schema = {"description": "any JSON value"}
        name = schema["title"] if keep_title and _is_model(schema) else wanted
        return self.components.add(name, schema)

    def command(
        self,
        name: str,
        command: type[Command[Any]] | None,
        stream: bool,
        direction: str,
    ) -> None:
        """A command: the server answers it (``in``) or sends it to its clients (``out``)."""
        camel = camel_case(name)
        if command is not None:
            params_schema = command.model_json_schema()
            result_schema = command.item_adapter().json_schema()
        else:  # a route by name: its params are any object, its result anything
            params_schema = {"type": "object", "title": f"{camel}Params"}
            result_schema = {}
        prefix = "" if direction == "in" else "server."
        params = self.schema(f"{camel}Params", params_schema, keep_title=False)
        result = self.schema(f"{camel}Result", result_schema)
        texts = _described(params_schema)
        request = self.message(
            f"{prefix}{name}.request",
            _request(name, params),
            title=f"{name} request",
            correlationId={"$ref": "#/components/correlationIds/packetId"},
            **texts,
        )
        replies = []
        if stream:
            replies.append(
                self.message(
                    f"{prefix}{name}.chunk",
                    _event("siyi.chunk", _chunk(result)),
                    title=f"{name} item",
                    summary=f"one item of {name}'s stream (PROTOCOL.md §10)",
                )
            )
        replies.append(
            self.message(
                f"{prefix}{name}.response",
                _response({"type": "integer", "minimum": 0} if stream else result),
                title=f"{name} response",
                summary=(
                    f"the end of {name}'s stream: ok with the number of items, or an error"
                    if stream
                    else f"the answer to {name}: ok with its result, or an error"
                ),
                correlationId={"$ref": "#/components/correlationIds/packetId"},
            )
        )
        body: dict[str, Any] = {
            "action": "receive" if direction == "in" else "send",
            "title": name,
            **texts,
            "messages": [request],
            "reply": {"channel": _ref("channels", CHANNEL), "messages": replies},
            "x-siyi-kind": "command",
            "x-siyi-name": name,
        }
        if stream:
            body["x-siyi-stream"] = True
        self.operation(f"{'send' if direction == 'out' else 'receive'}.{name}", body)

    def event(self, name: str, model: type[EventModel] | None, direction: str) -> None:
        """An event: the server takes it (``in``) or sends it (``out``)."""
        schema: dict[str, Any] = model.model_json_schema() if model is not None else {}
        data = self.schema(f"{camel_case(name)}Data", schema)
        texts = _described(schema)
        prefix = "" if direction == "in" else "server."
        message = self.message(
            f"{prefix}{name}.event", _event(name, data), title=f"{name} event", **texts
        )
        self.operation(
            f"{'send' if direction == 'out' else 'receive'}.{name}.event",
            {
                "action": "receive" if direction == "in" else "send",
                "title": name,
                **texts,
                "messages": [message],
                "x-siyi-kind": "event",
                "x-siyi-name": name,
            },
        )

    def protocol(self) -> None:
        """The protocol's own packets: the session greeting, cancellation, acknowledgement."""
        session = self.message(
            "siyi.session",
            _event(
                "session",
                {
                    "type": "object",
                    "required": ["session", "protocol"],
                    "properties": {
                        "session": {"type": "string", "description": "the session key"},
                        "protocol": {"const": PROTOCOL_VERSION},
                        "heartbeat_interval": {"type": ["number", "null"]},
                        "resumed": {"type": "boolean"},
                        "dropped": {"type": "integer", "minimum": 0},
                    },
                },
            ),
            title="session",
            summary="the first frame of every packet WebSocket (PROTOCOL.md §7)",
        )
        id_only = {
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"$ref": _SCHEMAS + "PacketId"}},
        }
        cancel = self.message(
            "siyi.cancel",
            _event("siyi.cancel", id_only),
            title="siyi.cancel",
            summary="withdraw a request the sender sent (PROTOCOL.md §10)",
        )
        ack = self.message(
            "siyi.ack",
            _event(
                "siyi.ack",
                {
                    "type": "object",
                    "required": ["id", "seq"],
                    "properties": {
                        "id": {"$ref": _SCHEMAS + "PacketId"},
                        "seq": {"type": "integer", "minimum": 0},
                    },
                },
            ),
            title="siyi.ack",
            summary="acknowledge a stream's items up to seq (PROTOCOL.md §10)",
        )
        for key, action, message, name, summary in (
            ("send.session", "send", session, "session", "greet a WebSocket with its session"),
            ("receive.siyi.cancel", "receive", cancel, "siyi.cancel", "a client withdraws"),
            ("send.siyi.cancel", "send", cancel, "siyi.cancel", "the server withdraws"),
            ("receive.siyi.ack", "receive", ack, "siyi.ack", "a client acknowledges items"),
            ("send.siyi.ack", "send", ack, "siyi.ack", "the server acknowledges items"),
        ):
            self.operation(
                key,
                {
                    "action": action,
                    "summary": summary,
                    "messages": [message],
                    "x-siyi-kind": "protocol",
                    "x-siyi-name": name,
                },
            )


def _chunk(item: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "seq"],
        "properties": {
            "id": {"$ref": _SCHEMAS + "PacketId"},
            "seq": {"type": "integer", "minimum": 0},
            "data": item,
        },
    }


def build_document(
    dispatcher: Dispatcher,
    settings: ServerSettings,
    *,
    host: str,
    secure: bool = False,
    prefix: str = "",
    keyed: bool = False,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of a server's registry.

    Args:
        dispatcher: the server's routes, typed events and declarations.
        settings: its paths.
        host: ``host[:port]`` the servers are reached at.
        secure: TLS (``wss``/``https``) rather than ``ws``/``http``.
        prefix: the path prefix the server is mounted under.
        keyed: the server asks for a key: its servers list the bearer scheme.

    Returns:
        The document, a JSON-ready dict.
    """
    builder = _Builder()
    for route in dispatcher.routes.values():
        builder.command(route.name, route.command, route.stream, "in")
    for name, typed in dispatcher.typed_events.items():
        builder.event(name, typed.model, "in")
    for name, event in dispatcher.sends_events.items():
        builder.event(name, event, "out")
    for name, command in dispatcher.sends_commands.items():
        builder.command(name, command, bool(command and command.streams()), "out")
    builder.protocol()

    prefix = prefix.rstrip("/")
    security = [_ref("components", "securitySchemes", "bearer")] if keyed else []
    servers: dict[str, Any] = {
        "websocket": {
            "host": host,
            "protocol": "wss" if secure else "ws",
            "pathname": prefix + settings.path,
            "title": "packet WebSocket",
            "description": "One JSON packet per text frame, both ways. The first frame is the "
            "session event.",
        },
        "http": {
            "host": host,
            "protocol": "https" if secure else "http",
            "pathname": prefix + settings.general_path,
            "title": "POST one packet",
            "description": "POST one packet (a Request, an Event, or the Response to a server "
            "request) and get one Response: HTTP 200 when it was dispatched, 400, 401 or 413 "
            "when it could not be. A streaming command asked with 'Accept: "
            "application/x-ndjson' answers NDJSON: its chunk events, then the Response. "
            f"Packets for the client are long-polled with GET {prefix + settings.events_path}.",
            "x-siyi-events-path": prefix + settings.events_path,
            "x-siyi-about-path": prefix + settings.about_path,
        },
    }
    for server in servers.values():
        if security:
            server["security"] = security
    components = builder.components.schemas
    for name, schema in _envelopes().items():
        components[name] = schema
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "siyi server",
            "version": __version__,
            "description": "Two-way requests and events over WebSocket and HTTP: the siyi "
            f"protocol, version {PROTOCOL_VERSION}. Every packet is a JSON object told apart "
            "by its type: request, response or event. Either side may send requests and "
            "events; a response answers exactly one request, carrying its id.",
        },
        "x-siyi-protocol": PROTOCOL_VERSION,
        "defaultContentType": JSON,
        "servers": servers,
        "channels": {
            CHANNEL: {
                "title": "packets",
                "description": "Every packet travels on this channel: over the WebSocket both "
                "ways, over HTTP as the body of a POST and its answer.",
                "servers": [_ref("servers", name) for name in servers],
                "messages": {key: _ref("components", "messages", key) for key in builder.messages},
            }
        },
        "operations": builder.operations,
        "components": {
            "schemas": components,
            "messages": builder.messages,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "'Authorization: Bearer <key>' on the WebSocket upgrade and "
                    "on every HTTP call. A browser offers the WebSocket subprotocols "
                    f"'{SUBPROTOCOL}' and 'bearer.<key>' instead. A key in the URL is refused.",
                },
                "session": {
                    "type": "httpApiKey",
                    "name": SESSION_HEADER,
                    "in": "header",
                    "description": "The session key the server gave (the session event, or "
                    f"the {SESSION_HEADER} header of an HTTP answer), sent on every adapter so "
                    "that they are one peer; it belongs to the principal that opened it.",
                },
            },
            "correlationIds": {
                "packetId": {
                    "description": "a Response carries the id of the Request it answers",
                    "location": "$message.payload#/id",
                }
            },
        },
    }


class Described(Protocol):
    """What `asyncapi_document` reads of a server (a `ProtocolServer` is one)."""

    @property
    def host(self) -> str:
        """The interface it binds."""

    @property
    def port(self) -> int:
        """Its port."""

    @property
    def ssl(self) -> SSLContext | None:
        """Its TLS context, if any."""

    @property
    def settings(self) -> ServerSettings:
        """Its paths."""

    @property
    def dispatcher(self) -> Dispatcher:
        """Its registry."""

    @property
    def gate(self) -> Gate:
        """Who may call it."""


def asyncapi_document(
    server: Described, *, host: str | None = None, prefix: str = ""
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of `server` (what ``GET /asyncapi.json`` answers).

    Args:
        server: the server.
        host: ``host[:port]`` its clients reach it at (default: its host and port).
        prefix: the path prefix it is mounted under (`ProtocolServer.attach`).
    """
    if host is None:
        host = f"{server.host}:{server.port}"
    return build_document(
        server.dispatcher,
        server.settings,
        host=host,
        secure=server.ssl is not None,
        prefix=prefix,
        keyed=not server.gate.open,
    )


class AsyncApiEndpoint:
    """``GET /asyncapi.json``: the document, to a caller with the key when there is one (§11).

    Args:
        settings: the server's paths.
        gate: who may read it.
        dispatcher: the registry it describes.
        prefix: the path prefix the server is mounted under.
    """

    def __init__(
        self, settings: ServerSettings, gate: Gate, dispatcher: Dispatcher, prefix: str = ""
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.dispatcher = dispatcher
        self.prefix = prefix

    async def handle(self, request: web.Request) -> web.Response:
        """Answer the document (401 without the key on a server that has one)."""
        if not self.gate.open and not await self.gate.is_authorized(request):
            return refusal(401, StatusCode.UNAUTHORIZED, "unauthorized: missing or wrong key")
        document = build_document(
            self.dispatcher,
            self.settings,
            host=request.host,
            secure=request.secure,
            prefix=self.prefix,
            keyed=not self.gate.open,
        )
        return web.Response(body=orjson.dumps(document), content_type=JSON)
