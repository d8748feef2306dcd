"""Taking one part of an upload: the owner check, the lock, the bytes, the checks, the file.

`Receiver.receive` is what both channels (HTTP and WebSocket) call once they have read a
part's declaration; it answers the part, stores a completed file and runs the `on_upload`
handlers.

Its log lines carry the upload's id, the session's tag and the transport as ``extra``
(`logs.call_extra`): never the session key, never a byte of the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Literal

from ...logs import call_extra
from ...outcome import call_event_handler
from ...packets import Request, Response, StatusCode
from ...wire import RESUME_FROM
from ..connection import Connection, ServerCall
from ..dispatch import Dispatcher
from ..lifecycle import Lifecycle
from .channels import Channel
from .options import UploadOptions
from .parts import Answer, Interrupted, Refusal, Spec, fail, unknown
from .records import Done, Owner, Partial, StoredFile, UploadHandler, wire
from .sink import Sink
from .store import UploadStore

__all__ = ["Receiver"]

logger = logging.getLogger(__name__)


class Receiver:
    """Receives the parts of uploads into an `UploadStore`.

    Args:
        options: the service's settings (read at each use).
        store: where the uploads are kept.
        dispatcher: the server's dispatcher (its middleware chain sees each completion).
        lifecycle: the server's lifecycle (it runs the handlers, and says when it stops).

    Attributes:
        handlers: what runs after each successful upload (`Uploads.on_upload`).
        transports: the connections of the parts running now (cut when the server stops).
    """

    def __init__(
        self,
        options: UploadOptions,
        store: UploadStore,
        dispatcher: Dispatcher,
        lifecycle: Lifecycle,
    ) -> None:
        self._options = options
        self._store = store
        self._dispatcher = dispatcher
        self._lifecycle = lifecycle
        self.handlers: list[UploadHandler] = []
        self.transports: set[asyncio.Transport] = set()

    async def receive(
        self,
        spec: Spec,
        session: Connection,
        channel: Channel,
        transport: asyncio.Transport | None,
    ) -> Answer | None:
        """Take one part of an upload; its answer, or None when it was cut off."""
        upload_id = spec.upload_id
        if spec.size > self._options.max_size:
            return fail(
                upload_id,
                413,
                f"too large: {spec.size} bytes, the limit is {self._options.max_size}",
            )
        caller = session.principal
        # Another principal's upload is refused before its lock is waited for: a wait, or a
        # 429 while the owner's part runs, would tell that the id is in use.
        if spec.resumable and not self._store.may_know(upload_id, caller):
            return unknown(upload_id)
        lock = self._store.lock(upload_id)
        try:
            async with asyncio.timeout(self._options.busy_wait):
                await lock.acquire()
        except TimeoutError:
            if not self._store.may_know(upload_id, caller):  # its owner's part began meanwhile
                return unknown(upload_id)
            return fail(
                upload_id,
                429,
                f"busy: another part of upload {upload_id!r} is still running",
            )
        if self._lifecycle.stopping:  # it waited for the lock while the server began to stop
            lock.release()
            return fail(upload_id, 503, "unavailable: shutting down", StatusCode.UNAVAILABLE)
        if transport is not None:
            self.transports.add(transport)
        try:
            return await self._receive_locked(spec, session, channel)
        except Refusal as exc:
            partial = self._store.partials.get(upload_id)
            # Without an id nobody can resume it: a refused part leaves nothing either. Only
            # the owner's part may cost an upload its bytes (refusals come after the owner
            # check; this holds whatever is added above).
            if (
                partial is not None
                and partial.owner.admits(caller)
                and (exc.discard or not spec.resumable)
            ):
                await self._store.discard(partial)
            return fail(upload_id, exc.status, str(exc), exc.code, exc.received)
        except OSError:
            logger.exception(
                "upload %s could not be stored",
                upload_id,
                extra=call_extra(session=session, transport=channel.transport, upload_id=upload_id),
            )
            return fail(
                upload_id,
                500,
                "internal error: the server could not store the upload",
                StatusCode.INTERNAL_ERROR,
            )
        finally:
            if transport is not None:
                self.transports.discard(transport)
            lock.release()

    async def _receive_locked(
        self, spec: Spec, session: Connection, channel: Channel
    ) -> Answer | None:
        caller = session.principal
        done = self._store.completed.get(spec.upload_id) if spec.resumable else None
        if done is not None:
            if not done.owner.admits(caller):
                return unknown(spec.upload_id)
            stored = done.stored
            if stored.size != spec.size:
                raise Refusal(400, f"bad request: upload {spec.upload_id!r} was another file")
            return Answer(Response.success(spec.upload_id, wire(stored)), 200)  # answer lost
        partial = await self._store.find(spec.upload_id) if spec.resumable else None
        if partial is not None and not partial.owner.admits(caller):
            # Before anything about it (size, where it stands) is compared or told.
            return unknown(spec.upload_id)
        if partial is None:
            if spec.start != 0:
                raise Refusal(
                    400,
                    f"{RESUME_FROM} 0: the server has nothing of upload {spec.upload_id!r}",
                    received=0,
                )
            partial = Partial(
                upload_id=spec.upload_id,
                name=spec.name,
                size=spec.size,
                directory=self._store.directory_of(spec.upload_id),
                resumable=spec.resumable,
                owner=Owner.of(caller),
            )
            # Known before its state is on disk: from now on another principal is refused
            # at once (`UploadStore.may_know`), not after waiting for this part's lock.
            self._store.partials[spec.upload_id] = partial
            try:
                await self._store.run(self._store.create, partial)
            except BaseException:
                if self._store.partials.get(spec.upload_id) is partial:
                    del self._store.partials[spec.upload_id]
                raise
        elif partial.size != spec.size:
            raise Refusal(
                400,
                f"bad request: upload {spec.upload_id!r} is {partial.size} bytes, not {spec.size}",
            )
        elif spec.start != partial.received:
            raise Refusal(
                400,
                f"{RESUME_FROM} {partial.received}: the server has {partial.received} bytes "
                f"of upload {spec.upload_id!r}, not {spec.start}",
                received=partial.received,
            )
        partial.declared.update(spec.digests)
        assert self._store.executor is not None
        sink = Sink(partial, self._store.executor, self._options.batch_size)
        interrupted: Interrupted | None = None
        chunks = channel.chunks(spec)
        try:
            await sink.open()
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if sink.accepted + len(chunk) > partial.size:
                        raise Refusal(
                            400,
                            "bad request: size mismatch: more than the declared "
                            f"{partial.size} bytes; nothing was kept",
                            discard=True,
                        )
                    await sink.write(chunk)
        except Interrupted as exc:
            interrupted = exc
        finally:
            # Whatever happened, what arrived goes to disk: a resume starts after it.
            await asyncio.shield(sink.close())
            self._options.bytes_received += sink.written
        if interrupted is not None:
            return await self._interrupted(partial, interrupted, session, channel.transport)
        if partial.received < partial.size:
            # A part that ends before the last byte (a client sending in several parts).
            return Answer(Response.success(spec.upload_id, partial.status()), 202)
        try:
            partial.declared.update(await channel.final_digests(spec, partial))
        except Interrupted as exc:
            return await self._interrupted(partial, exc, session, channel.transport)
        return await self._complete(partial, session, channel.transport)

    async def _interrupted(
        self,
        partial: Partial,
        exc: Interrupted,
        session: Connection,
        transport: Literal["websocket", "http"],
    ) -> Answer | None:
        tags = call_extra(session=session, transport=transport, upload_id=partial.upload_id)
        if not partial.resumable:
            await self._store.discard(partial)  # nobody can name it again: keep nothing
            logger.info(
                "upload %s interrupted (%s); it had no id, nothing kept",
                partial.upload_id,
                exc,
                extra=tags,
            )
        else:
            logger.info(
                "upload %s interrupted at %d of %d bytes (%s); kept for resuming",
                partial.upload_id,
                partial.received,
                partial.size,
                exc,
                extra=tags,
            )
        if exc.stalled:
            return fail(
                partial.upload_id,
                408,
                f"timeout: {exc}; {RESUME_FROM} {partial.received} to go on",
                StatusCode.TIMEOUT,
                partial.received,
            )
        return None

    async def _complete(
        self, partial: Partial, session: Connection, transport: Literal["websocket", "http"]
    ) -> Answer:
        assert partial.md5 is not None
        assert partial.sha256 is not None
        actual = {"md5": partial.md5.hexdigest(), "sha256": partial.sha256.hexdigest()}
        for algorithm, expected in sorted(partial.declared.items()):
            if actual[algorithm] != expected:
                await self._store.discard(partial)
                logger.warning(
                    "upload %s failed its %s check; discarded",
                    partial.upload_id,
                    algorithm,
                    extra=call_extra(
                        session=session, transport=transport, upload_id=partial.upload_id
                    ),
                )
                return fail(
                    partial.upload_id,
                    400,
                    f"bad request: {algorithm} mismatch: the bytes received hash to "
                    f"{actual[algorithm]}, not {expected}; nothing was kept",
                )
        if not self._dispatcher.chain:
            return await self._store_complete(partial, session, actual, transport)
        # The completion passes the server's middleware chain like any call (a Request named
        # "siyi.upload"): a middleware sees it, and may refuse it (the bytes are then dropped).
        upload = Request.make(
            "siyi.upload",
            {"upload_id": partial.upload_id, "name": partial.name, "size": partial.size, **actual},
        )
        stored: list[Answer] = []

        async def store(call: ServerCall) -> Response:
            stored.append(await self._store_complete(partial, session, actual, transport))
            return stored[0].response

        answer = await self._dispatcher.chain.run(
            ServerCall(upload, "in", session, transport), store
        )
        if stored and answer is stored[0].response:
            return stored[0]
        if not stored:
            await self._store.discard(partial)
        if not isinstance(answer, Response) or answer.ok:
            return Answer(Response.success(partial.upload_id, answer and answer.data), 200)
        status = answer.code if 400 <= answer.code < 600 else 400
        return fail(partial.upload_id, status, answer.error or "refused", answer.code)

    async def _store_complete(
        self,
        partial: Partial,
        session: Connection,
        actual: dict[str, str],
        transport: Literal["websocket", "http"],
    ) -> Answer:
        file_id = uuid.uuid4().hex
        path = await self._store.run(self._store.store_file, partial, file_id)
        self._store.partials.pop(partial.upload_id, None)
        stored = StoredFile(
            file_id=file_id,
            name=partial.name,
            size=partial.size,
            md5=actual["md5"],
            sha256=actual["sha256"],
            path=path,
        )
        if partial.resumable:
            self._store.completed[partial.upload_id] = Done(stored, time.monotonic(), partial.owner)
        upload_id = partial.upload_id
        if logger.isEnabledFor(logging.INFO):
            # Tested first: the tags hash the session's key, which an upload that logs
            # nothing should not pay for.
            logger.info(
                "upload %s stored as %s (%d bytes)",
                upload_id,
                path,
                stored.size,
                extra=call_extra(session=session, transport=transport, upload_id=upload_id),
            )
        for handler in self.handlers:
            run = call_event_handler(
                handler, (session, stored), "upload", session, None, transport, upload_id
            )
            self._lifecycle.spawn(run)
        return Answer(Response.success(partial.upload_id, wire(stored)), 200)
