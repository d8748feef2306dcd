"""What the dashboard's tests share: keys, a server with the demo-ish commands, HTTP helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from siyi_sdk import ApiError, Connection, ProtocolServer
from siyi_sdk.server.admin import Dashboard

READ_KEY = "read-only-key-1"
OPERATOR_KEY = "operator-key-1"


def dashboard_server(**options: Any) -> ProtocolServer:
    """A server with both dashboard keys and three commands: ``echo``, ``fail``, ``slow``."""
    options.setdefault("port", 0)
    options.setdefault("shutdown_timeout", 1.0)
    options.setdefault("admin_key", READ_KEY)
    options.setdefault("admin_operator_key", OPERATOR_KEY)
    server = ProtocolServer(**options)

    @server.command("echo")
    def echo(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
        return params

    @server.command("fail")
    def fail(connection: Connection, params: dict[str, Any]) -> None:
        raise ApiError("refused on purpose", code=1001)

    @server.command("slow")
    async def slow(connection: Connection, params: dict[str, Any]) -> float:
        delay = float(params.get("delay", 0.005))
        await asyncio.sleep(delay)  # the handler under test takes time: that is its job
        return delay

    return server


def dashboard(server: ProtocolServer) -> Dashboard:
    """The server's dashboard (it has one: the tests give it keys)."""
    assert server.dashboard is not None
    return server.dashboard


def admin_url(server: ProtocolServer, tail: str = "/", prefix: str = "") -> str:
    return f"http://127.0.0.1:{server.port}{prefix}/admin{tail}"


def apply_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7396) as the page does: what the feed's ticks carry."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_patch(out.get(key), value)
    return out


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def browser_like() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that keeps cookies for 127.0.0.1, as a browser does."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield http


async def log_in(
    http: aiohttp.ClientSession, server: ProtocolServer, key: str, prefix: str = ""
) -> str:
    """Log in through the form as a browser would; returns the CSRF token from ``api/me``."""
    origin = f"http://127.0.0.1:{server.port}"
    async with http.post(
        admin_url(server, "/login", prefix),
        data={"key": key},
        headers={"Origin": origin},
        allow_redirects=False,
    ) as reply:
        assert reply.status == 303, await reply.text()
    async with http.get(admin_url(server, "/api/me", prefix)) as reply:
        assert reply.status == 200
        me = await reply.json()
    return str(me["csrf"])


class ServerThread:
    """A dashboard server on an event loop of its own thread, for tests that block (Selenium).

    WebDriver calls block the thread they run on; the server must go on answering meanwhile.
    `run` hands a coroutine to the server's loop and waits for its result.
    """

    def __init__(self, **options: Any) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: ProtocolServer = self.run(self._start(options))

    async def _start(self, options: dict[str, Any]) -> ProtocolServer:
        server = dashboard_server(**options)
        await server.start_serving()
        return server

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run `coro` on the server's loop; its result (or its exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def close(self) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
