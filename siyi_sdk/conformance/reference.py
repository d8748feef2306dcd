"""The reference command set on siyi's own `ProtocolServer` (``siyi serve --conformance``).

The conformance suite (`siyi_sdk.conformance.cases`) tests a server through these commands; any
implementation provides the same ones (the README's "Conformance" section describes each).
Their state lives in this process: run the suite against one node of a deployment.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ApiError
from ..packets import Event
from ..server import Connection, ProtocolServer

__all__ = [
    "ReferenceState",
    "SlowRun",
    "create_reference_server",
    "install_reference",
    "key_authenticator",
    "make_keys",
]

MAX_TAGS = 10_000
"""Tags remembered at most (slow runs, counters, records): a long-running server stays bounded."""


@dataclass
class SlowRun:
    """What became of one ``slow`` call."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    finished: bool = False

    def state(self) -> dict[str, bool]:
        """The answer of ``was_cancelled``."""
        return {
            "started": self.started.is_set(),
            "cancelled": self.cancelled,
            "finished": self.finished,
        }


class _Bounded(OrderedDict[str, Any]):
    """A dict that forgets its oldest keys past `MAX_TAGS`."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > MAX_TAGS:
            self.popitem(last=False)


class ReferenceState:
    """What the reference commands remember: runs per tag, slow calls, recorded events."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.slow: _Bounded = _Bounded()
        self.records: _Bounded = _Bounded()
        self.changed = asyncio.Condition()

    def run(self, tag: str) -> int:
        """Count one run of `tag`; how many there were."""
        if tag not in self.runs and len(self.runs) >= MAX_TAGS:
            self.runs.clear()
        self.runs[tag] += 1
        return self.runs[tag]

    def slow_run(self, tag: str) -> SlowRun:
        """The `SlowRun` of `tag` (made when first asked)."""
        run = self.slow.get(tag)
        if run is None:
            run = self.slow[tag] = SlowRun()
        return run


def _tag(params: Mapping[str, Any]) -> str:
    tag = params.get("tag")
    if not isinstance(tag, str) or not tag:
        raise ApiError("bad request: 'tag' must be a non-empty string", code=400)
    return tag


def _seconds(params: Mapping[str, Any], name: str, default: float) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ApiError(f"bad request: {name!r} must be a number of seconds", code=400)
    return float(min(value, 3600))


def install_reference(server: ProtocolServer) -> ReferenceState:
    """Register the reference command set and the ``record`` event on `server`.

    Returns:
        The state the commands share (tests may look into it).
    """
    state = ReferenceState()

    @server.command("echo")
    async def echo(connection: Connection, params: dict[str, Any]) -> Any:
        return params

    @server.command("fail")
    async def fail(connection: Connection, params: dict[str, Any]) -> Any:
        code = params.get("code")
        message = str(params.get("message") or "failed as asked")
        raise ApiError(message, code=code if isinstance(code, int) else None)

    @server.command("crash")
    async def crash(connection: Connection, params: dict[str, Any]) -> Any:
        raise RuntimeError("the crash command raised, as asked")

    @server.command("slow")
    async def slow(connection: Connection, params: dict[str, Any]) -> Any:
        tag = _tag(params)
        seconds = _seconds(params, "seconds", 1.0)
        run = state.slow_run(tag)
        state.run(tag)
        run.started.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            # What the suite asks `was_cancelled` about: the handler was stopped, not left on.
            run.cancelled = True
            raise
        finally:
            run.ended.set()
        run.finished = True
        return {"slept": seconds}

    @server.command("was_cancelled")
    async def was_cancelled(connection: Connection, params: dict[str, Any]) -> Any:
        run = state.slow_run(_tag(params))
        wait = _seconds(params, "wait", 0.0)
        until = run.started if params.get("until") == "started" else run.ended
        if wait:
            try:
                async with asyncio.timeout(wait):
                    await until.wait()
            except TimeoutError:
                pass
        return run.state()

    @server.command("bump")
    async def bump(connection: Connection, params: dict[str, Any]) -> Any:
        tag = _tag(params)
        # The run's own count: a second run of one id answers differently from the first.
        return {"tag": tag, "runs": state.run(tag)}

    @server.command("runs")
    async def runs(connection: Connection, params: dict[str, Any]) -> Any:
        return {"runs": state.runs.get(_tag(params), 0)}

    @server.command("count")
    async def count(connection: Connection, params: dict[str, Any]) -> AsyncIterator[int]:
        n = params.get("n", 3)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 1_000_000:
            raise ApiError("bad request: 'n' must be an integer from 0 to 1000000", code=400)
        for item in range(n):
            yield item

    @server.command("notify_me")
    async def notify_me(connection: Connection, params: dict[str, Any]) -> Any:
        name = params.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError("bad request: 'name' must be a non-empty string", code=400)
        await connection.send_event(name, params.get("data"))
        return {"sent": True}

    @server.command("ask_me")
    async def ask_me(connection: Connection, params: dict[str, Any]) -> Any:
        command = params.get("command")
        if not isinstance(command, str) or not command:
            raise ApiError("bad request: 'command' must be a non-empty string", code=400)
        asked = params.get("params")
        answer = await connection.send_request(
            command,
            asked if isinstance(asked, dict) else None,
            timeout=_seconds(params, "timeout", 10.0),
        )
        return {
            "status": answer.status,
            "code": answer.code,
            "data": answer.data,
            "error": answer.error,
        }

    @server.command("whoami")
    async def whoami(connection: Connection, params: dict[str, Any]) -> Any:
        return {"principal": None if connection.principal is None else str(connection.principal)}

    @server.command("recorded")
    async def recorded(connection: Connection, params: dict[str, Any]) -> Any:
        tag = _tag(params)
        want = params.get("count", 0)
        wait = _seconds(params, "wait", 0.0)

        def enough() -> bool:
            return isinstance(want, int) and len(state.records.get(tag, ())) >= want

        try:
            async with asyncio.timeout(wait), state.changed:
                await state.changed.wait_for(enough)
        except TimeoutError:
            pass
        return list(state.records.get(tag, ()))

    @server.on_event
    async def record(connection: Connection, event: Event) -> None:
        if event.name != "record" or not isinstance(event.data, dict):
            return
        tag, n = event.data.get("tag"), event.data.get("n")
        if not isinstance(tag, str):
            return
        async with state.changed:
            items = state.records.get(tag)
            if items is None:
                items = state.records[tag] = []
            items.append(n)
            state.changed.notify_all()

    return state


def make_keys() -> tuple[str, str]:
    """Two random keys, one per principal of the reference server."""
    return secrets.token_urlsafe(24), secrets.token_urlsafe(24)


def key_authenticator(keys: Mapping[str, str]) -> Any:
    """An ``authenticate`` callback: the principal of the Bearer key, compared in constant time.

    Args:
        keys: principal name -> key.
    """
    entries = [(principal, key.encode()) for principal, key in keys.items()]

    def authenticate(headers: Mapping[str, str]) -> str | None:
        value = headers.get("Authorization", "")
        scheme, _, given = value.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        found = None
        for principal, key in entries:
            # Every key is compared, so the time taken says nothing about which one matched.
            if hmac.compare_digest(given.encode(), key):
                found = principal
        return found

    return authenticate


def create_reference_server(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    keys: Mapping[str, str] | None = None,
    heartbeat_interval: float | None = 1.0,
    **kwargs: Any,
) -> ProtocolServer:
    """A `ProtocolServer` serving the reference command set to two principals.

    Args:
        host: the interface to bind.
        port: the TCP port (0: a free one).
        keys: principal name -> key; None serves an open server (one principal, so the
            suite's ownership cases are skipped).
        heartbeat_interval: seconds between pings (short, so the liveness cases can wait
            for one).
        kwargs: more `ProtocolServer` options (``backplane``, ``ssl``, ...).
    """
    if keys:
        kwargs["authenticate"] = key_authenticator(keys)
    server = ProtocolServer(host, port, heartbeat_interval=heartbeat_interval, **kwargs)
    install_reference(server)
    return server
