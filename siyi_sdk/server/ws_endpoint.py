"""The packet WebSocket of a server (PROTOCOL.md §1, §5, §7): upgrade, greet, serve, detach."""

from __future__ import annotations

import asyncio
import functools
import logging

from aiohttp import web

from ..errors import ConnectionClosedError, NotConnectedError
from ..frames import Tapped
from ..logs import call_extra
from ..outcome import call_event_handler
from ..packets import PROTOCOL_VERSION, SESSION_EVENT, SUBPROTOCOL, TAKEN_OVER, Event, StatusCode
from ..peer import Peer
from .answers import refusal
from .auth import Gate
from .backplane import Backplane
from .connection import Connection
from .dispatch import Dispatcher
from .lifecycle import Lifecycle, ServerSettings

__all__ = ["TappedResponse", "WebSocketEndpoint"]

logger = logging.getLogger(__name__)

GOODBYE_WAIT = 1.0
"""Seconds a goodbye's answer waits for the session's end in a shared backplane, and for the
client to take the answer."""


class TappedResponse(Tapped, web.WebSocketResponse):
    """aiohttp's server WebSocket with a `frames.FrameTap` before its reader."""

    tap_masked = True


class WebSocketEndpoint:
    """Serves the packet WebSocket: one `Peer` per connection, attached to its session."""

    def __init__(
        self,
        settings: ServerSettings,
        gate: Gate,
        dispatcher: Dispatcher,
        backplane: Backplane,
        lifecycle: Lifecycle,
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.dispatcher = dispatcher
        self.backplane = backplane
        self.lifecycle = lifecycle
        self.general_path = settings.general_path
        """Where plain HTTP callers are sent (the mounted path of ``/general``)."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler of the WebSocket path."""
        settings = self.settings
        ws = TappedResponse(
            # aiohttp refuses a frame of exactly max_msg_size: the limit itself is allowed.
            max_msg_size=settings.max_message_size + 1,
            # The Peer pings and answers pings itself (`liveness`): aiohttp's heartbeat costs
            # a callback per read.
            autoping=False,
            # A client's close is answered by `_serve`, once a goodbye (1000) has ended the
            # session everywhere: a client that comes straight back then finds it over.
            autoclose=False,
            protocols=(SUBPROTOCOL,),
        )
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {"error": f"this endpoint speaks WebSocket; POST packets to {self.general_path}"},
                status=426,
                headers={"Upgrade": "websocket"},
            )
        if self.lifecycle.stopping:
            return refusal(503, StatusCode.UNAVAILABLE, "the server is shutting down")
        caller = await self.gate.caller(request)
        if isinstance(caller, web.Response):
            return caller
        opened = await self.gate.session_of(request, caller)
        if isinstance(opened, web.Response):
            return opened
        session, resumed = opened
        await ws.prepare(request)
        await self._serve(
            session,
            resumed,
            Peer(
                ws,
                on_request=functools.partial(
                    self.dispatcher.answer, session, transport="websocket"
                ),
                on_control=session.runs.control,
                on_event=lambda event: self.dispatcher.deliver(session, event, "websocket"),
                max_in_flight=settings.max_in_flight,
                max_pending_events=settings.max_pending_events,
                max_outbox_bytes=settings.max_outbox_bytes,
                label=f"connection #{session.id}",
                on_response=lambda response: (
                    session.resolve(response) or self.backplane.forward_response(session, response)
                ),
                transport=request.transport,
                max_message_size=settings.max_message_size,
                session=session,
                heartbeat=settings.heartbeat_interval,
            ),
        )
        return ws

    async def _serve(self, session: Connection, resumed: bool, peer: Peer) -> None:
        lifecycle = self.lifecycle
        lifecycle.peers.add(peer)
        previous = session.attach(peer)
        if previous is not None:
            logger.info(
                "%r: a new WebSocket takes the session over",
                session,
                extra=call_extra(session=session, transport="websocket"),
            )
            lifecycle.spawn(previous.close(TAKEN_OVER, "session taken over by another connection"))
        session.receives = True
        try:
            # The session event goes out before the reader answers anything (§7: it is the
            # first frame), even to frames that came with the upgrade request.
            if await self._greet(session, peer, resumed):
                lifecycle.spawn(self._welcome(session, peer))
            await peer.run()
        finally:
            lifecycle.peers.discard(peer)
            lifecycle.stats.peer_closed(peer)  # in the same step: no frame counted twice
            attached = session.detach(peer)
            # The client said goodbye (1000): its session is over; a drop leaves it resumable.
            # Ended before the close is answered (and a shared backplane's end awaited), so a
            # client that comes straight back with the key, on any node, finds no session.
            goodbye = peer.remote_close_code == 1000 and (attached or session.peer is None)
            if goodbye:
                self.gate.sessions.end(session)
                ending = session.ending  # its end in a shared backplane, under way
                if ending is not None:
                    await asyncio.wait({ending}, timeout=GOODBYE_WAIT)
            elif attached:
                self.gate.sessions.touch(session)
                if self.backplane.shared:
                    await self.backplane.release(session)
            # The answer to the client's close (autoclose is off; a no-op if the socket is
            # closed already), cut if the client does not take it.
            await peer.close(1000, timeout=GOODBYE_WAIT)
            if logger.isEnabledFor(logging.DEBUG):  # else its key is not even hashed
                logger.debug(
                    "%r disconnected (code %s)",
                    session,
                    peer.close_code,
                    extra=call_extra(session=session, transport="websocket"),
                )
            if attached:
                for handler in self.dispatcher.disconnect_handlers:
                    await call_event_handler(handler, (session,), "disconnect", session)

    async def _greet(self, session: Connection, peer: Peer, resumed: bool) -> bool:
        """Send the session event; False when the connection is gone already."""
        dropped = await self.backplane.claim(session)
        stats = self.lifecycle.stats
        stats.dropped += dropped
        greeting = Event(
            name=SESSION_EVENT,
            data={
                "session": session.session,
                "protocol": PROTOCOL_VERSION,
                "heartbeat_interval": self.settings.heartbeat_interval,
                "resumed": resumed,
                "dropped": dropped,
            },
        )
        try:
            await peer.send(greeting)
        except (NotConnectedError, ConnectionClosedError):
            return False
        return True

    async def _welcome(self, session: Connection, peer: Peer) -> None:
        # After the session event: what waited in the buffer, then the connect handlers.
        stats = self.lifecycle.stats
        waiting = session.buffered
        replayed = await session.replay(peer)
        stats.replayed += max(0, waiting - session.buffered)
        if not replayed:
            return  # dropped while replaying: the rest stays buffered
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%r connected", session, extra=call_extra(session=session, transport="websocket")
            )
        for handler in self.dispatcher.connect_handlers:
            # Beside the reader, not before it: a connect handler may await a request to the
            # client, whose Response only the reader can deliver.
            self.lifecycle.spawn(call_event_handler(handler, (session,), "connect", session))
