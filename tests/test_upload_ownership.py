"""An upload belongs to the principal that started it (PROTOCOL.md §8), over real sockets.

Two principals on one server: an ``authenticate`` callback maps ``Bearer alice-token`` to
``"alice"`` and ``Bearer bob-token`` to ``"bob"``. Alice starts uploads over both channels
(``POST /upload`` and the ``/upload`` WebSocket); bob asks about them, resumes them, repeats
their ids. Every one of bob's attempts must get the very answer an unknown id gets (404, the
same bytes), and leave alice's bytes as they were; alice must still finish, from another
session or another OS process, and on a node of a Redis-backed cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from siyi_sdk import (
    Connection,
    FileInfo,
    HttpAdapter,
    ProtocolClient,
    ProtocolServer,
    RedisBackplane,
    Response,
    StoredFile,
    UnknownCommandError,
    parse_message,
)
from siyi_sdk.packets import SESSION_HEADER
from siyi_sdk.wire import FILE_MD5_HEADER, FILE_NAME_HEADER, UPLOAD_ID_HEADER

from .conftest import WAIT, ServerFactory, wait_for, wait_until
from .redis_server import RedisServer

MiB = 1024 * 1024
Channel = Literal["websocket", "http"]
CHANNELS: tuple[Channel, ...] = ("websocket", "http")
REPO = Path(__file__).resolve().parent.parent

DATA = os.urandom(2 * MiB + 5)
"""Alice's file: over one batch, so a part of it is on disk in several writes."""
FIRST = MiB + 3
"""Where alice's first part stops."""


# Two principals --------------------------------------------------------------------------------

PRINCIPALS = {"Bearer alice-token": "alice", "Bearer bob-token": "bob"}


def authenticate(headers: Mapping[str, str]) -> str | None:
    """alice-token is alice, bob-token is bob, anything else is refused."""
    return PRINCIPALS.get(headers.get("Authorization", ""))


def auth(who: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}-token"} if who is not None else {}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class Stored:
    """What `on_upload` saw: who completed each upload (its session's principal) and what."""

    def __init__(self, server: ProtocolServer) -> None:
        self.files: list[tuple[Any, StoredFile]] = []
        self._changed = asyncio.Event()
        server.on_upload(self._record)

    def _record(self, connection: Connection, stored: StoredFile) -> None:
        self.files.append((connection.principal, stored))
        self._changed.set()

    async def wait_count(self, count: int) -> None:
        async def reached() -> None:
            while len(self.files) < count:
                self._changed.clear()
                await self._changed.wait()

        await wait_for(reached())


# Raw peers: the bytes on the wire, so answers can be compared byte for byte ----------------------


def http_url(server: ProtocolServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@dataclass
class Answer:
    """The HTTP status of a call (101 for a WebSocket), its body or answer frame, its headers."""

    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def packet(self) -> Response:
        packet = parse_message(self.body)
        assert isinstance(packet, Response), self.body
        return packet


async def get_status(
    server: ProtocolServer, who: str | None, upload_id: str, session: str | None = None
) -> Answer:
    """``GET /upload/{id}`` as `who`."""
    headers = {**auth(who), **({SESSION_HEADER: session} if session else {})}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{http_url(server)}/upload/{upload_id}", headers=headers) as reply,
    ):
        return Answer(reply.status, await reply.read(), dict(reply.headers))


async def send_part(
    server: ProtocolServer,
    channel: Channel,
    who: str | None,
    upload_id: str,
    data: bytes,
    start: int,
    end: int,
    *,
    session: str | None = None,
) -> Answer | None:
    """Send bytes ``start..end`` of `data` as upload `upload_id`, as `who`, over `channel`.

    A part that ends before the last byte is an HTTP part with a Content-Range (answered 202),
    or a WebSocket closed after its frames (no answer: None). A refusal that comes early over
    the WebSocket is read whatever was still to send.
    """
    headers = {**auth(who), **({SESSION_HEADER: session} if session else {})}
    if channel == "http":
        headers |= {
            UPLOAD_ID_HEADER: upload_id,
            FILE_NAME_HEADER: quote("f.bin"),
            FILE_MD5_HEADER: md5(data),
            "Content-Type": "application/octet-stream",
            "Content-Range": f"bytes {start}-{end - 1}/{len(data)}",
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{http_url(server)}/upload", data=data[start:end], headers=headers) as reply,
        ):
            return Answer(reply.status, await reply.read(), dict(reply.headers))
    header = {
        "upload_id": upload_id,
        "name": "f.bin",
        "size": len(data),
        "offset": start,
        "md5": md5(data),
    }
    url = f"ws://127.0.0.1:{server.port}/upload"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        answer = asyncio.ensure_future(ws.receive())
        await ws.send_str(orjson.dumps(header).decode())
        for at in range(start, end, 256 * 1024):
            if answer.done():
                break  # refused: what is left is not read anyway
            await ws.send_bytes(data[at : min(end, at + 256 * 1024)])
        if end < len(data):
            # The rest is for later: close, and the server keeps what came (as after a cut).
            # Frames are taken in order, so the part holds its lock by the time this returns.
            await ws.close()
            message = await wait_for(answer)
            if message.type == aiohttp.WSMsgType.TEXT:
                return Answer(101, message.data.encode(), {})
            return None
        message = await wait_for(answer)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        return Answer(101, message.data.encode(), {})


async def unknown_id_answer(server: ProtocolServer, who: str, upload_id: str) -> Answer:
    """What `who` gets for an id nobody uses, rewritten for `upload_id` (the same length)."""
    unknown = str(uuid.uuid4())
    assert len(unknown) == len(upload_id)
    answer = await get_status(server, who, unknown)
    assert answer.status == 404
    answer.body = answer.body.replace(unknown.encode(), upload_id.encode())
    return answer


def assert_same_refusal(got: Answer, unknown: Answer) -> None:
    """`got` is the unknown-id answer: its status (over HTTP), its bytes, its header names."""
    if got.status != 101:
        assert got.status == unknown.status == 404
        varying = {"Date", SESSION_HEADER}  # the session is the caller's own, the time now
        assert {k for k in got.headers if k not in varying} == {
            k for k in unknown.headers if k not in varying
        }
        assert got.headers["Content-Type"] == unknown.headers["Content-Type"]
    assert got.body == unknown.body
    assert (got.packet.code, got.packet.ok) == (404, False)


def partial_data(server: ProtocolServer) -> list[bytes]:
    """The bytes of every partial upload on the server's disk."""
    directory = server.uploads.partial_directory
    assert directory is not None
    return [path.read_bytes() for path in sorted(directory.glob("*/data"))]


async def alice_starts(server: ProtocolServer, channel: Channel, upload_id: str) -> str:
    """Alice sends the first `FIRST` bytes; returns her session key."""
    answer = await send_part(server, channel, "alice", upload_id, DATA, 0, FIRST)
    if answer is not None:  # HTTP: the part is answered 202 with where it stands
        assert answer.status == 202, answer.body
        assert answer.packet.data == {"upload_id": upload_id, "received": FIRST, "size": len(DATA)}
    status = await get_status(server, "alice", upload_id)
    assert status.status == 200, status.body
    assert orjson.loads(status.body) == {
        "upload_id": upload_id,
        "received": FIRST,
        "size": len(DATA),
    }
    assert partial_data(server) == [DATA[:FIRST]]
    return status.headers[SESSION_HEADER]


async def alice_finishes(server: ProtocolServer, channel: Channel, upload_id: str) -> FileInfo:
    answer = await send_part(server, channel, "alice", upload_id, DATA, FIRST, len(DATA))
    assert answer is not None
    assert answer.packet.ok, answer.body
    info = FileInfo.model_validate(answer.packet.data)
    assert (info.size, info.md5) == (len(DATA), md5(DATA))
    return info


def assert_stored_once_as_alices(server: ProtocolServer, stored: Stored, info: FileInfo) -> None:
    assert [(who, file.file_id) for who, file in stored.files] == [("alice", info.file_id)]
    path = stored.files[0][1].path
    assert path.read_bytes() == DATA
    directory = server.upload_dir
    assert directory is not None
    kept = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    assert kept == [path], "one file, no partial upload left"


@pytest.fixture
async def keyed(make_server: ServerFactory) -> ProtocolServer:
    """A server that knows alice and bob."""
    return await make_server(authenticate=authenticate)


# Status ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
async def test_another_principal_sees_a_partial_upload_as_an_unknown_id(
    channel: Channel, keyed: ProtocolServer
) -> None:
    upload_id = str(uuid.uuid4())
    await alice_starts(keyed, channel, upload_id)
    got = await get_status(keyed, "bob", upload_id)
    assert_same_refusal(got, await unknown_id_answer(keyed, "bob", upload_id))
    assert got.packet.error == f"unknown upload {upload_id!r}"
    assert b"received" not in got.body
    assert str(len(DATA)).encode() not in got.body
    # Nobody at all gets further than the key check.
    assert (await get_status(keyed, None, upload_id)).status == 401


@pytest.mark.parametrize("channel", CHANNELS)
async def test_another_principal_sees_a_completed_upload_as_an_unknown_id(
    channel: Channel, keyed: ProtocolServer
) -> None:
    stored = Stored(keyed)
    upload_id = str(uuid.uuid4())
    await alice_starts(keyed, channel, upload_id)
    info = await alice_finishes(keyed, channel, upload_id)
    mine = await get_status(keyed, "alice", upload_id)
    assert orjson.loads(mine.body)["file"] == info.model_dump()

    got = await get_status(keyed, "bob", upload_id)
    unknown = await unknown_id_answer(keyed, "bob", upload_id)
    assert_same_refusal(got, unknown)
    for secret in (info.file_id, info.md5, info.sha256):
        assert secret.encode() not in got.body
    # A repeat of the id (a client whose answer was lost would send one) gets no file either.
    for whole in (DATA, b"other bytes"):
        repeat = await send_part(keyed, channel, "bob", upload_id, whole, 0, len(whole))
        assert repeat is not None
        assert_same_refusal(repeat, unknown)
    await stored.wait_count(1)
    assert_stored_once_as_alices(keyed, stored, info)


# Resuming and repeating another's id --------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
async def test_another_principal_cannot_resume_a_partial_upload(
    channel: Channel, keyed: ProtocolServer
) -> None:
    stored = Stored(keyed)
    upload_id = str(uuid.uuid4())
    await alice_starts(keyed, channel, upload_id)
    unknown = await unknown_id_answer(keyed, "bob", upload_id)
    # Bob sends the rest from where alice stands, and from where he might guess.
    for start in (FIRST, FIRST - 1, 1):
        got = await send_part(keyed, channel, "bob", upload_id, DATA, start, len(DATA))
        assert got is not None
        assert_same_refusal(got, unknown)
    assert keyed.uploads.bytes_received == FIRST
    assert partial_data(keyed) == [DATA[:FIRST]]
    mine = await get_status(keyed, "alice", upload_id)
    assert orjson.loads(mine.body)["received"] == FIRST

    info = await alice_finishes(keyed, channel, upload_id)
    await stored.wait_count(1)
    assert_stored_once_as_alices(keyed, stored, info)
    assert keyed.uploads.bytes_received == len(DATA)


@pytest.mark.parametrize("channel", CHANNELS)
async def test_another_principal_cannot_start_over_with_the_id_of_a_partial_upload(
    channel: Channel, keyed: ProtocolServer
) -> None:
    stored = Stored(keyed)
    upload_id = str(uuid.uuid4())
    await alice_starts(keyed, channel, upload_id)
    unknown = await unknown_id_answer(keyed, "bob", upload_id)
    # Another file (another size: not refused for its size), then alice's own bytes.
    for whole in (os.urandom(MiB), DATA):
        got = await send_part(keyed, channel, "bob", upload_id, whole, 0, len(whole))
        assert got is not None
        assert_same_refusal(got, unknown)
    # The SDK's own client says the same: the server has no such upload for bob.
    client = bob_uploader(channel, keyed)
    async with client:
        with pytest.raises(UnknownCommandError, match="unknown upload"):
            await wait_for(client.upload(DATA, name="f.bin", upload_id=upload_id))
    assert keyed.uploads.bytes_received == FIRST
    assert partial_data(keyed) == [DATA[:FIRST]]

    info = await alice_finishes(keyed, channel, upload_id)
    await stored.wait_count(1)
    assert_stored_once_as_alices(keyed, stored, info)


def bob_uploader(channel: Channel, server: ProtocolServer) -> ProtocolClient | HttpAdapter:
    if channel == "websocket":
        return ProtocolClient(f"ws://127.0.0.1:{server.port}", token="bob-token")
    return HttpAdapter(http_url(server), token="bob-token")


@pytest.mark.parametrize("channel", CHANNELS)
async def test_while_the_owner_sends_another_principal_is_refused_at_once(
    channel: Channel, keyed: ProtocolServer
) -> None:
    # A wait for the running part's lock (busy_wait), or its 429, would tell the id is in use.
    keyed.uploads.busy_wait = 60.0
    stored = Stored(keyed)
    upload_id = str(uuid.uuid4())
    unknown = await unknown_id_answer(keyed, "bob", upload_id)

    async def during_alices_part(bob_tries: Callable[[], Awaitable[None]]) -> FileInfo:
        url = f"{http_url(keyed)}/upload"
        if channel == "http":
            go_on = asyncio.Event()

            async def body() -> AsyncIterator[bytes]:
                yield DATA[:FIRST]
                await go_on.wait()
                yield DATA[FIRST:]

            headers = {
                **auth("alice"),
                UPLOAD_ID_HEADER: upload_id,
                FILE_MD5_HEADER: md5(DATA),
                "Content-Length": str(len(DATA)),
            }
            async with aiohttp.ClientSession() as http:
                posting = asyncio.ensure_future(http.post(url, data=body(), headers=headers))
                await wait_for(running())
                try:
                    await bob_tries()
                finally:
                    go_on.set()
                async with await wait_for(posting) as reply:
                    packet = parse_message(await reply.read())
        else:
            header = {"upload_id": upload_id, "name": "f.bin", "size": len(DATA)}
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(url, headers=auth("alice"))
                async with ws:
                    await ws.send_str(orjson.dumps(header).decode())
                    await ws.send_bytes(DATA[:FIRST])
                    await wait_for(running())
                    await bob_tries()
                    await ws.send_bytes(DATA[FIRST:])
                    await ws.send_str(orjson.dumps({"md5": md5(DATA)}).decode())
                    message = await wait_for(ws.receive())
                    packet = parse_message(message.data)
        assert isinstance(packet, Response)
        assert packet.ok, packet
        return FileInfo.model_validate(packet.data)

    async def running() -> None:
        # Alice's part holds its lock and is known to the server once its state is on disk
        # (her own GET would now wait for the part to end).
        directory = keyed.uploads.partial_directory
        assert directory is not None
        await wait_until(lambda: any(directory.glob("*/state.json")))

    async def bob_tries() -> None:
        async with asyncio.timeout(WAIT):
            assert_same_refusal(await get_status(keyed, "bob", upload_id), unknown)
            for start in (0, FIRST):
                got = await send_part(keyed, channel, "bob", upload_id, DATA, start, len(DATA))
                assert got is not None
                assert_same_refusal(got, unknown)

    info = await during_alices_part(bob_tries)
    assert (info.md5, info.size) == (md5(DATA), len(DATA))
    await stored.wait_count(1)
    assert_stored_once_as_alices(keyed, stored, info)
    assert keyed.uploads.bytes_received == len(DATA)


# The owner goes on from elsewhere --------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
async def test_the_owner_resumes_from_a_new_session(
    channel: Channel, keyed: ProtocolServer
) -> None:
    stored = Stored(keyed)
    upload_id = str(uuid.uuid4())
    first_session = await alice_starts(keyed, channel, upload_id)
    client: ProtocolClient | HttpAdapter
    if channel == "websocket":
        client = ProtocolClient(f"ws://127.0.0.1:{keyed.port}", token="alice-token")
    else:
        client = HttpAdapter(http_url(keyed), token="alice-token")
    async with client:
        # Never told alice's first session key: whatever it presents is a session of its own.
        assert client.session.key != first_session
        info = await wait_for(client.upload(DATA, name="f.bin", upload_id=upload_id))
        assert client.session.key not in (None, first_session)
    assert (info.size, info.md5) == (len(DATA), md5(DATA))
    # Resumed, not started over: the first part's bytes were not sent again.
    assert keyed.uploads.bytes_received == len(DATA)
    await stored.wait_count(1)
    assert_stored_once_as_alices(keyed, stored, info)


CHILD = """
import asyncio, sys
from siyi_sdk import ApiError, HttpAdapter, ProtocolClient

async def main() -> None:
    channel, port, upload_id, path = sys.argv[1:5]
    for token in sys.argv[5:]:
        if channel == "websocket":
            client = ProtocolClient(f"ws://127.0.0.1:{port}", token=token, request_timeout=5)
        else:
            client = HttpAdapter(f"http://127.0.0.1:{port}", token=token, request_timeout=5)
        async with client:
            try:
                info = await client.upload(path, name="f.bin", upload_id=upload_id)
            except ApiError as exc:
                print(token, "refused", exc.code, flush=True)
            else:
                print(token, "stored", info.model_dump_json(), flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("channel", CHANNELS)
async def test_the_owner_resumes_from_another_process(
    channel: Channel, keyed: ProtocolServer, tmp_path: Path
) -> None:
    stored = Stored(keyed)
    upload_id = str(uuid.uuid4())
    await alice_starts(keyed, channel, upload_id)
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    # One child process, the SDK's client in it: bob first (refused), then alice (resumes).
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        channel,
        str(keyed.port),
        upload_id,
        str(path),
        "bob-token",
        "alice-token",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await wait_for(child.communicate(), 60)
    assert child.returncode == 0, err.decode()
    bob, alice = out.decode().splitlines()
    assert bob == "bob-token refused 404"
    token, verdict, raw = alice.split(" ", 2)
    assert (token, verdict) == ("alice-token", "stored")
    info = FileInfo.model_validate_json(raw)
    assert (info.size, info.md5) == (len(DATA), md5(DATA))
    assert keyed.uploads.bytes_received == len(DATA)  # resumed where alice's part stopped
    await stored.wait_count(1)
    assert_stored_once_as_alices(keyed, stored, info)


# On disk, across a restart -----------------------------------------------------------------


async def test_a_partial_upload_found_on_disk_keeps_its_owner(tmp_path: Path) -> None:
    directory = tmp_path / "uploads"
    upload_id = str(uuid.uuid4())
    options: dict[str, Any] = {"port": 0, "upload_dir": directory, "shutdown_timeout": 1.0}
    async with ProtocolServer(authenticate=authenticate, **options) as server:
        await alice_starts(server, "http", upload_id)
    (state,) = (directory / ".partial").glob("*/state.json")
    assert orjson.loads(state.read_bytes())["owner"] == '"alice"'

    async with ProtocolServer(authenticate=authenticate, **options) as again:
        stored = Stored(again)
        unknown = await unknown_id_answer(again, "bob", upload_id)
        assert_same_refusal(await get_status(again, "bob", upload_id), unknown)
        got = await send_part(again, "http", "bob", upload_id, DATA, FIRST, len(DATA))
        assert got is not None
        assert_same_refusal(got, unknown)
        assert partial_data(again) == [DATA[:FIRST]]
        info = await alice_finishes(again, "websocket", upload_id)
        await stored.wait_count(1)
        assert_stored_once_as_alices(again, stored, info)


async def test_a_state_without_an_owner_is_the_open_servers_alone(tmp_path: Path) -> None:
    # A partial upload kept by a version that recorded no owner: only None (the principal of
    # a server without keys) may claim it; with keys, nobody can, and it waits to expire.
    directory = tmp_path / "uploads"
    upload_id = str(uuid.uuid4())
    options: dict[str, Any] = {"port": 0, "upload_dir": directory, "shutdown_timeout": 1.0}
    async with ProtocolServer(**options) as server:
        await alice_starts(server, "http", upload_id)  # no keys: alice's token is not asked for
    (state,) = (directory / ".partial").glob("*/state.json")
    older = orjson.loads(state.read_bytes())
    assert older.pop("owner") == "null"
    state.write_bytes(orjson.dumps(older))

    async with ProtocolServer(authenticate=authenticate, **options) as keyed:
        for who in ("alice", "bob"):
            unknown = await unknown_id_answer(keyed, who, upload_id)
            assert_same_refusal(await get_status(keyed, who, upload_id), unknown)
            got = await send_part(keyed, "http", who, upload_id, DATA, FIRST, len(DATA))
            assert got is not None
            assert_same_refusal(got, unknown)
        assert partial_data(keyed) == [DATA[:FIRST]]

    async with ProtocolServer(**options) as open_server:
        info = await alice_finishes(open_server, "http", upload_id)
    assert (directory / info.file_id / "f.bin").read_bytes() == DATA


async def test_without_keys_the_upload_id_is_the_only_secret(make_server: ServerFactory) -> None:
    server = await make_server()
    stored = Stored(server)
    upload_id = str(uuid.uuid4())
    await alice_starts(server, "websocket", upload_id)
    # One principal (None): whoever has the id is its owner, from any session.
    status = await get_status(server, None, upload_id)
    assert orjson.loads(status.body)["received"] == FIRST
    async with HttpAdapter(http_url(server)) as client:
        info = await wait_for(client.upload(DATA, name="f.bin", upload_id=upload_id))
    assert (info.md5, info.size) == (md5(DATA), len(DATA))
    await stored.wait_count(1)
    assert [who for who, _ in stored.files] == [None]


# With the Redis backplane ----------------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
async def test_ownership_holds_on_a_redis_backed_cluster(
    channel: Channel,
    make_server: ServerFactory,
    redis_server: RedisServer,
    redis_prefix: str,
) -> None:
    nodes = [
        await make_server(
            authenticate=authenticate,
            backplane=RedisBackplane(redis_server.url, prefix=redis_prefix),
        )
        for _ in range(2)
    ]
    here, there = nodes
    stored = Stored(here)
    upload_id = str(uuid.uuid4())
    # Alice's session opens on the other node; her upload goes to this one with its key, so
    # this node knows her only through Redis (the principal comes back from it as JSON).
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{http_url(there)}/general",
            data=orjson.dumps({"id": "hello", "type": "event", "name": "hello"}),
            headers=auth("alice"),
        ) as reply,
    ):
        assert reply.status == 200
        session = reply.headers[SESSION_HEADER]
    answer = await send_part(here, channel, "alice", upload_id, DATA, 0, FIRST, session=session)
    assert answer is None or answer.status == 202
    mine = await get_status(here, "alice", upload_id, session=session)
    assert (mine.status, orjson.loads(mine.body)["received"]) == (200, FIRST)

    unknown = await unknown_id_answer(here, "bob", upload_id)
    assert_same_refusal(await get_status(here, "bob", upload_id), unknown)
    for start in (0, FIRST):
        got = await send_part(here, channel, "bob", upload_id, DATA, start, len(DATA))
        assert got is not None
        assert_same_refusal(got, unknown)
    # The bytes are on this node's disk: the other node has no such upload, for anyone.
    for who in ("alice", "bob"):
        assert (await get_status(there, who, upload_id)).status == 404
    assert partial_data(here) == [DATA[:FIRST]]
    assert partial_data(there) == []

    info = await alice_finishes(here, channel, upload_id)  # a fresh session of hers
    await stored.wait_count(1)
    assert_stored_once_as_alices(here, stored, info)
    assert_same_refusal(await get_status(here, "bob", upload_id), unknown)
