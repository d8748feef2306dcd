"""Every exception siyi-sdk raises, in one place.

The tree::

    SiyiError
    ├── ProtocolError (also ValueError)        a frame that is not a valid packet
    ├── InvalidResultError (also ValueError)   an ok answer whose data does not fit its type
    ├── ProtocolVersionError                   the server speaks another protocol version
    ├── TransportError (also ConnectionError)  the link could not carry the packet
    │   ├── NotConnectedError                  no live connection to send on
    │   ├── ConnectionClosedError              the connection dropped while a request waited
    │   ├── CertificateError                   the server's TLS certificate is not trusted
    │   ├── AllAdaptersFailedError             every adapter of a manager failed
    │   └── BackplaneUnavailableError          (server) the shared backplane (Redis) is down
    ├── RequestTimeoutError (also TimeoutError = asyncio.TimeoutError)
    │                                          no Response within the request's timeout
    └── ApiError                               the peer answered with an error Response
        ├── HandlerFailedError          1      a handler reported failure
        ├── BadRequestError             400
        ├── UnauthorizedError           401
        ├── ForbiddenError              403
        ├── UnknownCommandError         404
        ├── HandlerTimeoutError         408
        ├── GoneError                   410
        ├── TooLargeError               413
        ├── BusyError                   429
        ├── InternalServerError         500
        └── UnavailableError            503

`TransportError` means "this packet may not have arrived: another route may carry it";
an `ApiError` is an answer and is never retried elsewhere. A `CertificateError` is a
`TransportError` that reconnecting cannot cure: reconnect loops give up on it at once.
Server-side handlers may raise an `ApiError` (or a subclass) to answer with its code and
message.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol


class ErrorAnswer(Protocol):
    """What the errors need of an error Response (`packets.Response` fits).

    Structural, so that this module, the lowest layer, names no packet (DESIGN.md).
    """

    @property
    def code(self) -> int:
        """The status code."""
        ...

    @property
    def error(self) -> str | None:
        """The message."""
        ...


__all__ = [
    "AllAdaptersFailedError",
    "ApiError",
    "BackplaneUnavailableError",
    "BadRequestError",
    "BusyError",
    "CertificateError",
    "ConnectionClosedError",
    "ErrorAnswer",
    "ForbiddenError",
    "GoneError",
    "HandlerFailedError",
    "HandlerTimeoutError",
    "InternalServerError",
    "InvalidResultError",
    "NotConnectedError",
    "ProtocolError",
    "ProtocolVersionError",
    "RequestCancelledError",
    "RequestTimeoutError",
    "SiyiError",
    "TooLargeError",
    "TransportError",
    "UnauthorizedError",
    "UnavailableError",
    "UnknownCommandError",
    "error_for_response",
]


class SiyiError(Exception):
    """Base class of every error raised by siyi-sdk."""


class ProtocolError(SiyiError, ValueError):
    """A frame could not be read as a packet (PROTOCOL.md §4).

    Attributes:
        code: the status code the peer should be answered with (400 or 413).
        packet_id: the frame's id when it had a usable one, else None.
        packet_type: the frame's ``type`` when it named one, else None.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = 400,
        packet_id: str | None = None,
        packet_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.packet_id = packet_id
        self.packet_type = packet_type


class InvalidResultError(SiyiError, ValueError):
    """The peer answered ok, but its data does not fit the command's declared result type.

    Attributes:
        response: the `Response` received.
    """

    def __init__(self, message: str, *, response: Any) -> None:
        super().__init__(message)
        self.response = response


class ProtocolVersionError(SiyiError):
    """The server speaks a protocol version this client does not; the client will not talk.

    Attributes:
        server: the server's protocol version.
        client: this client's.
    """

    def __init__(self, server: object, client: int) -> None:
        super().__init__(
            f"the server speaks protocol {server}, this client speaks protocol {client}"
        )
        self.server = server
        self.client = client


class TransportError(SiyiError, ConnectionError):
    """The transport failed: the packet may not have reached the peer."""


class NotConnectedError(TransportError):
    """There is no live connection to send on."""


class ConnectionClosedError(TransportError):
    """The connection dropped while a request was waiting for its Response."""


class CertificateError(TransportError):
    """The server's TLS certificate could not be verified.

    It is not signed by a CA the client trusts, has expired, or names another host. Not
    transient, so never retried: a reconnecting adapter gives up on it at once (as on a refused
    key) and keeps it in `last_error`. Trust the server's CA with
    ``ssl=ssl.create_default_context(cafile=...)`` (``--cafile`` on the command line).
    """


class AllAdaptersFailedError(TransportError):
    """Every adapter able to send failed with a transport error.

    Attributes:
        errors: each adapter's name with the error it raised, in the order they were tried.
    """

    def __init__(self, errors: list[tuple[str, BaseException]]) -> None:
        self.errors = errors
        detail = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in errors)
        super().__init__(f"every adapter failed ({detail})" if errors else "no adapter can send")


class BackplaneUnavailableError(TransportError):
    """The server's shared backplane (Redis) cannot be reached.

    Raised to server code for what must cross processes (a packet for a client attached to
    another node) while the backplane is down. Clients of this process keep being served.
    """


class RequestTimeoutError(SiyiError, TimeoutError):
    """No Response arrived within the request's timeout.

    It is an `asyncio.TimeoutError` (the same class as `TimeoutError` since Python 3.11), so
    `except asyncio.TimeoutError` catches it.
    """


class ApiError(SiyiError):
    """The peer answered with an error Response.

    Raised by the typed `Api`; handlers on either side may raise it too, and the peer is then
    answered with `code` and the message.

    Attributes:
        code: the Response's status code.
        response: the `Response`, when this error was built from one.
    """

    default_code: ClassVar[int] = 1

    def __init__(self, message: str, *, code: int | None = None, response: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = self.default_code if code is None else code
        self.response = response

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class HandlerFailedError(ApiError):
    """A handler reported failure (code 1)."""

    default_code = 1


class BadRequestError(ApiError):
    """The packet or its params were invalid (400)."""

    default_code = 400


class UnauthorizedError(ApiError):
    """Missing or wrong credentials (401)."""

    default_code = 401


class ForbiddenError(ApiError):
    """Authenticated but not allowed (403)."""

    default_code = 403


class UnknownCommandError(ApiError):
    """No handler for the command (404)."""

    default_code = 404


class HandlerTimeoutError(ApiError):
    """The handler ran past the server's deadline (408)."""

    default_code = 408


class GoneError(ApiError):
    """The request already ran, but its answer is no longer kept (410).

    A repeat of a request id whose answer the server had to let go before its time
    (PROTOCOL.md §4, bounded memory): the request is not run again. Not retried.
    """

    default_code = 410


class RequestCancelledError(ApiError):
    """The sender withdrew the request before it finished (499, PROTOCOL.md §10).

    What a repeat of a cancelled request's id gets: it is not run again. The task that
    cancelled sees `asyncio.CancelledError`, never this.
    """

    default_code = 499


class TooLargeError(ApiError):
    """A packet or upload over the configured limit (413)."""

    default_code = 413


class BusyError(ApiError):
    """Too many requests in flight for this peer (429)."""

    default_code = 429


class InternalServerError(ApiError):
    """The handler raised an exception (500)."""

    default_code = 500


class UnavailableError(ApiError):
    """The server is shutting down (503)."""

    default_code = 503


_ERRORS_BY_CODE: dict[int, type[ApiError]] = {
    cls.default_code: cls
    for cls in (
        HandlerFailedError,
        BadRequestError,
        UnauthorizedError,
        ForbiddenError,
        UnknownCommandError,
        HandlerTimeoutError,
        GoneError,
        TooLargeError,
        BusyError,
        RequestCancelledError,
        InternalServerError,
        UnavailableError,
    )
}


def error_for_response(response: ErrorAnswer) -> ApiError:
    """Build the typed error for an error Response.

    Args:
        response: a Response whose status is "error".

    Returns:
        An instance of the `ApiError` subclass for its code (`ApiError` itself for
        application codes), carrying the code, message and Response.
    """
    cls = _ERRORS_BY_CODE.get(response.code, ApiError)
    return cls(response.error or "error", code=response.code, response=response)
