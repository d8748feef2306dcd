"""Who is calling, and which session is theirs (PROTOCOL.md §7).

`Gate` is the one place a call is authenticated (``verify_key`` or ``authenticate``), its
session key looked up and checked against its principal (403 for another principal's key),
and its session opened or confirmed. Every endpoint (the WebSocket, ``/general``, ``/events``,
uploads) asks it, in two steps, so that a call that is refused for any reason opens nothing:
`caller` first, `session_of` once the call is accepted.
"""

from __future__ import annotations

import hmac
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeAlias

from aiohttp import web

from ..errors import BackplaneUnavailableError
from ..logs import call_extra
from ..packets import SESSION_HEADER, StatusCode
from .answers import refusal
from .backplane import Backplane
from .connection import Connection
from .lifecycle import Lifecycle
from .owners import same_owner
from .sessions import SessionRegistry, bounded_headers

__all__ = ["Authenticate", "Caller", "Gate", "remote_address"]

logger = logging.getLogger(__name__)

Authenticate: TypeAlias = Callable[[Mapping[str, str]], Any]
"""``authenticate(request_headers) -> principal | None`` (sync or async); None refuses."""

_URL_SECRETS = frozenset({"key", "token", "verify_key", "access_token", "authorization", "auth"})


class _Refused(Exception):
    """Authentication failed; carries the message of the 401."""


class Caller(NamedTuple):
    """An authenticated caller: its principal and the live session its key names, if any."""

    principal: Any
    session: Connection | None


def remote_address(request: web.BaseRequest) -> tuple[str, int] | None:
    """The caller's ``(host, port)``, when the transport knows it."""
    peername = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peername, tuple) and len(peername) >= 2:
        return (str(peername[0]), int(peername[1]))
    return None


def _bearer(request: web.BaseRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    # Browsers cannot set headers on a WebSocket: they offer "bearer.<key>" instead.
    for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        offered = offered.strip()
        if offered.startswith("bearer."):
            return offered[len("bearer.") :]
    return None


class Gate:
    """Authentication and the caller's session, for every endpoint of one server.

    Args:
        verify_key: a shared key every client must present, or None.
        authenticate: the callback deciding who the caller is, or None.
        sessions: the server's sessions.
        backplane: where sessions are found across processes.
        lifecycle: where background work runs.
    """

    def __init__(
        self,
        *,
        verify_key: str | None,
        authenticate: Authenticate | None,
        sessions: SessionRegistry,
        backplane: Backplane,
        lifecycle: Lifecycle,
    ) -> None:
        self.verify_key = verify_key
        self.authenticate = authenticate
        self.sessions = sessions
        self.backplane = backplane
        self._lifecycle = lifecycle

    @property
    def open(self) -> bool:
        """True when the server asks for no key."""
        return self.verify_key is None and self.authenticate is None

    async def principal(self, request: web.BaseRequest) -> Any:
        """The principal of the caller (None on an open server).

        Raises:
            _Refused: missing or wrong credentials, or a key in the URL (401).
        """
        if self.verify_key is None and self.authenticate is None:
            return None
        if any(name.lower() in _URL_SECRETS for name in request.query) or (
            self.verify_key is not None and self.verify_key in request.query.values()
        ):
            raise _Refused("keys in the URL are refused: send 'Authorization: Bearer <key>'")
        token = _bearer(request)
        if self.verify_key is not None:
            # compare_digest: the time taken says nothing about how much of the key matched.
            if token is None or not hmac.compare_digest(token.encode(), self.verify_key.encode()):
                raise _Refused("missing or wrong key")
            if self.authenticate is None:
                return True
        assert self.authenticate is not None
        headers: Mapping[str, str] = request.headers
        if token is not None and "Authorization" not in headers:
            headers = {**request.headers, "Authorization": f"Bearer {token}"}
        principal = self.authenticate(headers)
        if inspect.isawaitable(principal):
            principal = await principal
        if principal is None:
            raise _Refused("authentication failed")
        return principal

    async def is_authorized(self, request: web.BaseRequest) -> bool:
        """True when the caller's credentials are accepted (for what needs no session)."""
        try:
            await self.principal(request)
        except _Refused:
            return False
        return True

    async def caller(self, request: web.BaseRequest) -> Caller | web.Response:
        """Who is calling, and the session its key names; or the refusal to answer.

        401 for missing or wrong credentials; 403 for a session key that belongs to another
        principal (PROTOCOL.md §7): that call opens, resumes and reveals nothing. An unknown or
        expired key is no refusal: the caller gets a fresh session when one is opened.
        """
        try:
            principal = await self.principal(request)
        except _Refused as exc:
            return refusal(401, StatusCode.UNAUTHORIZED, f"unauthorized: {exc}")
        key = request.headers.get(SESSION_HEADER)
        # With a shared backplane, also a session opened on another node.
        try:
            session = await self.backplane.find_session(key) if key else None
        except BackplaneUnavailableError as exc:
            return refusal(503, StatusCode.UNAVAILABLE, f"unavailable: {exc}")
        if session is not None and not same_owner(session.principal, principal):
            logger.warning(
                "refused a session key presented with other credentials (from %s)",
                remote_address(request),
                extra=call_extra(session=session),
            )
            return refusal(
                403, StatusCode.FORBIDDEN, "forbidden: this session belongs to another principal"
            )
        return Caller(principal, session)

    async def session_of(
        self, request: web.BaseRequest, caller: Caller, *, provisional: bool = False
    ) -> tuple[Connection, bool] | web.Response:
        """The caller's session (found by its key, else newly opened) and whether it was found.

        Called only once the call is known to be accepted: a refused call opens nothing.

        Args:
            request: the call.
            caller: what `caller` said of it.
            provisional: a session opened here is provisional (a one-off HTTP call, §7).
        """
        session = caller.session
        if session is not None:
            session.remote_address = remote_address(request)
            session.headers = bounded_headers(request.headers)
            if self.sessions.confirm(session) and self.backplane.shared:
                await self.backplane.save_session(session)  # its full lifetime, everywhere
            self.touch(session)
            return session, True
        try:
            session = self.sessions.open(
                caller.principal, remote_address(request), request.headers, provisional=provisional
            )
        except OverflowError as exc:
            return refusal(503, StatusCode.UNAVAILABLE, f"unavailable: {exc}")
        if self.backplane.shared:
            await self.backplane.save_session(session)
        return session, False

    async def open_session(
        self, request: web.BaseRequest
    ) -> tuple[Connection, bool] | web.Response:
        """Both steps at once, for a call not refused after them; or the refusal to answer.

        A session opened here is provisional (PROTOCOL.md §7).
        """
        caller = await self.caller(request)
        if isinstance(caller, web.Response):
            return caller
        return await self.session_of(request, caller, provisional=True)

    def touch(self, session: Connection) -> None:
        """Note activity on `session` (its idle clock restarts, here and in the backplane)."""
        self.sessions.touch(session)
        if self.backplane.shared:
            self._lifecycle.spawn(self.backplane.touch_session(session))
