"""The dashboard's figures, computed once per tick for every viewer (and ``api/stats``).

`Figures.tick` runs once a second on each node: it reads the server's counters
(`ServerStats.snapshot`, one pass over the sessions), the per-command counters of the
`CallRecorder`, and turns the difference with a few ticks ago into rates and latency
quantiles. Its result (`Figures.doc`) and the 15 minutes of history are shared by every viewer
and every call of ``api/stats``: a viewer costs a send, never a computation. The sessions table
is paged and searched here too (`Figures.sessions`), once per tick per distinct query.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ..._version import __version__
from .recorder import CallRecorder, quantile

if TYPE_CHECKING:
    from ..connection import Connection

__all__ = ["HISTORY", "WINDOW", "Figures", "session_row"]

WINDOW: Final = 5
"""Ticks the rates and the latency quantiles are taken over (5 s at one tick a second)."""
HISTORY: Final = 900
"""Points of history kept for the charts: 15 minutes at one a second."""
NODE_SERIES: Final = (
    "requests",
    "errors",
    "events",
    "events_out",
    "bytes_in",
    "bytes_out",
    "connections",
)
COMMAND_SERIES: Final = ("rate", "error_rate", "p50", "p99")


@dataclass(slots=True)
class _Mark:
    """The cumulative counters at one tick, to take differences from."""

    at: float
    totals: dict[str, int]
    commands: dict[str, tuple[int, int, list[int]]] = field(default_factory=dict)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _wall(monotonic: float, now_wall: float, now_mono: float) -> float:
    return round(now_wall - (now_mono - monotonic), 3)


def session_row(session: Connection, now_wall: float, now_mono: float) -> dict[str, Any]:
    """One row of the sessions table: nothing of the key but its tag (a hash prefix)."""
    peer = session.peer
    address = session.remote_address
    principal = session.principal
    state = _state(session)
    return {
        "id": session.log_session,
        "remote": f"{address[0]}:{address[1]}" if address else "",
        "principal": "" if principal is None else str(principal)[:80],
        "transport": session.transport,
        "state": state,
        "since": _wall(session.opened, now_wall, now_mono),
        "in_flight": len(peer.handling) if peer is not None else 0,
        "buffered": session.buffered,
        "dropped": session.dropped,
    }


class Figures:
    """Computes and keeps the figures of one node (see the module).

    Args:
        server: the `ProtocolServer` (its stats, sessions, backplane, settings).
        recorder: the per-command counters.
        address: how this node is named on the page (``host:port``).
    """

    def __init__(self, server: Any, recorder: CallRecorder, address: str = "") -> None:
        self.server = server
        self.recorder = recorder
        self.address = address
        self.started_wall = time.time()
        self.started = time.monotonic()
        self._marks: deque[_Mark] = deque(maxlen=WINDOW + 1)
        self.doc: dict[str, Any] = {}
        """The latest figures: ``{"node": ..., "commands": ...}`` (no None values)."""
        self.times: deque[float] = deque(maxlen=HISTORY)
        self.node_history: dict[str, deque[float | None]] = {
            name: deque(maxlen=HISTORY) for name in NODE_SERIES
        }
        self.command_history: dict[str, dict[str, deque[float | None]]] = {}
        self.point: dict[str, Any] = {}
        """The history point the latest tick added (sent to viewers as it is)."""
        self._ordered: list[Connection] | None = None
        self._pages: dict[tuple[str, int, int], dict[str, Any]] = {}

    # The tick ----------------------------------------------------------------------------------

    def tick(self) -> dict[str, Any]:
        """Compute this tick's figures (`doc`) and history point; returns `doc`."""
        server = self.server
        now, now_wall = time.monotonic(), time.time()
        snap = server.lifecycle.stats.snapshot(server)
        recorder = self.recorder
        buffered = sum(session.buffered for session in server.sessions)
        requests = errors = 0
        commands: dict[str, tuple[int, int, list[int]]] = {}
        for name, figures in list(recorder.commands.items()):
            requests += figures.count
            errors += figures.errors
            commands[name] = (figures.count, figures.errors, list(figures.histogram))
        totals = {
            "requests": requests,
            "errors": errors,
            "events": recorder.events,
            "events_out": snap.events_sent,
            "bytes_in": snap.bytes[("websocket", "receive")] + snap.bytes[("http", "receive")],
            "bytes_out": snap.bytes[("websocket", "transmit")] + snap.bytes[("http", "transmit")],
            "packets_in": snap.packets[("websocket", "receive")]
            + snap.packets[("http", "receive")],
            "packets_out": snap.packets[("websocket", "transmit")]
            + snap.packets[("http", "transmit")],
            "replayed": snap.replayed,
            "dropped": snap.dropped,
            "busy": snap.busy,
            "upload_bytes": snap.upload_bytes,
        }
        mark = _Mark(now, totals, commands)
        self._marks.append(mark)
        first = self._marks[0]
        span = now - first.at
        rates = {
            key: round((totals[key] - first.totals[key]) / span, 2) if span > 0 else 0.0
            for key in ("requests", "errors", "events", "events_out", "bytes_in", "bytes_out")
        }
        connections = {
            "websocket": snap.websockets,
            "http": snap.http_calls,
            "upload": snap.uploads_active,
        }
        backplane = server.backplane
        node: dict[str, Any] = {
            "id": backplane.node_id,
            "address": self.address,
            "version": __version__,
            "started": round(self.started_wall, 3),
            "uptime": round(now - self.started, 1),
            "up": True,
            "connections": connections,
            "sessions": {
                "attached": snap.sessions_attached,
                "away": snap.sessions_away,
                "provisional": snap.sessions_provisional,
            },
            "rates": rates,
            "totals": totals,
            "buffered": buffered,
            "uploads": snap.uploads_active,
        }
        if snap.backplane_up is not None:
            node["backplane"] = {"up": snap.backplane_up, "outages": snap.backplane_outages}
            if snap.backplane_round_trip is not None:
                node["backplane"]["round_trip_ms"] = _ms(snap.backplane_round_trip)
        command_doc: dict[str, Any] = {}
        for name, (count, errs, histogram) in commands.items():
            before = first.commands.get(name, (0, 0, None))
            done = count - before[0]
            window = (
                histogram
                if before[2] is None
                else [
                    now_count - then for now_count, then in zip(histogram, before[2], strict=True)
                ]
            )
            entry: dict[str, Any] = {
                "count": count,
                "errors": errs,
                "rate": round(done / span, 2) if span > 0 else 0.0,
                "error_rate": round((errs - before[1]) / span, 2) if span > 0 else 0.0,
            }
            p50, p99 = _ms(quantile(window, done, 0.5)), _ms(quantile(window, done, 0.99))
            if p50 is not None and p99 is not None:
                entry["p50"], entry["p99"] = p50, p99
            command_doc[name] = entry
        self.doc = {"time": round(now_wall, 3), "node": node, "commands": command_doc}
        self._add_point(now_wall, node, command_doc)
        self._ordered = None
        self._pages.clear()
        return self.doc

    def _add_point(self, at: float, node: dict[str, Any], commands: dict[str, Any]) -> None:
        length = len(self.times)
        self.times.append(round(at, 3))
        rates = node["rates"]
        values: dict[str, float | None] = {
            "requests": rates["requests"],
            "errors": rates["errors"],
            "events": rates["events"],
            "events_out": rates["events_out"],
            "bytes_in": rates["bytes_in"],
            "bytes_out": rates["bytes_out"],
            "connections": float(sum(node["connections"].values())),
        }
        for name, value in values.items():
            self.node_history[name].append(value)
        point_commands: dict[str, list[float | None]] = {}
        for name, entry in commands.items():
            series = self.command_history.get(name)
            if series is None:
                # A command first seen now: its past is empty, not zero.
                series = self.command_history[name] = {
                    key: deque([None] * length, maxlen=HISTORY) for key in COMMAND_SERIES
                }
            row = [entry["rate"], entry["error_rate"], entry.get("p50"), entry.get("p99")]
            for key, value in zip(COMMAND_SERIES, row, strict=True):
                series[key].append(value)
            point_commands[name] = row
        self.point = {"t": round(at, 3), "node": values, "commands": point_commands}

    def history(self) -> dict[str, Any]:
        """The last 15 minutes: times, the node's series, each command's series."""
        return {
            "t": list(self.times),
            "node": {name: list(values) for name, values in self.node_history.items()},
            "commands": {
                name: {key: list(values) for key, values in series.items()}
                for name, series in self.command_history.items()
            },
        }

    # Sessions ----------------------------------------------------------------------------------

    def _sessions(self) -> list[Connection]:
        ordered = self._ordered
        if ordered is None:
            # Oldest first, by the number each got when opened: pages do not move as sessions
            # are touched (the registry itself is ordered by last activity).
            ordered = self._ordered = sorted(self.server.sessions, key=_by_id)
        return ordered

    def sessions(self, query: str = "", page: int = 0, size: int = 50) -> dict[str, Any]:
        """One page of the sessions table, searched and paged here (shared within a tick).

        Args:
            query: words every row must contain (in its tag, address, principal, transport
                or state), case-insensitive; "" for every session.
            page: the page, from 0.
            size: rows per page (1..500).
        """
        size = max(1, min(500, size))
        page = max(0, page)
        query = query.strip().lower()[:200]
        key = (query, page, size)
        found = self._pages.get(key)
        if found is not None:
            return found
        sessions: Iterable[Connection] = self._sessions()
        if query:
            words = query.split()
            sessions = [s for s in sessions if _matches(s, words)]
        matching = sessions if isinstance(sessions, list) else list(sessions)
        now_mono, now_wall = time.monotonic(), time.time()
        rows = [
            session_row(s, now_wall, now_mono) for s in matching[page * size : (page + 1) * size]
        ]
        found = self._pages[key] = {
            "query": query,
            "page": page,
            "size": size,
            "total": len(matching),
            "rows": rows,
        }
        return found

    def find(self, tag: str) -> Connection | None:
        """The live session of this node whose tag is `tag` (what the page shows of it)."""
        if not tag:
            return None
        session: Connection
        for session in self.server.sessions:
            if session.log_session == tag and not session.ended:
                return session
        return None


def _state(session: Connection) -> str:
    if session.provisional:
        return "provisional"
    if session.is_connected:
        return "attached"
    if session.polls:
        return "polling"  # an HTTP-only client waiting on GET /events: away, yet served
    return "away"


def _by_id(session: Connection) -> int:
    return session.id


def _matches(session: Connection, words: list[str]) -> bool:
    address = session.remote_address
    principal = session.principal
    text = " ".join(
        (
            session.log_session,
            f"{address[0]}:{address[1]}" if address else "",
            "" if principal is None else str(principal)[:80],
            session.transport,
            _state(session),
        )
    ).lower()
    return all(word in text for word in words)
