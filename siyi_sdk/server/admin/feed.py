"""The dashboard's live feed: one WebSocket per open page, fed once a tick with deltas.

Every message is JSON. On connecting, a viewer gets ``hello``: the whole document (this
node's figures, each command's, every node of the cluster) and the 15 minutes of history.
Then once a tick, ``tick``: a JSON merge patch (RFC 7396) from the previous tick's document
to this one, and the history point this tick added. Both are encoded once per tick and the
same bytes go to every viewer. A viewer that asks for a page of the sessions table
(``{"sessions": {"query": ..., "page": ..., "size": ...}}``) gets it whole, then its merge
patch each tick, computed once per distinct page however many viewers look at it. Operators
also get the trace's new entries (``trace``). Documents hold no nulls: a null in a patch
removes its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

import orjson
from aiohttp import WSMsgType, web

from ...frames import writable
from .auth import Caller

__all__ = ["Feed", "Viewer", "merge_patch", "page_doc"]

logger = logging.getLogger(__name__)

SLOW_VIEWER: Final = 4 * 1024 * 1024
"""Bytes waiting to be written to a viewer past which it is closed (it does not read)."""


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7396) that turns `old` into `new` (neither holds nulls)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif before != value or key not in old:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def page_doc(page: dict[str, Any]) -> dict[str, Any]:
    """A page of the sessions table as a document a merge patch can update row by row."""
    rows = page["rows"]
    return {
        "query": page["query"],
        "page": page["page"],
        "size": page["size"],
        "total": page["total"],
        "order": [row["id"] for row in rows],
        "rows": {row["id"]: row for row in rows},
    }


PageKey = tuple[str, int, int]


class Viewer:
    """One open page's WebSocket.

    Attributes:
        ws: the socket.
        caller: who logged in (operators get the trace).
        page: the page of the sessions table it looks at (None: none).
        trace_seen: the trace it was last sent: the traced session's tag and the entries
            recorded then.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        caller: Caller,
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self.ws = ws
        self.caller = caller
        self.page: PageKey | None = None
        self.trace_seen: tuple[str, int] = ("", 0)
        self._transport = writable(transport)

    async def send(self, text: str) -> None:
        """Send one message; a viewer too far behind is closed rather than waited for."""
        ws = self.ws
        if ws.closed:
            return
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() > SLOW_VIEWER:
            await ws.close(code=1013, message=b"too slow: reload the page")
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(text)


class Feed:
    """Every viewer of one node's dashboard, and what each tick sends them.

    Args:
        pages: ``pages(query, page, size)``: one page of the sessions table.
    """

    def __init__(self, pages: Any) -> None:
        self._pages = pages
        self.viewers: set[Viewer] = set()
        self.doc: dict[str, Any] = {}
        self._page_docs: dict[PageKey, dict[str, Any]] = {}

    def _page(self, key: PageKey) -> dict[str, Any]:
        return page_doc(self._pages(*key))

    async def serve(
        self,
        ws: web.WebSocketResponse,
        caller: Caller,
        hello: dict[str, Any],
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        """Feed one viewer until its socket closes (the WebSocket's handler calls this)."""
        viewer = Viewer(ws, caller, transport)
        self.viewers.add(viewer)
        try:
            await viewer.send(orjson.dumps({"type": "hello", **hello}).decode())
            async for message in ws:
                if message.type is not WSMsgType.TEXT:
                    continue
                try:
                    asked = orjson.loads(message.data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(asked, dict) and isinstance(asked.get("sessions"), dict):
                    await self._subscribe(viewer, asked["sessions"])
        finally:
            self.viewers.discard(viewer)

    async def _subscribe(self, viewer: Viewer, asked: dict[str, Any]) -> None:
        try:
            query = str(asked.get("query", ""))[:200].strip().lower()
            page = max(0, int(asked.get("page", 0)))
            size = max(1, min(500, int(asked.get("size", 50))))
        except (TypeError, ValueError):
            return
        key = (query, page, size)
        viewer.page = key
        doc = self._page_docs.get(key)
        if doc is None:
            doc = self._page_docs[key] = self._page(key)
        await viewer.send(orjson.dumps({"type": "sessions", "full": doc}).decode())

    async def tick(
        self, doc: dict[str, Any], point: dict[str, Any], trace: Any | None = None
    ) -> None:
        """Send this tick's deltas to every viewer (each message encoded once)."""
        patch = merge_patch(self.doc, doc)
        self.doc = doc
        if not self.viewers:
            self._page_docs.clear()
            return
        tick = orjson.dumps({"type": "tick", "patch": patch, "point": point}).decode()
        sends = []
        page_messages: dict[PageKey, str | None] = {}
        wanted = {viewer.page for viewer in self.viewers if viewer.page is not None}
        for key in list(self._page_docs):
            if key not in wanted:
                del self._page_docs[key]
        for key in wanted:
            old = self._page_docs.get(key)
            new = self._page(key)
            self._page_docs[key] = new
            if old is None:
                page_messages[key] = orjson.dumps({"type": "sessions", "full": new}).decode()
            else:
                change = merge_patch(old, new)
                page_messages[key] = (
                    orjson.dumps({"type": "sessions", "patch": change}).decode() if change else None
                )
        trace_message: str | None = None
        trace_state = ("", 0) if trace is None else (trace.tag, trace.sequence)
        for viewer in list(self.viewers):
            sends.append(viewer.send(tick))
            if viewer.page is not None and (text := page_messages.get(viewer.page)):
                sends.append(viewer.send(text))
            if trace is not None and viewer.caller.may_act and viewer.trace_seen != trace_state:
                if trace_message is None:
                    trace_message = orjson.dumps(
                        {
                            "type": "trace",
                            "tag": trace.tag,
                            "bodies": trace.bodies,
                            "entries": trace.since(0),
                        }
                    ).decode()
                sends.append(viewer.send(trace_message))
                viewer.trace_seen = trace_state
        await asyncio.gather(*sends, return_exceptions=True)

    async def close(self) -> None:
        """Close every viewer's socket (the server is stopping)."""
        await asyncio.gather(
            *(viewer.ws.close(code=1001, message=b"server stopping") for viewer in self.viewers),
            return_exceptions=True,
        )
