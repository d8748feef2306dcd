"""Who may see the dashboard and who may act: keys, roles, the login cookie, CSRF, throttling.

Two keys make two roles: `READ` (``admin_key``: look only) and `OPERATOR`
(``admin_operator_key``: look and act). A caller presents a key as ``Authorization: Bearer
<key>`` (scripts, ``siyi stats``) or logs in once through the page's form, which sets a cookie.

The cookie holds ``role.expiry.mac``, the MAC an HMAC-SHA256 of the role and expiry keyed by
that role's key: any node that has the same keys accepts it (no store to share behind a load
balancer), and changing a key logs out everyone who used it. It is ``HttpOnly`` (scripts on
the page cannot read it), ``SameSite=Strict`` (a browser never sends it on a request another
site starts) and ``Secure`` when the login came over TLS. A POST authenticated by the cookie
must also carry the CSRF token (``X-Siyi-CSRF``, derived from the cookie, handed to the page by
``api/me``) and, when the browser says where it comes from, an ``Origin`` equal to the
server's own. Keys are compared in constant time (`hmac.compare_digest`). Failed logins are
throttled per address and in total, so guessing a key costs minutes per handful of guesses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from aiohttp import web

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "OPERATOR",
    "READ",
    "AdminAuth",
    "Caller",
    "LoginThrottle",
    "Role",
]

Role = Literal["read", "operator"]
READ: Final[Role] = "read"
OPERATOR: Final[Role] = "operator"

COOKIE: Final = "siyi_admin"
"""The name of the login cookie."""
CSRF_HEADER: Final = "X-Siyi-CSRF"
"""The header a cookie-authenticated POST carries its CSRF token in."""
LOGIN_LIFETIME: Final = 12 * 3600.0
"""Seconds a login lasts."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Someone the dashboard let in.

    Attributes:
        role: `READ` or `OPERATOR`.
        by_cookie: True when the login cookie let them in (a browser: CSRF rules apply);
            False for ``Authorization: Bearer``.
        csrf: the CSRF token of a cookie login ("" for a bearer).
    """

    role: Role
    by_cookie: bool
    csrf: str = ""

    @property
    def may_act(self) -> bool:
        """True for the operator role, the only one allowed to act."""
        return self.role == OPERATOR


class LoginThrottle:
    """Failed logins, bounded per address and in total within a sliding window.

    Args:
        per_address: failures one address may have within `window` seconds.
        total: failures all addresses together may have within `window` seconds (a guess
            spread over many addresses is slowed down too).
        window: the window, in seconds.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        per_address: int = 5,
        total: int = 100,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_address = per_address
        self.total = total
        self.window = window
        self._clock = clock
        self._all: deque[float] = deque()
        # Oldest first, bounded: a flood from many addresses costs bounded memory.
        self._by_address: OrderedDict[str, deque[float]] = OrderedDict()

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        while self._all and self._all[0] <= horizon:
            self._all.popleft()
        while self._by_address:
            address, times = next(iter(self._by_address.items()))
            while times and times[0] <= horizon:
                times.popleft()
            if times and len(self._by_address) <= 10_000:
                break
            del self._by_address[address]

    def retry_after(self, address: str) -> float:
        """Seconds `address` must wait before its next try (0: it may try now)."""
        now = self._clock()
        self._prune(now)
        waits = [0.0]
        times = self._by_address.get(address)
        if times is not None and len(times) >= self.per_address:
            waits.append(times[0] + self.window - now)
        if len(self._all) >= self.total:
            waits.append(self._all[0] + self.window - now)
        return max(waits)

    def failed(self, address: str) -> None:
        """Count a failed login from `address`."""
        now = self._clock()
        self._all.append(now)
        times = self._by_address.pop(address, None) or deque()
        times.append(now)
        self._by_address[address] = times  # moved to the end: the newest

    def succeeded(self, address: str) -> None:
        """A login from `address` worked: its own failures are forgotten."""
        self._by_address.pop(address, None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class AdminAuth:
    """The dashboard's keys and how a request proves it holds one (see the module).

    Args:
        read_key: the read-only key (None: no read-only role).
        operator_key: the operator key (None: nobody may act).
        path: the dashboard's path (the cookie's ``Path``).
        clock: wall-clock seconds (the cookie's expiry).
    """

    def __init__(
        self,
        read_key: str | None,
        operator_key: str | None,
        path: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if read_key is None and operator_key is None:
            raise ValueError("the dashboard needs admin_key or admin_operator_key")
        if read_key is not None and read_key == operator_key:
            raise ValueError("admin_key and admin_operator_key must differ")
        for key in (read_key, operator_key):
            if key is not None and len(key) < 8:
                raise ValueError("dashboard keys must be at least 8 characters long")
        self._keys: dict[Role, bytes] = {}
        if read_key is not None:
            self._keys[READ] = read_key.encode()
        if operator_key is not None:
            self._keys[OPERATOR] = operator_key.encode()
        self.path = path or "/"
        self._clock = clock
        self.throttle = LoginThrottle()

    # Keys --------------------------------------------------------------------------------------

    def role_of_key(self, presented: str) -> Role | None:
        """The role `presented` is the key of, or None; constant time in what matched."""
        given = presented.encode()
        found: Role | None = None
        # Both keys are compared, whatever the first said: the time taken tells nothing.
        for role, key in self._keys.items():
            if hmac.compare_digest(given, key):
                found = role
        return found

    def _mac(self, role: Role, payload: str) -> str:
        return _b64(hmac.new(self._keys[role], payload.encode(), hashlib.sha256).digest())

    # The cookie --------------------------------------------------------------------------------

    def cookie_for(self, role: Role) -> str:
        """A fresh login cookie's value for `role`."""
        payload = f"{role}.{int(self._clock() + LOGIN_LIFETIME)}"
        return f"{payload}.{self._mac(role, payload)}"

    def _from_cookie(self, value: str) -> Caller | None:
        role, _, rest = value.partition(".")
        expiry, _, mac = rest.partition(".")
        if role not in self._keys or not expiry.isdigit():
            return None
        checked: Role = READ if role == READ else OPERATOR
        payload = f"{checked}.{expiry}"
        if not hmac.compare_digest(mac.encode(), self._mac(checked, payload).encode()):
            return None
        if int(expiry) < self._clock():
            return None
        return Caller(checked, True, self._mac(checked, "csrf:" + value))

    def set_cookie(self, response: web.StreamResponse, request: web.Request, role: Role) -> None:
        """Log `response`'s receiver in as `role`: the cookie, with every flag it needs."""
        response.set_cookie(
            COOKIE,
            self.cookie_for(role),
            path=self.path,
            max_age=int(LOGIN_LIFETIME),
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )

    def clear_cookie(self, response: web.StreamResponse, request: web.Request) -> None:
        """Log out: the cookie, emptied and expired (with the same flags)."""
        response.set_cookie(
            COOKIE,
            "",
            path=self.path,
            max_age=0,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )

    # Requests ----------------------------------------------------------------------------------

    def caller(self, request: web.Request) -> Caller | None:
        """Who `request` comes from: a bearer key, else the login cookie; None: nobody."""
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, presented = header.partition(" ")
            if scheme.lower() != "bearer":
                return None
            role = self.role_of_key(presented.strip())
            return None if role is None else Caller(role, False)
        cookie = request.cookies.get(COOKIE)
        if cookie:
            return self._from_cookie(cookie)
        return None

    @staticmethod
    def same_origin(request: web.Request) -> bool:
        """True when the request's ``Origin`` (if the browser sent one) is this server's own.

        No ``Origin`` at all is a script, not a browser page of another site: the cookie
        alone would not do for it (`SameSite=Strict`, the CSRF token).
        """
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        return origin == f"{request.scheme}://{request.host}"

    def may_post(self, request: web.Request, caller: Caller) -> bool:
        """A POST from `caller` comes from the dashboard's own page (or from a script).

        A bearer key is never sent by a browser on its own, so it needs nothing more. A
        cookie needs the CSRF token and, when the browser names its origin, this one.
        """
        if not self.same_origin(request):
            return False
        if not caller.by_cookie:
            return True
        token = request.headers.get(CSRF_HEADER, "")
        return hmac.compare_digest(token.encode(), caller.csrf.encode())
