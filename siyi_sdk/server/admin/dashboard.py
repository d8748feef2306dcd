"""The dashboard's routes and its ticker: ``ProtocolServer(admin_key=..., admin_path="/admin")``.

Routes, under the server's mount prefix and `path`:

=====================================  =====================================================
``GET  {path}/``                       the page (the login form until a key was presented)
``POST {path}/login``                  the form's key: sets the login cookie (auth.py)
``POST {path}/logout``                 clears it
``GET  {path}/static/{file}``          the page's script and style (a key needed)
``GET  {path}/feed``                   the live feed (WebSocket; feed.py)
``GET  {path}/api/me``                 the caller's role and CSRF token
``GET  {path}/api/stats``              the figures as JSON (``?history=1`` with the charts')
``GET  {path}/api/sessions``           a page of the sessions table (``query``, ``page``,
                                       ``size``)
``GET  {path}/api/trace``              the trace (operators)
``POST {path}/api/sessions/{id}/...``  ``disconnect``, ``end``, ``event`` (operators)
``POST {path}/api/broadcast``          an event to every client (operators)
``POST {path}/api/trace``              start (``{"session": id, "bodies": false}``) or stop
                                       (``{"session": null}``) the trace (operators)
=====================================  =====================================================

Every answer is ``no-store`` and may not be framed (``frame-ancestors 'none'``: no page of
another site can lay the operator's buttons under a click of its own). Sessions are named by
their tag (the first 12 hex digits of the SHA-256 of their key, as in the logs): no key is
shown or accepted whole.

Why one module of about 460 lines: every route above is a few lines that check the caller
(role, CSRF token, Origin) the same way and hand the work to `figures`, `feed` or `trace`; kept
together, the checks of each route are read beside those of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any, Final

import orjson
from aiohttp import web

from ...errors import NotConnectedError
from .auth import AdminAuth, Caller
from .cluster import Cluster
from .feed import Feed
from .figures import Figures
from .recorder import CallRecorder
from .trace import Trace

__all__ = ["TICK", "Dashboard"]

logger = logging.getLogger(__name__)

TICK: Final = 1.0
"""Seconds between two computations of the figures (and two messages of the feed)."""

_STATIC = {
    "admin.js": "application/javascript",
    "admin.css": "text/css",
    "login.css": "text/css",
}
_PUBLIC = frozenset({"login.css"})
"""What the login form needs before any key: its style, which holds nothing."""
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not "no-referrer": with it a browser sends "Origin: null" on the page's own POSTs.
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _local_address(request: web.Request) -> str | None:
    """``host:port`` of the socket `request` came in on (this node's own, behind a balancer)."""
    transport = request.transport
    name = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(name, tuple) or len(name) < 2:
        return None
    host = str(name[0])
    return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class Dashboard:
    """The live dashboard of one server (see the module and README's "Dashboard").

    Args:
        server: the `ProtocolServer` it shows.
        path: where it is served (under the server's mount prefix).
        read_key: the read-only key.
        operator_key: the operator key (the only role allowed to act).

    Attributes:
        recorder: the per-command counters the dispatcher feeds (`Dispatcher.calls`).
        figures: what each tick computes.
        cluster: every node's figures (with a `RedisBackplane`).
        trace: the live trace of one session.
        feed: the open pages.
    """

    def __init__(
        self, server: Any, path: str, read_key: str | None, operator_key: str | None
    ) -> None:
        self.server = server
        self.path = "/" + path.strip("/") if path.strip("/") else ""
        if not self.path:
            raise ValueError("admin_path must not be the root: give it a path like '/admin'")
        self.auth = AdminAuth(read_key, operator_key, self.path)
        self.recorder = CallRecorder()
        self.figures = Figures(server, self.recorder)
        self.cluster = Cluster(server.backplane)
        self.trace = Trace(server.dispatcher)
        self.feed = Feed(self.figures.sessions)
        self.nodes: list[dict[str, Any]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._address: str | None = None
        self._tick_lock = asyncio.Lock()
        server.dispatcher.calls = self.recorder

    # Mounting ----------------------------------------------------------------------------------

    def mount(self, app: web.Application, prefix: str) -> None:
        """Add the dashboard's routes under `prefix` and its ticker to `app`'s lifecycle."""
        base = prefix.rstrip("/") + self.path
        self.auth.path = base
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "", self._redirect),
            ("GET", "/", self._index),
            ("POST", "/login", self._login),
            ("POST", "/logout", self._logout),
            ("GET", "/static/{name}", self._static),
            ("GET", "/feed", self._feed),
            ("GET", "/api/me", self._me),
            ("GET", "/api/stats", self._stats),
            ("GET", "/api/sessions", self._sessions),
            ("GET", "/api/trace", self._trace_get),
            ("POST", "/api/trace", self._trace_set),
            ("POST", "/api/broadcast", self._broadcast),
            ("POST", "/api/sessions/{id}/{action}", self._act),
        ]
        for method, tail, handler in routes:
            app.router.add_route(method, base + tail, self._secured(handler))
        app.cleanup_ctx.append(self._lifespan)
        app.on_shutdown.append(self._shutdown)

    def _secured(self, handler: Handler) -> Handler:
        async def secured(request: web.Request) -> web.StreamResponse:
            if self._address is None:
                self._address = _local_address(request)
            response = await handler(request)
            if not response.prepared:
                response.headers.update(_SECURITY_HEADERS)
            return response

        return secured

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        self._ticker = asyncio.create_task(self._tick_forever())
        try:
            yield
        finally:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self.trace.stop()

    async def _shutdown(self, app: web.Application) -> None:
        await self.feed.close()

    # The tick ----------------------------------------------------------------------------------

    async def tick(self) -> dict[str, Any]:
        """Compute the figures now, exchange them with the cluster and feed every viewer."""
        async with self._tick_lock:
            server = self.server
            # The socket a request reached (right when mounted in an application of the user's,
            # whose port the server does not know), else what the server was asked to bind.
            self.figures.address = self._address or f"{server.host}:{server.port}"
            doc = self.figures.tick()
            self.nodes = await self.cluster.exchange(doc["node"])
            await self.feed.tick(self.document(), self.figures.point, self.trace)
            return doc

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.tick()
            except Exception:
                logger.exception("the dashboard's tick failed")
            next_at += TICK
            now = loop.time()
            if next_at < now:  # the loop was busy: skip what was missed, never burst
                next_at = now + TICK
            await asyncio.sleep(next_at - now)

    def document(self) -> dict[str, Any]:
        """The figures as ``api/stats`` serves them: this node's, its commands', every node's."""
        doc = self.figures.doc
        return {
            "time": doc.get("time", round(time.time(), 3)),
            "node": doc.get("node", {}),
            "commands": doc.get("commands", {}),
            "nodes": {node["id"]: node for node in self.nodes},
        }

    # Who is asking -----------------------------------------------------------------------------

    def _caller(self, request: web.Request) -> Caller | None:
        return self.auth.caller(request)

    def _hello(self, caller: Caller) -> dict[str, Any]:
        return {
            "role": caller.role,
            "csrf": caller.csrf,
            "doc": self.document(),
            "history": self.figures.history(),
        }

    # Pages -------------------------------------------------------------------------------------

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": self.auth.path + "/"})

    async def _index(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        name = "index.html" if caller is not None else "login.html"
        return web.Response(body=_static(name), content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _PUBLIC and self._caller(request) is None:
            return _error(401, "log in first")
        kind = _STATIC.get(name)
        if kind is None:
            return _error(404, "no such file")
        return web.Response(body=_static(name), content_type=kind, charset="utf-8")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        address = request.remote or "?"
        if not self.auth.same_origin(request):
            return _error(403, "cross-site login refused")
        wait = self.auth.throttle.retry_after(address)
        if wait > 0:
            logger.warning("dashboard: login from %s throttled (%.0f s)", address, wait)
            response = _error(429, f"too many failed logins: try again in {wait:.0f} s")
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        form = await request.post()
        key = form.get("key")
        role = self.auth.role_of_key(key) if isinstance(key, str) else None
        if role is None:
            self.auth.throttle.failed(address)
            logger.warning("dashboard: a wrong key from %s", address)
            return web.Response(
                body=_static("login.html").replace(
                    b"<!--error-->", b'<p class="error" id="error">Wrong key.</p>'
                ),
                status=401,
                content_type="text/html",
                charset="utf-8",
            )
        self.auth.throttle.succeeded(address)
        logger.info("dashboard: %s logged in from %s", role, address)
        response = web.Response(status=303, headers={"Location": self.auth.path + "/"})
        self.auth.set_cookie(response, request, role)
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        # The page's plain form (no CSRF header): the cookie is SameSite=Strict, and the
        # origin must be this server's, so another site cannot log the operator out either.
        if not self.auth.same_origin(request):
            return _error(403, "cross-site request refused")
        response = web.Response(status=303, headers={"Location": self.auth.path + "/"})
        self.auth.clear_cookie(response, request)
        return response

    # Reading -----------------------------------------------------------------------------------

    async def _me(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        if caller is None:
            return _error(401, "a dashboard key is needed")
        return _json({"role": caller.role, "csrf": caller.csrf, "may_act": caller.may_act})

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        if self._caller(request) is None:
            return _error(401, "a dashboard key is needed")
        if not self.figures.doc:
            await self.tick()  # asked before the first tick: compute it now
        body = self.document()
        if request.query.get("history") in ("1", "true"):
            body["history"] = self.figures.history()
        return _json(body)

    async def _sessions(self, request: web.Request) -> web.StreamResponse:
        if self._caller(request) is None:
            return _error(401, "a dashboard key is needed")
        query = request.query
        try:
            page, size = int(query.get("page", "0")), int(query.get("size", "50"))
        except ValueError:
            return _error(400, "page and size are numbers")
        return _json(self.figures.sessions(query.get("query", ""), page, size))

    async def _feed(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        if caller is None:
            return _error(401, "a dashboard key is needed")
        if not self.auth.same_origin(request):
            # A page of another site may open a WebSocket here, and the browser would not stop
            # it (WebSockets ignore the same-origin policy); this check does.
            logger.warning(
                "dashboard: a feed from another origin refused: %r from %s",
                request.headers.get("Origin"),
                request.remote,
            )
            return _error(403, "cross-site feed refused")
        if caller.by_cookie and "Origin" not in request.headers:
            return _error(403, "a browser's feed must say its Origin")
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024)
        await ws.prepare(request)
        await self.feed.serve(ws, caller, self._hello(caller), request.transport)
        return ws

    async def _trace_get(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        if caller is None:
            return _error(401, "a dashboard key is needed")
        if not caller.may_act:
            return _error(403, "the trace is for operators")
        trace = self.trace
        return _json({"session": trace.tag, "bodies": trace.bodies, "entries": trace.since(0)})

    # Acting ------------------------------------------------------------------------------------

    async def _operator(self, request: web.Request) -> Caller | web.Response:
        caller = self._caller(request)
        if caller is None:
            return _error(401, "a dashboard key is needed")
        if not caller.may_act:
            logger.warning(
                "dashboard: %s refused to a read-only caller from %s", request.path, request.remote
            )
            return _error(403, "read-only: only the operator key may act")
        if not self.auth.may_post(request, caller):
            logger.warning("dashboard: a cross-site action refused from %s", request.remote)
            return _error(403, "cross-site request refused")
        return caller

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise web.HTTPBadRequest(text="the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object")
        return body

    def _log_action(self, caller: Caller, request: web.Request, what: str) -> None:
        # Who did it: the role (the only identity a shared key gives) and where from.
        logger.warning(
            "dashboard: the %s from %s %s",
            caller.role,
            request.remote,
            what,
            extra={"admin_role": caller.role, "admin_remote": request.remote},
        )

    async def _act(self, request: web.Request) -> web.StreamResponse:
        caller = await self._operator(request)
        if isinstance(caller, web.Response):
            return caller
        tag, action = request.match_info["id"], request.match_info["action"]
        if action not in ("disconnect", "end", "event"):
            return _error(404, f"no action {action!r}")
        session = self.figures.find(tag)
        if session is None:
            return _error(404, "no such session on this node")
        if action == "disconnect":
            # The session stays resumable: the client reconnects and gets what was buffered.
            self._log_action(caller, request, f"disconnected session {tag}")
            await session.close(1012, "disconnected by an operator")
        elif action == "end":
            self._log_action(caller, request, f"ended session {tag}")
            # Closed first, so the client hears why (1008), then ended: its buffer is dropped
            # and a reconnect with its key opens a fresh session.
            await session.close(1008, "session ended by an operator")
            self.server.sessions.end(session)
        else:
            body = await self._body(request)
            name = body.get("name")
            if not isinstance(name, str) or not name:
                return _error(400, "an event needs a name")
            self._log_action(caller, request, f"sent event {name!r} to session {tag}")
            try:
                await session.send_event(name, body.get("data"))
            except NotConnectedError:
                return _error(404, "the session has ended")
        return _json({"ok": True, "action": action, "session": tag})

    async def _broadcast(self, request: web.Request) -> web.StreamResponse:
        caller = await self._operator(request)
        if isinstance(caller, web.Response):
            return caller
        body = await self._body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return _error(400, "an event needs a name")
        self._log_action(caller, request, f"broadcast event {name!r}")
        await self.server.broadcast_event(name, body.get("data"))
        return _json({"ok": True, "action": "broadcast", "name": name})

    async def _trace_set(self, request: web.Request) -> web.StreamResponse:
        caller = await self._operator(request)
        if isinstance(caller, web.Response):
            return caller
        body = await self._body(request)
        tag = body.get("session")
        if not tag:
            if self.trace.on:
                self._log_action(caller, request, f"stopped the trace of session {self.trace.tag}")
            self.trace.stop()
            return _json({"ok": True, "session": ""})
        session = self.figures.find(str(tag))
        if session is None:
            return _error(404, "no such session on this node")
        bodies = bool(body.get("bodies", False))
        self._log_action(
            caller,
            request,
            f"started a trace of session {tag}" + (" with bodies" if bodies else ""),
        )
        self.trace.start(session, bodies)
        return _json({"ok": True, "session": tag, "bodies": bodies})
