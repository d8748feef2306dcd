"""Structured logs: the ``extra`` keys of every log line about a call, and a JSON formatter.

Every line the SDK logs about one call (a request or event handled, answered, refused, timed
out, cancelled, dropped; a handler's exception; a bad frame with a usable id) carries what
identifies the call as attributes of its `logging.LogRecord`, set through ``extra``:

==================== ==========================================================================
``siyi_command``     the request's command
``siyi_request_id``  the request's id (also on its Response, a chunk of its stream, a bad frame)
``siyi_event``       the event's name
``siyi_event_id``    the event's id
``siyi_session``     the session, hashed (`session_tag`): never the key, a bearer credential
``siyi_transport``   ``"websocket"`` or ``"http"``, where the line's site knows it
``siyi_upload_id``   the upload's id (its name in the protocol, §8; never its bytes)
==================== ==========================================================================

A key is absent when its site does not know it. `JsonFormatter` writes each record as one JSON
object per line with those keys; ``siyi serve --log-format json`` uses it::

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])

The extra dict is built by `call_extra`, only inside the branch that logs: a request that logs
nothing pays nothing for it. The hash of a session is made once per session (see
`Connection.log_session`), on the first line that needs it.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import orjson

from .packets import Event, Request

__all__ = [
    "COMMAND",
    "EVENT",
    "EVENT_ID",
    "KEYS",
    "PREFIX",
    "REQUEST_ID",
    "SESSION",
    "TRANSPORT",
    "UPLOAD_ID",
    "JsonFormatter",
    "SessionTagged",
    "bad_packet_extra",
    "call_extra",
    "session_tag",
]

PREFIX: Final = "siyi_"
"""What every key the SDK sets on a log record begins with."""
COMMAND: Final = "siyi_command"
"""The command of the request the line is about."""
REQUEST_ID: Final = "siyi_request_id"
"""The id of the request the line is about (or of the Response, chunk or bad frame of it)."""
EVENT: Final = "siyi_event"
"""The name of the event the line is about."""
EVENT_ID: Final = "siyi_event_id"
"""The id of the event the line is about."""
SESSION: Final = "siyi_session"
"""The session of the call, hashed by `session_tag` (the key itself is never logged)."""
TRANSPORT: Final = "siyi_transport"
"""``"websocket"`` or ``"http"``: what carried the call."""
UPLOAD_ID: Final = "siyi_upload_id"
"""The id of the upload the line is about (already in the upload's own log messages)."""
KEYS: Final = (COMMAND, REQUEST_ID, EVENT, EVENT_ID, SESSION, TRANSPORT, UPLOAD_ID)
"""Every key `call_extra` may set, in the order `JsonFormatter` writes them."""

TAG_LENGTH: Final = 12
"""Hex digits of the session's SHA-256 kept: 48 bits, enough to tell sessions apart in logs
and far too few to be of use to anyone holding a log (the key has 192 bits of its own)."""


def session_tag(key: str) -> str:
    """What logs show of a session key: the first 12 hex digits of its SHA-256.

    The key is a bearer credential (whoever presents it is the session), so it is never
    logged; its tag tells one session's lines from another's and matches across nodes.
    """
    return hashlib.sha256(key.encode()).hexdigest()[:TAG_LENGTH]


class SessionTagged(Protocol):
    """What holds a session for the logs: a server's `Connection`, a client's `SessionRef`."""

    @property
    def log_session(self) -> str | None:
        """`session_tag` of the session's key (made once), None while there is no key."""
        ...


def call_extra(
    packet: Request | Event | None = None,
    session: SessionTagged | None = None,
    transport: str | None = None,
    *,
    command: str | None = None,
    request_id: str | None = None,
    event: str | None = None,
    event_id: str | None = None,
    upload_id: str | None = None,
) -> dict[str, Any]:
    """The ``extra`` of a log line about one call; call it only where the line is logged.

    Args:
        packet: the Request (its command and id) or Event (its name and id) of the call.
        session: the session it belongs to (its hashed key is logged, never the key).
        transport: ``"websocket"`` or ``"http"``, when known.
        command: the command, when there is no `packet` (or to override it).
        request_id: the request's id, when there is no `packet`.
        event: the event's name, when there is no `packet`.
        event_id: the event's id, when there is no `packet`.
        upload_id: the upload's id, for a line about an upload.

    Returns:
        The keys of `KEYS` that are known; the others are left out.
    """
    if type(packet) is Request:
        command = command or packet.command
        request_id = request_id or packet.id
    elif type(packet) is Event:
        event = event or packet.name
        event_id = event_id or packet.id
    extra: dict[str, Any] = {}
    if command is not None:
        extra[COMMAND] = command
    if request_id is not None:
        extra[REQUEST_ID] = request_id
    if event is not None:
        extra[EVENT] = event
    if event_id is not None:
        extra[EVENT_ID] = event_id
    tag = session.log_session if session is not None else None
    if tag is not None:
        extra[SESSION] = tag
    if transport is not None:
        extra[TRANSPORT] = transport
    if upload_id is not None:
        extra[UPLOAD_ID] = upload_id
    return extra


def bad_packet_extra(
    packet_id: str | None,
    packet_type: str | None,
    session: SessionTagged | None,
    transport: str,
) -> dict[str, Any]:
    """`call_extra` for a packet that failed to parse (a `ProtocolError`'s id and type).

    Its id goes out as a request's (a request or response) or an event's, by its type.
    """
    return call_extra(
        session=session,
        transport=transport,
        request_id=packet_id if packet_type in ("request", "response") else None,
        event_id=packet_id if packet_type == "event" else None,
    )


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line (orjson).

    The object has ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger`` and
    ``message`` (the arguments merged in), then every ``extra`` key that begins with ``siyi_``
    (`KEYS`, and any a middleware of yours adds), then ``exception`` (the traceback's text)
    and ``stack`` when the record has them. A value JSON cannot hold is written as its
    ``str``. Newlines inside the message or the traceback are escaped: a line is a record.

    Example::

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.getLogger().addHandler(handler)
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (no newline at the end)."""
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key.startswith(PREFIX):
                out[key] = value
        if record.exc_info and not record.exc_text:
            # Cached on the record, as `logging.Formatter.format` does, for other handlers.
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()
