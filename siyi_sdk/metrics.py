"""OpenTelemetry metrics of siyi servers and clients (`siyi-sdk[otel]`).

``Metrics().install(server)`` on a server and ``Metrics().install(client)`` on a client (a
`ProtocolClient`, an `HttpAdapter`, an `AdapterManager`, an `Api`) are the one line to add.
Measurements go to the global meter provider (configure the OpenTelemetry SDK the usual way)
unless a `MeterProvider` is given. ``ProtocolServer(metrics_path="/metrics")`` serves them to
Prometheus with nothing else to set up (`siyi_sdk.server.prometheus`).

Two kinds of instruments, chosen for what they cost:

- **Per call**, recorded by a middleware (which `install` adds): the duration of each request
  handled (``rpc.server.call.duration``) and sent (``rpc.client.call.duration``), after the
  RPC semantic conventions, and of each broadcast's fan-out. A middleware takes the server's
  requests off its flat path, so these cost each request a few microseconds, and only where a
  `Metrics` is installed.
- **Counted by the server anyway**: connections, sessions by state, packets and bytes in and
  out, replayed and dropped packets, 429s, uploads, the backplane's round trip and outages.
  The server counts these with plain integer additions (`siyi_sdk.server.stats`), installed
  or not; they are read through *observable* instruments, whose callbacks run when a reader
  collects. No OpenTelemetry call is made per packet.

Labels stay bounded: no ids, no session keys. A command is its own label when the server has
a route for it; a command without one is ``"_unknown"`` when it was answered 404 (a client can
send any name) and when more than `MAX_UNROUTED_METHODS` distinct unrouted names were seen (a
catch-all handler may answer any name).

One `Metrics` may serve several servers and clients: its observable instruments report the
sum over the servers it was installed on.

Why one module of about 490 lines: each instrument is declared once with its name, unit
and description after the semantic conventions, and read from `StatsSnapshot` right below;
split, a renamed figure would have to be changed in two places.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .calls import is_reserved
from .packets import Response, StatusCode
from .pipeline import Call, CallNext, ClientCall

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

__all__ = [
    "DURATION_BUCKETS",
    "MAX_UNROUTED_METHODS",
    "UNKNOWN_METHOD",
    "Metrics",
    "StatsSnapshot",
]

logger = logging.getLogger(__name__)

RPC_SYSTEM = "siyi"
"""The value of ``rpc.system.name``."""

UNKNOWN_METHOD = "_unknown"
"""The ``rpc.method`` of a command with no route that was answered 404, or past the bound."""

MAX_UNROUTED_METHODS = 100
"""Distinct command names without a route kept as labels (a catch-all handler's), at most."""

DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
"""Histogram bucket bounds in seconds: the semantic conventions' advice, from 0.5 ms (a
request served in process takes tens of microseconds, one over a LAN about a millisecond)."""

_SNAPSHOT_AGE = 1.0
"""Seconds a snapshot taken by the first callback of a collection serves the others."""


@dataclass(slots=True)
class StatsSnapshot:
    """The server's figures at one moment (see `ServerStats.snapshot`).

    Attributes:
        websockets: packet WebSockets open now.
        http_calls: HTTP calls being answered now (``POST /general``, polls of ``/events``).
        uploads_active: upload parts being received now (HTTP or WebSocket).
        sessions_attached: sessions with a WebSocket attached.
        sessions_away: full sessions with none (their packets wait in their buffer).
        sessions_provisional: sessions opened by a one-off HTTP call, not confirmed yet.
        packets: ``(transport, direction) -> packets`` since the server was made;
            transport ``"websocket"`` or ``"http"``, direction ``"receive"`` or
            ``"transmit"``.
        bytes: the same keys, bytes (a WebSocket text frame counts its characters).
        replayed: packets sent from a session's buffer to a peer that came back.
        events_sent: events delivered to the server's sessions (sent or buffered): one per
            `send_event`, one per session a broadcast reaches.
        dropped: packets dropped from a full session buffer (the oldest go first).
        busy: requests answered 429 at once because their connection had `max_in_flight`
            requests running.
        upload_bytes: bytes written to uploads.
        backplane_up: whether the shared backplane is reachable (None: none is shared).
        backplane_round_trip: the latest round trip to it, in seconds (None: not measured).
        backplane_outages: times it became unreachable.
    """

    websockets: int
    http_calls: int
    uploads_active: int
    sessions_attached: int
    sessions_away: int
    sessions_provisional: int
    packets: dict[tuple[str, str], int]
    bytes: dict[tuple[str, str], int]
    replayed: int
    events_sent: int
    dropped: int
    busy: int
    upload_bytes: int
    backplane_up: bool | None
    backplane_round_trip: float | None
    backplane_outages: int


class Metrics:
    """OpenTelemetry metrics of the servers and clients it is installed on.

    Args:
        meter_provider: where measurements go; None: the global meter provider (whatever
            ``opentelemetry.metrics.set_meter_provider`` set, even later).

    Example::

        from siyi_sdk.metrics import Metrics

        Metrics().install(server)  # or a client, an HttpAdapter, an AdapterManager, an Api

    Install it first (outermost) on a server: a middleware added before it answers calls
    `Metrics` never sees (a 429 of a rate limiter outside it is not counted).
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        # Imported here, not with the module: `import siyi_sdk` works without the extra.
        try:
            from opentelemetry import metrics
        except ImportError as exc:  # pragma: no cover - the extra is not installed
            raise ImportError(
                "siyi_sdk.metrics.Metrics needs OpenTelemetry: pip install 'siyi-sdk[otel]'"
            ) from exc
        self._observation = metrics.Observation
        meter = metrics.get_meter("siyi_sdk", __version__, meter_provider=meter_provider)
        self.meter = meter
        # The servers installed on (`ProtocolServer`s, held weakly: one that is gone is
        # reported no more).
        self._servers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._routes: list[Mapping[str, Any]] = []
        self._unrouted: set[str] = set()
        self._hits = 0
        self._busy = 0
        self._snapshots: list[StatsSnapshot] = []
        self._taken = -_SNAPSHOT_AGE
        self._server_duration = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Time to answer a request, from its arrival to its Response.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._client_duration = meter.create_histogram(
            "rpc.client.call.duration",
            unit="s",
            description="Time from sending a request to its Response.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._broadcast_duration = meter.create_histogram(
            "siyi.server.broadcast.duration",
            unit="s",
            description="Time to hand one broadcast event to every peer (fan-out).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._failovers = meter.create_counter(
            "siyi.client.failovers",
            unit="{failover}",
            description="Adapters that failed (or were down) before another carried a call.",
        )
        # The first callback registered refreshes the snapshot the others read (the SDK runs
        # them in registration order); see `_current`.
        meter.create_observable_up_down_counter(
            "siyi.server.connections",
            [self._connections],
            unit="{connection}",
            description="Connections open now: packet WebSockets, HTTP calls being "
            "answered, uploads under way.",
        )
        meter.create_observable_up_down_counter(
            "siyi.server.sessions",
            [self._sessions],
            unit="{session}",
            description="Live sessions by state: attached (a WebSocket), away (none), "
            "provisional (opened by a one-off HTTP call).",
        )
        meter.create_observable_counter(
            "siyi.server.packets",
            [self._packets],
            unit="{packet}",
            description="Packets received and transmitted, by transport.",
        )
        meter.create_observable_counter(
            "siyi.server.io",
            [self._bytes],
            unit="By",
            description="Bytes of packets received and transmitted, by transport.",
        )
        meter.create_observable_counter(
            "siyi.server.replayed",
            [self._replayed],
            unit="{packet}",
            description="Packets replayed from a session's buffer to a peer that came back.",
        )
        meter.create_observable_counter(
            "siyi.server.dropped",
            [self._dropped],
            unit="{packet}",
            description="Packets dropped from a full session buffer (the oldest first).",
        )
        meter.create_observable_counter(
            "siyi.server.response_cache.hits",
            [self._cache_hits],
            unit="{request}",
            description="Repeated request ids answered by the at-most-once record.",
        )
        meter.create_observable_counter(
            "siyi.server.busy",
            [self._busy_answers],
            unit="{response}",
            description="Requests answered 429 (too many in flight, or a rate limit).",
        )
        meter.create_observable_up_down_counter(
            "siyi.server.uploads.active",
            [self._uploads_active],
            unit="{upload}",
            description="Upload parts being received now.",
        )
        meter.create_observable_counter(
            "siyi.server.uploads.received",
            [self._upload_bytes],
            unit="By",
            description="Bytes of uploads received.",
        )
        meter.create_observable_gauge(
            "siyi.server.backplane.up",
            [self._backplane_up],
            description="1 while the shared backplane is reachable, else 0.",
        )
        meter.create_observable_gauge(
            "siyi.server.backplane.round_trip",
            [self._backplane_round_trip],
            unit="s",
            description="The latest round trip to the shared backplane.",
        )
        meter.create_observable_counter(
            "siyi.server.backplane.outages",
            [self._backplane_outages],
            unit="{outage}",
            description="Times the shared backplane became unreachable.",
        )

    def install(self, target: Any) -> None:
        """Add the right middleware to `target`: a server, or a client-side sender.

        A client (`ProtocolClient`), an adapter, an `AdapterManager` or an `Api` gets
        `client_middleware`; anything else with ``use`` (a `ProtocolServer`) gets
        `server_middleware`, and its counters are reported from now on. Install it once
        per chain: on a manager, not also on its adapters.
        """
        # Told apart by what they have, not by class, as `Tracing` does: this module sits
        # below the server and the adapters (a server installs it for its `metrics_path`).
        dispatcher = getattr(target, "dispatcher", None)
        if dispatcher is None:
            target.use(self.client_middleware)
            return
        target.use(self.server_middleware)
        self._routes.append(dispatcher.routes)
        self._servers.add(target)

    # Middleware ------------------------------------------------------------------------------

    async def server_middleware(self, call: Call, call_next: CallNext[Any]) -> Response | None:
        """The server's middleware (`ProtocolServer.use`): times what it handles and sends."""
        if call.is_request:
            incoming = call.direction == "in"
            histogram = self._server_duration if incoming else self._client_duration
            try:
                answer = await call_next(call)
            except BaseException as exc:
                self._record(histogram, call, None, exc, server=incoming)
                raise
            self._record(histogram, call, answer, None, server=incoming)
            return answer
        if call.direction == "out" and getattr(call, "connection", None) is None:  # a broadcast
            try:
                return await call_next(call)
            finally:
                self._broadcast_duration.record(time.monotonic() - call.arrived)
        return await call_next(call)

    async def client_middleware(
        self, call: ClientCall, call_next: CallNext[ClientCall]
    ) -> Response | None:
        """A client's middleware (`Adapter.use`): times what it sends and handles."""
        if not call.is_request:
            return await call_next(call)
        incoming = call.direction == "in"
        histogram = self._server_duration if incoming else self._client_duration
        try:
            answer = await call_next(call)
        except BaseException as exc:
            self._record(histogram, call, None, exc, server=False)
            raise
        finally:
            if call.failovers:
                self._failovers.add(len(call.failovers), {"rpc.method": call.name})
        self._record(histogram, call, answer, None, server=False)
        return answer

    def _record(
        self,
        histogram: Any,
        call: Call,
        answer: Response | None,
        exc: BaseException | None,
        *,
        server: bool,
    ) -> None:
        """Record one call's duration with its bounded attributes."""
        duration = time.monotonic() - call.arrived
        code = answer.code if answer is not None else None
        incoming = call.direction == "in"
        name = call.name
        attributes: dict[str, str | bool] = {
            "rpc.system.name": RPC_SYSTEM,
            # What this side sends is named by its own code: bounded. What arrives is not.
            "rpc.method": self._method(name, code) if incoming else name,
        }
        if code is not None:
            attributes["rpc.response.status_code"] = str(code)
            if code != StatusCode.OK:
                attributes["error.type"] = str(code)
        elif exc is not None:
            attributes["error.type"] = type(exc).__qualname__
        if call.transport is not None:
            attributes["siyi.transport"] = call.transport
        if server:
            cached: bool = getattr(call, "cached", False)
            attributes["siyi.cached"] = cached
            if cached:
                self._hits += 1
            if code == StatusCode.BUSY:
                self._busy += 1
        histogram.record(duration, attributes)

    def _method(self, name: str, code: int | None) -> str:
        """`name` as a label: itself when routed (or one of the first unrouted ones)."""
        if name in self._unrouted or is_reserved(name):
            return name
        for routes in self._routes:
            if name in routes:
                return name
        if code == StatusCode.UNKNOWN_COMMAND or len(self._unrouted) >= MAX_UNROUTED_METHODS:
            return UNKNOWN_METHOD
        self._unrouted.add(name)
        return name

    # Observable instruments ------------------------------------------------------------------

    def _current(self, refresh: bool = False) -> list[StatsSnapshot]:
        """A snapshot of each server installed on, taken at most once per collection.

        The first callback of a collection takes them and the others reuse them: a snapshot
        walks every session once.
        """
        now = time.monotonic()
        if refresh or now - self._taken > _SNAPSHOT_AGE:
            snapshots = []
            for server in list(self._servers):
                try:
                    snapshots.append(server.lifecycle.stats.snapshot(server))
                except RuntimeError:  # a set changed size: collected from another thread
                    logger.debug("a metrics snapshot of %r was skipped", server)
            self._snapshots = snapshots
            self._taken = now
        return self._snapshots

    def _each(self, values: Iterable[tuple[float, Mapping[str, str]]]) -> Iterator[Observation]:
        observation = self._observation
        for value, attributes in values:
            yield observation(value, attributes)

    def _summed(self, pick: Any, refresh: bool = False) -> float:
        return float(sum(pick(s) for s in self._current(refresh)))

    def _connections(self, options: CallbackOptions) -> Iterable[Observation]:
        snapshots = self._current(refresh=True)
        return self._each(
            (
                (sum(s.websockets for s in snapshots), {"siyi.transport": "websocket"}),
                (sum(s.http_calls for s in snapshots), {"siyi.transport": "http"}),
                (sum(s.uploads_active for s in snapshots), {"siyi.transport": "upload"}),
            )
        )

    def _sessions(self, options: CallbackOptions) -> Iterable[Observation]:
        snapshots = self._current()
        return self._each(
            (
                (sum(s.sessions_attached for s in snapshots), {"siyi.session.state": "attached"}),
                (sum(s.sessions_away for s in snapshots), {"siyi.session.state": "away"}),
                (
                    sum(s.sessions_provisional for s in snapshots),
                    {"siyi.session.state": "provisional"},
                ),
            )
        )

    def _by_transport(self, field: str) -> Iterable[Observation]:
        totals: dict[tuple[str, str], int] = {}
        for snapshot in self._current():
            for key, value in getattr(snapshot, field).items():
                totals[key] = totals.get(key, 0) + value
        return self._each(
            (value, {"siyi.transport": transport, "network.io.direction": direction})
            for (transport, direction), value in totals.items()
        )

    def _packets(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._by_transport("packets")

    def _bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._by_transport("bytes")

    def _replayed(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._each(((self._summed(lambda s: s.replayed), {}),))

    def _dropped(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._each(((self._summed(lambda s: s.dropped), {}),))

    def _cache_hits(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._each(((self._hits, {}),))

    def _busy_answers(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._each(((self._busy + self._summed(lambda s: s.busy), {}),))

    def _uploads_active(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._each(((self._summed(lambda s: s.uploads_active), {}),))

    def _upload_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._each(((self._summed(lambda s: s.upload_bytes), {}),))

    def _backplane_up(self, options: CallbackOptions) -> Iterable[Observation]:
        shared = [s for s in self._current() if s.backplane_up is not None]
        if not shared:
            return ()
        return self._each(((float(all(s.backplane_up for s in shared)), {}),))

    def _backplane_round_trip(self, options: CallbackOptions) -> Iterable[Observation]:
        trips = [s.backplane_round_trip for s in self._current()]
        measured = [t for t in trips if t is not None]
        if not measured:
            return ()
        return self._each(((max(measured), {}),))

    def _backplane_outages(self, options: CallbackOptions) -> Iterable[Observation]:
        shared = [s for s in self._current() if s.backplane_up is not None]
        if not shared:
            return ()
        return self._each(((sum(s.backplane_outages for s in shared), {}),))
