"""The suite's own wire tools: raw JSON over plain aiohttp, nothing of siyi's client or server.

The conformance suite judges what a server puts on the wire, so it builds every frame by hand
and reads every answer as plain JSON. Were it to use siyi's client, a bug shared by the client
and the server (both ours) would pass unnoticed; a server in another language would be judged
by what our client happens to tolerate.

Why one module of about 460 lines: it is the suite's only client, a raw WebSocket and HTTP
speaker with the few helpers every case shares (send, expect, the greeting, the keys); every
case goes through it, so it is read as one piece.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp

__all__ = [
    "DEFAULT",
    "SESSION_HEADER",
    "CaseFailedError",
    "CaseSkippedError",
    "HttpAnswer",
    "Socket",
    "Target",
    "check",
    "request_packet",
]

SESSION_HEADER: Final = "X-Siyi-Session"
"""The header that names a session (PROTOCOL.md §7)."""


class CaseFailedError(Exception):
    """The server did not do what the rule says; the message is the reason shown."""


class CaseSkippedError(Exception):
    """The case cannot run against this target (e.g. it needs ``--key2``); the message says why."""


def check(condition: object, reason: str) -> None:
    """Fail the running case with `reason` unless `condition` holds.

    Raises:
        CaseFailedError: `condition` is false.
    """
    if not condition:
        raise CaseFailedError(reason)


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = _Default()
"""Use the target's own key (``--key``): the default of every ``key=`` below."""

Key = str | None | _Default


def request_packet(
    command: str,
    params: Any = None,
    *,
    id: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Request packet as a dict (PROTOCOL.md §2), with a fresh UUID4 id unless given."""
    packet: dict[str, Any] = {
        "id": id or str(uuid.uuid4()),
        "type": "request",
        "command": command,
    }
    if params is not None:
        packet["params"] = params
    if meta:
        packet["meta"] = dict(meta)
    return packet


@dataclass
class HttpAnswer:
    """What an HTTP call got back."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON.

        Raises:
            CaseFailedError: it is not JSON.
        """
        try:
            return json.loads(self.body)
        except ValueError:
            raise CaseFailedError(
                f"HTTP {self.status}: the body is not JSON: {self.body[:120]!r}"
            ) from None

    @property
    def session(self) -> str | None:
        """The ``X-Siyi-Session`` header of the answer, if any."""
        return self.headers.get(SESSION_HEADER)


@dataclass
class Target:
    """The server under test and how to reach it.

    Attributes:
        url: the server's base URL as given (``http://``, ``https://``, ``ws://`` or ``wss://``;
            a path is the prefix the server is mounted under).
        key: the key of the first principal (``Authorization: Bearer``), None for an open server.
        key2: the key of a second, different principal (the ownership cases need it).
        timeout: the bound on every wait for an answer, in seconds.
        max_message_size: the server's packet size limit, in bytes (PROTOCOL.md §4).
        max_upload_size: the server's upload size limit, in bytes (PROTOCOL.md §8).
        max_in_flight: the server's bound on requests in flight from one connection
            (PROTOCOL.md §4); 0 when it is unknown (the case of that rule is skipped).
        ssl: the TLS setting for aiohttp (True: verify against the system's CAs, as default;
            an `ssl.SSLContext` to trust another CA).
    """

    url: str
    key: str | None = None
    key2: str | None = None
    timeout: float = 5.0
    max_message_size: int = 4 * 1024 * 1024
    max_upload_size: int = 100 * 1024 * 1024
    max_in_flight: int = 1000
    ssl: Any = True
    http: aiohttp.ClientSession | None = field(default=None, repr=False)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        secure = parts.scheme in ("https", "wss")
        if parts.scheme not in ("http", "https", "ws", "wss"):
            raise ValueError(f"{self.url!r}: use an http://, https://, ws:// or wss:// URL")
        path = parts.path.rstrip("/")
        self.http_base = urlunsplit(("https" if secure else "http", parts.netloc, path, "", ""))
        self.ws_base = urlunsplit(("wss" if secure else "ws", parts.netloc, path, "", ""))

    def tag(self, what: str) -> str:
        """A name unique to this run (for the reference commands' ``tag`` params)."""
        return f"{what}-{self.run_id}-{uuid.uuid4().hex[:8]}"

    def endpoint(self, path: str) -> str:
        """The HTTP URL of an endpoint, e.g. ``/general``."""
        return self.http_base + path

    def auth(self, key: Key = DEFAULT, session: str | None = None) -> dict[str, str]:
        """The headers of a call made with `key` (DEFAULT: ``--key``) in `session`."""
        chosen = self.key if isinstance(key, _Default) else key
        headers = {"Authorization": f"Bearer {chosen}"} if chosen else {}
        if session is not None:
            headers[SESSION_HEADER] = session
        return headers

    @property
    def client(self) -> aiohttp.ClientSession:
        """The HTTP client of the run."""
        assert self.http is not None, "the runner opens the HTTP client"
        return self.http

    async def get(self, path: str, *, key: Key = DEFAULT, session: str | None = None) -> HttpAnswer:
        """``GET`` an endpoint and read the whole answer."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self.client.get(
                    self.endpoint(path), headers=self.auth(key, session), ssl=self.ssl
                ) as reply:
                    return HttpAnswer(reply.status, dict(reply.headers), await reply.read())
        except TimeoutError:
            raise CaseFailedError(f"no answer to GET {path} within {self.timeout:g} s") from None

    async def post(
        self,
        packet: Any,
        *,
        key: Key = DEFAULT,
        session: str | None = None,
        headers: Mapping[str, str] | None = None,
        path: str = "/general",
        timeout: float | None = None,
    ) -> HttpAnswer:
        """``POST`` a packet (a dict, or raw bytes/str sent as they are) to ``/general``."""
        if isinstance(packet, bytes | str):
            body = packet.encode() if isinstance(packet, str) else packet
        else:
            body = json.dumps(packet).encode()
        sent = {"Content-Type": "application/json", **self.auth(key, session), **(headers or {})}
        limit = timeout or self.timeout
        try:
            async with asyncio.timeout(limit):
                async with self.client.post(
                    self.endpoint(path), data=body, headers=sent, ssl=self.ssl
                ) as reply:
                    return HttpAnswer(reply.status, dict(reply.headers), await reply.read())
        except TimeoutError:
            raise CaseFailedError(f"no answer to POST {path} within {limit:g} s") from None

    async def call(
        self,
        command: str,
        params: Any = None,
        *,
        key: Key = DEFAULT,
        session: str | None = None,
        meta: Mapping[str, Any] | None = None,
        id: str | None = None,
    ) -> dict[str, Any]:
        """Send a Request with ``POST /general`` and return its Response (checked: a dict)."""
        answer = await self.post(
            request_packet(command, params, id=id, meta=meta), key=key, session=session
        )
        response = answer.json()
        check(isinstance(response, dict), f"POST /general answered {response!r}, not an object")
        assert isinstance(response, dict)
        return response

    async def socket(
        self,
        *,
        key: Key = DEFAULT,
        session: str | None = None,
        protocols: tuple[str, ...] = (),
        autoping: bool = True,
        path: str = "",
        greeting: bool = True,
    ) -> Socket:
        """Open a WebSocket (to the packet endpoint unless `path` is given).

        With `greeting` the first frame is read and checked to be the ``session`` event.

        Raises:
            aiohttp.WSServerHandshakeError: the upgrade was refused.
        """
        async with asyncio.timeout(self.timeout):
            ws = await self.client.ws_connect(
                self.ws_base + path if path else self.ws_base or "/",
                headers=self.auth(key, session),
                protocols=protocols,
                autoping=autoping,
                heartbeat=None,
                max_msg_size=0,  # the suite sends and reads packets at the size limit
                ssl=self.ssl,
            )
        sock = Socket(ws, self.timeout)
        if greeting:
            first = await sock.next()
            check(
                first.get("type") == "event" and first.get("name") == "session",
                f"the first frame of a WebSocket is not the 'session' event: {short(first)}",
            )
            data = first.get("data")
            check(isinstance(data, dict), f"the session event has no data object: {short(first)}")
            assert isinstance(data, dict)
            sock.greeting = data
        return sock


def short(value: Any, limit: int = 160) -> str:
    """`value` as JSON, cut to `limit` characters (for a reason line)."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Socket:
    """A raw WebSocket to the server: JSON text frames in and out.

    Frames read while waiting for something else are kept in `backlog`, so a case can wait for
    a Response and still look at the events that came before it.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, timeout: float) -> None:
        self.ws = ws
        self.timeout = timeout
        self.backlog: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] = {}

    @property
    def session(self) -> str:
        """The session key of the ``session`` event."""
        key = self.greeting.get("session")
        check(isinstance(key, str) and key, f"the session event has no key: {self.greeting}")
        assert isinstance(key, str)
        return key

    async def send(self, packet: Any) -> None:
        """Send a packet (a dict as JSON; a str as it is, in a text frame)."""
        await self.ws.send_str(packet if isinstance(packet, str) else json.dumps(packet))

    async def request(
        self,
        command: str,
        params: Any = None,
        *,
        id: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Send a Request; return its id."""
        packet = request_packet(command, params, id=id, meta=meta)
        await self.send(packet)
        return str(packet["id"])

    async def cancel(self, request_id: str) -> None:
        """Withdraw a request with the ``siyi.cancel`` event (PROTOCOL.md §10)."""
        await self.send(cancel_packet(request_id))

    async def call(
        self,
        command: str,
        params: Any = None,
        *,
        id: str | None = None,
        meta: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send a Request and wait for its Response."""
        request_id = await self.request(command, params, id=id, meta=meta)
        return await self.response(request_id, timeout)

    async def response(
        self, request_id: str | None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Wait for the Response with this id (None: the Response to a frame with no usable id)."""
        return await self.expect(
            lambda p: p.get("type") == "response" and p.get("id") == request_id,
            f"Response with id {request_id!r}",
            timeout,
        )

    async def next(self, timeout: float | None = None) -> dict[str, Any]:
        """The next packet, from the backlog first."""
        if self.backlog:
            return self.backlog.pop(0)
        return await self._read(timeout or self.timeout)

    async def expect(
        self,
        match: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """The first packet that `match` accepts; the others stay in the backlog.

        Raises:
            CaseFailedError: none came within the timeout, or the WebSocket closed first.
        """
        for index, packet in enumerate(self.backlog):
            if match(packet):
                return self.backlog.pop(index)
        limit = timeout or self.timeout
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CaseFailedError(f"no {what} within {limit:g} s")
            try:
                packet = await self._read(left)
            except TimeoutError:
                raise CaseFailedError(f"no {what} within {limit:g} s") from None
            if match(packet):
                return packet
            self.backlog.append(packet)

    async def nothing(
        self, match: Callable[[dict[str, Any]], bool], seconds: float
    ) -> dict[str, Any] | None:
        """Read for `seconds`: the first packet `match` accepts if one comes, else None."""
        try:
            return await self.expect(match, "packet", seconds)
        except CaseFailedError as exc:
            if "closed" in str(exc):
                raise
            return None

    async def _read(self, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            message = await self.ws.receive()
        if message.type == aiohttp.WSMsgType.TEXT:
            try:
                packet = json.loads(message.data)
            except ValueError:
                raise CaseFailedError(f"a text frame is not JSON: {message.data[:120]!r}") from None
            check(isinstance(packet, dict), f"a text frame is not a JSON object: {short(packet)}")
            assert isinstance(packet, dict)
            return packet
        if message.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            raise CaseFailedError(f"the WebSocket closed (code {self.ws.close_code})")
        if message.type == aiohttp.WSMsgType.ERROR:
            raise CaseFailedError(f"the WebSocket failed: {self.ws.exception()}")
        raise CaseFailedError(f"an unexpected {message.type.name} frame")

    async def closed(self, timeout: float | None = None) -> int | None:
        """Read until the server closes the WebSocket; its close code.

        Raises:
            CaseFailedError: it stayed open for the whole timeout.
        """
        limit = timeout or self.timeout
        try:
            async with asyncio.timeout(limit):
                while True:
                    message = await self.ws.receive()
                    if message.type == aiohttp.WSMsgType.CLOSE and isinstance(message.data, int):
                        # The code in the server's close frame: aiohttp's close_code says 1006
                        # when the server drops the TCP connection before our reply.
                        return message.data
                    if message.type in (
                        aiohttp.WSMsgType.CLOSING,
                        aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR,
                    ):
                        return self.ws.close_code
        except TimeoutError:
            raise CaseFailedError(
                f"the server did not close the WebSocket within {limit:g} s"
            ) from None

    async def drop(self) -> None:
        """Leave without ending the session: close with 4000, not 1000 (PROTOCOL.md §7 End)."""
        await self.ws.close(code=4000)

    async def close(self) -> None:
        """Close the WebSocket, ending the session (1000)."""
        await self.ws.close()


def cancel_packet(request_id: str) -> dict[str, Any]:
    """The ``siyi.cancel`` event for `request_id` (PROTOCOL.md §10)."""
    return {
        "id": str(uuid.uuid4()),
        "type": "event",
        "name": "siyi.cancel",
        "data": {"id": request_id},
    }


def ack_packet(request_id: str, seq: int) -> dict[str, Any]:
    """The ``siyi.ack`` event: every chunk of `request_id` up to `seq` is consumed (§10)."""
    return {
        "id": str(uuid.uuid4()),
        "type": "event",
        "name": "siyi.ack",
        "data": {"id": request_id, "seq": seq},
    }
