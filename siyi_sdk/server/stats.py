"""Plain counters a server keeps about its traffic, read by `siyi_sdk.metrics` when it collects.

What the server can count with an integer addition where the event happens (packets and bytes
over HTTP, packets replayed to a peer that came back or dropped from its buffer) is counted
here, always: an addition costs a few nanoseconds, much less than deciding whether to count.
What it already knows (open WebSockets, sessions by state, uploads under way) is not counted at
all: `ServerStats.snapshot` reads it from the server's parts. The WebSocket's own frames are
counted by each `Peer` (``Peer.received`` / ``Peer.sent``, one addition per frame); what a
closed peer counted is added here when it closes (`peer_closed`).

Nothing here imports OpenTelemetry: `Metrics` reads a snapshot through observable instruments
whose callbacks run when a reader collects, so no OpenTelemetry call is made per packet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..metrics import StatsSnapshot
from ..peer import FRAME_UNIT

if TYPE_CHECKING:
    from ..peer import Peer

__all__ = ["ServerStats", "split_frames"]


def split_frames(count: int) -> tuple[int, int]:
    """``(frames, bytes)`` of a `Peer` counter (frames times `FRAME_UNIT`, plus bytes)."""
    return divmod(count, FRAME_UNIT)


class ServerStats:
    """The counters of one server (``server.stats``); see the module docstring.

    Attributes:
        http_received: packets read from ``POST /general`` bodies.
        http_received_bytes: their bytes.
        http_sent: packets sent in HTTP answers (``/general`` Responses, ``/events`` polls).
        http_sent_bytes: their bytes.
        replayed: packets replayed from a session's buffer down a WebSocket that came back.
        events_sent: events delivered to this node's sessions (`Connection.deliver`: one per
            `send_event`, one per session a broadcast reaches here; buffered ones included).
        dropped: packets dropped from buffers, counted when a peer is told (its session
            event) or its session ends; `snapshot` adds what live sessions hold.
    """

    __slots__ = (
        "_closed_busy",
        "_closed_received",
        "_closed_sent",
        "dropped",
        "events_sent",
        "http_received",
        "http_received_bytes",
        "http_sent",
        "http_sent_bytes",
        "replayed",
    )

    def __init__(self) -> None:
        self.http_received = 0
        self.http_received_bytes = 0
        self.http_sent = 0
        self.http_sent_bytes = 0
        self.replayed = 0
        self.dropped = 0
        self.events_sent = 0
        # What WebSockets that have closed counted (`Peer.received` / `Peer.sent` / `busy`).
        self._closed_received = 0
        self._closed_sent = 0
        self._closed_busy = 0

    def peer_closed(self, peer: Peer) -> None:
        """Keep what `peer` counted: call it where the peer leaves `Lifecycle.peers`."""
        self._closed_received += peer.received
        self._closed_sent += peer.sent
        self._closed_busy += peer.busy

    def snapshot(self, server: Any) -> StatsSnapshot:
        """The figures of `server` now: these counters plus what the server's parts hold.

        `server` is the `ProtocolServer` whose ``lifecycle.stats`` this is (typed loosely:
        this module sits below the server's other parts, which all add to it).

        One pass over the open WebSockets and one over the sessions (a few milliseconds for
        ten thousand); safe to call from another thread (the values may then be off by
        what changes meanwhile).
        """
        lifecycle, uploads, backplane = server.lifecycle, server.uploads, server.backplane
        received, sent, busy = self._closed_received, self._closed_sent, self._closed_busy
        peers = list(lifecycle.peers)
        for peer in peers:
            received += peer.received
            sent += peer.sent
            busy += peer.busy
        ws_in, ws_in_bytes = split_frames(received)
        ws_out, ws_out_bytes = split_frames(sent)
        attached = away = provisional = polls = 0
        dropped = self.dropped
        for session in server.sessions:
            dropped += session.dropped
            polls += session.polls
            if session.provisional:
                provisional += 1
            elif session.is_connected:
                attached += 1
            else:
                away += 1
        up = getattr(backplane, "connected", None) if backplane.shared else None
        return StatsSnapshot(
            websockets=len(peers),
            http_calls=len(lifecycle.http_calls) + polls,
            uploads_active=uploads.active,
            sessions_attached=attached,
            sessions_away=away,
            sessions_provisional=provisional,
            packets={
                ("websocket", "receive"): ws_in,
                ("websocket", "transmit"): ws_out,
                ("http", "receive"): self.http_received,
                ("http", "transmit"): self.http_sent,
            },
            bytes={
                ("websocket", "receive"): ws_in_bytes,
                ("websocket", "transmit"): ws_out_bytes,
                ("http", "receive"): self.http_received_bytes,
                ("http", "transmit"): self.http_sent_bytes,
            },
            replayed=self.replayed,
            events_sent=self.events_sent,
            dropped=dropped,
            busy=busy,
            upload_bytes=uploads.bytes_received,
            backplane_up=None if up is None else bool(up),
            backplane_round_trip=backplane.round_trip,
            backplane_outages=backplane.outages,
        )
