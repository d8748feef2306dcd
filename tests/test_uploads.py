"""Uploads (PROTOCOL.md §8): both channels, over real loopback sockets.

The 200 MiB tests stream a file generated on disk through each channel and watch the process's
resident memory while they run; the rest use a few MiB and run in well under a second. Cuts are
real: a `TcpProxy` between client and server resets both sides' sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from siyi_sdk import (
    AdapterManager,
    Api,
    Connection,
    FileInfo,
    HttpAdapter,
    MockAdapter,
    ProtocolClient,
    ProtocolServer,
    Request,
    Response,
    StoredFile,
    TooLargeError,
    UnauthorizedError,
    WebSocketAdapter,
    parse_message,
)
from siyi_sdk.cli import main
from siyi_sdk.server import sanitize_filename
from siyi_sdk.wire import (
    FILE_MD5_HEADER,
    FILE_NAME_HEADER,
    FILE_SHA256_HEADER,
    UPLOAD_ID_HEADER,
    UPLOAD_RECEIVED_HEADER,
)
from tests.conftest import ClientFactory, ServerFactory, free_port, wait_until, ws_url
from tests.proxy import TcpProxy, sleep_until_accepting, wait_for

MiB = 1024 * 1024
Channel = Literal["websocket", "http"]
CHANNELS: tuple[Channel, ...] = ("websocket", "http")


# Helpers -------------------------------------------------------------------------------------


def http_url(server: ProtocolServer | TcpProxy) -> str:
    return f"http://127.0.0.1:{server.port}"


def uploader(channel: Channel, port: int, **kwargs: Any) -> ProtocolClient | HttpAdapter:
    """A client that uploads over `channel`; its packet channel is never opened."""
    if channel == "websocket":
        return ProtocolClient(f"ws://127.0.0.1:{port}", **kwargs)
    return HttpAdapter(f"http://127.0.0.1:{port}", **kwargs)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def upload_dir(server: ProtocolServer) -> Path:
    directory = server.upload_dir
    assert directory is not None
    return Path(directory)


def partials(server: ProtocolServer) -> Path:
    directory = server.uploads.partial_directory
    assert directory is not None
    return directory


def stored_files(server: ProtocolServer) -> list[Path]:
    """Every file under upload_dir, the partial area included."""
    return sorted(p for p in upload_dir(server).rglob("*") if p.is_file())


def assert_nothing_kept(server: ProtocolServer) -> None:
    assert stored_files(server) == []
    assert [p.name for p in upload_dir(server).iterdir()] == [".partial"]
    assert list(partials(server).iterdir()) == []


def partial_bytes(server: ProtocolServer) -> int:
    return sum(p.stat().st_size for p in partials(server).glob("*/data"))


def rss() -> int | None:
    """The process's resident set size in bytes (/proc first, psutil otherwise)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


async def post(
    url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Response, dict[str, str]]:
    """POST raw bytes; the HTTP status, the Response packet, the headers."""
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as reply:
        raw = await reply.read()
        packet = parse_message(raw)
        assert isinstance(packet, Response), raw
        return reply.status, packet, dict(reply.headers)


async def status_of(url: str, upload_id: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/{upload_id}") as reply:
        return reply.status, orjson.loads(await reply.read())


def part_headers(upload_id: str, name: str, data: bytes, **extra: str) -> dict[str, str]:
    return {
        UPLOAD_ID_HEADER: upload_id,
        FILE_NAME_HEADER: quote(name, safe=""),
        FILE_MD5_HEADER: md5(data),
        "Content-Type": "application/octet-stream",
        **extra,
    }


async def ws_upload(
    url: str,
    header: dict[str, Any],
    frames: list[bytes],
    last: dict[str, Any] | None = None,
) -> Response:
    """A hand-written WebSocket upload: the header, binary frames, a last text frame."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_str(orjson.dumps(header).decode())
        for frame in frames:
            await ws.send_bytes(frame)
        if last is not None:
            await ws.send_str(orjson.dumps(last).decode())
        message = await wait_for(ws.receive())
        assert message.type == aiohttp.WSMsgType.TEXT, message
        packet = parse_message(message.data)
        assert isinstance(packet, Response)
        return packet


def frames_of(data: bytes, size: int = 256 * 1024) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# 200 MiB through each channel, memory flat ---------------------------------------------------


@dataclass
class BigFile:
    path: Path
    size: int
    md5: str
    sha256: str


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigFile]:
    """200 MiB generated on disk a MiB at a time (never whole in memory), with its digests."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    block = os.urandom(MiB)
    md5_digest, sha_digest = hashlib.md5(), hashlib.sha256()
    with path.open("wb") as file:
        for index in range(200):
            chunk = index.to_bytes(8, "big") + block[8:]  # every MiB differs
            file.write(chunk)
            md5_digest.update(chunk)
            sha_digest.update(chunk)
    yield BigFile(path, 200 * MiB, md5_digest.hexdigest(), sha_digest.hexdigest())
    path.unlink()


@pytest.mark.parametrize("channel", CHANNELS)
async def test_200_mib_streams_through_in_flat_memory(
    channel: Channel, big_file: BigFile, make_server: ServerFactory
) -> None:
    server = await make_server(max_upload_size=256 * MiB)
    received: list[tuple[Connection, StoredFile]] = []
    handled = asyncio.Event()

    @server.on_upload
    def keep(connection: Connection, stored: StoredFile) -> None:
        received.append((connection, stored))
        handled.set()

    before = rss()
    if before is None:
        pytest.skip("no way to read this process's memory use here")
    peak = before

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss() or 0)
            await asyncio.sleep(0.05)  # a sampling period, not a wait for anything

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    try:
        async with uploader(channel, server.port) as client:
            info = await wait_for(client.upload(big_file.path), 120)
    finally:
        sampler.cancel()
    elapsed = time.perf_counter() - started
    peak = max(peak, rss() or 0)
    print(
        f"\n{channel}: 200 MiB in {elapsed:.2f} s; RSS {before / MiB:.1f} MiB before, "
        f"peak {peak / MiB:.1f} MiB during (+{(peak - before) / MiB:.1f} MiB)"
    )

    assert info.size == big_file.size
    assert info.md5 == big_file.md5
    assert info.sha256 == big_file.sha256
    assert info.name == "big.bin"
    await wait_for(handled.wait())
    connection, stored = received[0]
    assert isinstance(connection, Connection)
    assert stored.path == upload_dir(server) / info.file_id / "big.bin"
    assert stored.path.stat().st_size == big_file.size
    assert FileInfo.model_validate(stored.model_dump()) == info
    assert list(partials(server).iterdir()) == []
    assert peak - before < 64 * MiB, f"memory grew by {(peak - before) / MiB:.1f} MiB"


async def test_the_packet_channel_keeps_its_latency_during_a_big_upload(
    big_file: BigFile, make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server(max_upload_size=256 * MiB)

    @server.on_request
    def echo(connection: Connection, request: Request) -> Response:
        return Response.success(request.id, request.params)

    client = await make_client(ws_url(server))

    async def median_latency(count: int = 50) -> float:
        times = []
        for index in range(count):
            started = time.perf_counter()
            answer = await client.send_request("echo", {"i": index})
            times.append(time.perf_counter() - started)
            assert answer.data == {"i": index}
        return statistics.median(times)

    await median_latency(10)  # warm up
    idle = await median_latency()
    flowing = asyncio.Event()

    def progress(sent: int, total: int) -> None:
        if sent >= 8 * MiB:
            flowing.set()

    upload = asyncio.create_task(client.upload(big_file.path, progress=progress))
    await wait_for(flowing.wait(), 30)
    during = await median_latency()
    assert not upload.done(), "the upload ended before the measurement: it would prove nothing"
    info = await wait_for(upload, 120)
    print(f"\necho median: {idle * 1000:.2f} ms idle, {during * 1000:.2f} ms during the upload")
    assert info.sha256 == big_file.sha256
    assert during < 5 * idle + 0.020


# Refusals: digest, size, limit, key -----------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
async def test_a_wrong_md5_is_refused_and_nothing_is_kept(
    channel: Channel, make_server: ServerFactory
) -> None:
    server = await make_server()
    data = os.urandom(3 * MiB + 1)
    wrong = md5(b"something else")
    if channel == "http":
        status, answer, _ = await post(
            http_url(server) + "/upload",
            data,
            part_headers(str(uuid.uuid4()), "a.bin", data, **{FILE_MD5_HEADER: wrong}),
        )
        assert status == 400
    else:
        header = {"upload_id": str(uuid.uuid4()), "name": "a.bin", "size": len(data)}
        answer = await ws_upload(
            ws_url(server) + "/upload", header, frames_of(data), {"md5": wrong}
        )
    assert answer.code == 400
    assert "md5 mismatch" in (answer.error or "")
    assert_nothing_kept(server)


async def test_a_wrong_sha256_is_refused_even_with_a_right_md5(make_server: ServerFactory) -> None:
    server = await make_server()
    data = os.urandom(MiB)
    headers = part_headers("u1", "a.bin", data, **{FILE_SHA256_HEADER: sha256(b"other")})
    status, answer, _ = await post(http_url(server) + "/upload", data, headers)
    assert (status, answer.code) == (400, 400)
    assert "sha256 mismatch" in (answer.error or "")
    assert_nothing_kept(server)


async def test_more_bytes_than_declared_is_a_size_mismatch(make_server: ServerFactory) -> None:
    server = await make_server()
    data = os.urandom(MiB)
    header = {"upload_id": "too-many", "name": "a.bin", "size": len(data) - 10, "md5": md5(data)}
    answer = await ws_upload(ws_url(server) + "/upload", header, frames_of(data))
    assert answer.code == 400
    assert "size mismatch" in (answer.error or "")
    assert_nothing_kept(server)


@pytest.mark.parametrize("expect", [False, True])
async def test_over_the_limit_is_refused_before_the_body_is_read(
    expect: bool, make_server: ServerFactory
) -> None:
    server = await make_server(max_upload_size=MiB)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        # A terabyte announced, a kilobyte sent: the answer can only come if the server
        # decided on the headers alone.
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1099511627776\r\n"
            + (b"Expect: 100-continue\r\n" if expect else b"")
            + b"X-Siyi-Upload-Id: huge\r\nX-Siyi-File-Name: huge.bin\r\n\r\n"
            + (b"" if expect else b"x" * 1024)
        )
        await writer.drain()
        status_line = await wait_for(reader.readline())
        assert status_line.split()[1] == b"413", status_line
        length = 0
        while (line := await wait_for(reader.readline())) != b"\r\n":
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        answer = parse_message(await wait_for(reader.readexactly(length)))
    finally:
        writer.close()
    assert isinstance(answer, Response)
    assert answer.code == 413
    assert "limit is 1048576" in (answer.error or "")
    assert server.uploads.bytes_received == 0
    assert_nothing_kept(server)


@pytest.mark.parametrize("channel", CHANNELS)
async def test_the_client_gets_too_large_error(
    channel: Channel, make_server: ServerFactory
) -> None:
    server = await make_server(max_upload_size=MiB)
    async with uploader(channel, server.port) as client:
        with pytest.raises(TooLargeError):
            await wait_for(client.upload(os.urandom(MiB + 1), name="big.bin"))
    assert server.uploads.bytes_received == 0
    assert_nothing_kept(server)


async def test_uploads_need_the_key(make_server: ServerFactory) -> None:
    server = await make_server(verify_key="s3cret")
    url = http_url(server) + "/upload"
    status, answer, _ = await post(url, b"data", part_headers("k1", "a.bin", b"data"))
    assert (status, answer.code) == (401, 401)
    async with aiohttp.ClientSession() as http, http.get(f"{url}/k1") as reply:
        assert reply.status == 401
    for channel in CHANNELS:
        async with uploader(channel, server.port) as client:
            with pytest.raises(UnauthorizedError):
                await wait_for(client.upload(b"data"))
        async with uploader(channel, server.port, token="s3cret") as client:
            info = await wait_for(client.upload(b"data", name=f"{channel}.txt"))
        assert info.md5 == md5(b"data")
    assert sorted(p.name for p in stored_files(server)) == ["http.txt", "websocket.txt"]


# File names ----------------------------------------------------------------------------------

NAMES = [
    ("../../etc/passwd", "passwd"),
    ("/abs/path", "path"),
    ("..\\win", "win"),
    ("..\\..\\..\\windows\\system32\\drivers", "drivers"),
    ("C:\\Users\\me\\report.pdf", "report.pdf"),
    ("a/../../b.txt", "b.txt"),
    ("a\x00b.txt", "ab.txt"),
    ("line\nbreak\r.txt", "linebreak.txt"),
    ("evil\u202egnp.exe", "evilgnp.exe"),
    ("\u2066isolated\u2069\u200b.txt", "isolated.txt"),
    ("e\u0301t\u00e9.txt", "\u00e9t\u00e9.txt"),
    ("..", "upload"),
    ("...", "upload"),
    ("", "upload"),
    (".hidden", "hidden"),
    ("  spaced \u00a0\u2003 out . ", "spaced out"),
    ('what?<is>:"this"|*.txt', "what__is___this___.txt"),
    ("CON", "_CON"),
    ("nul.txt", "_nul.txt"),
    ("x" * 300 + ".txt", "x" * 196 + ".txt"),
    ("\u00e9" * 300, "\u00e9" * 100),
    ("\ud800lone surrogate", "lone surrogate"),
]


@pytest.mark.parametrize(("sent", "stored"), NAMES)
def test_sanitize_filename(sent: str, stored: str) -> None:
    assert sanitize_filename(sent) == stored
    assert len(stored.encode()) <= 200


@pytest.mark.parametrize("channel", CHANNELS)
async def test_hostile_names_land_inside_upload_dir(
    channel: Channel, make_server: ServerFactory
) -> None:
    server = await make_server()
    root = upload_dir(server).resolve()
    hostile = [(sent, stored) for sent, stored in NAMES if sent and "\ud800" not in sent]
    async with uploader(channel, server.port) as client:
        for sent, expected in hostile:
            info = await wait_for(client.upload(sent.encode(), name=sent))
            assert info.name == expected
            path = upload_dir(server) / info.file_id / expected
            assert path.read_bytes() == sent.encode()
            assert path.resolve().parent.parent == root
    files = stored_files(server)
    assert len(files) == len(hostile)
    assert all(p.resolve().parent.parent == root for p in files)


# Resuming -----------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
async def test_a_cut_upload_resumes_by_itself(
    channel: Channel, make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server()
    data = os.urandom(24 * MiB)
    path = tmp_path / "medium.bin"
    path.write_bytes(data)
    cuts = 0
    async with TcpProxy(server.port) as proxy:

        async def cut_once(sent: int, total: int) -> None:
            nonlocal cuts
            if cuts == 0 and sent >= total // 3:
                cuts += 1

                async def cut_and_resume() -> None:
                    await proxy.cut()
                    await proxy.resume()

                # Shielded: over HTTP this runs in aiohttp's body writer, which the cut cancels.
                await asyncio.shield(asyncio.create_task(cut_and_resume()))

        client = uploader(channel, proxy.port, sleep=sleep_until_accepting(proxy))
        try:
            info = await wait_for(client.upload(path, progress=cut_once), 30)
        finally:
            await client.close()
    assert cuts == 1
    assert info.sha256 == sha256(data)
    assert sha256_of(upload_dir(server) / info.file_id / "medium.bin") == sha256(data)
    # Resumed, not started over: every byte reached the server once.
    assert server.uploads.bytes_received == len(data)
    assert list(partials(server).iterdir()) == []


async def test_manual_resume_over_http_with_get_and_content_range(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    data = os.urandom(8 * MiB)
    half = len(data) // 2
    upload_id = str(uuid.uuid4())
    headers = part_headers(upload_id, "manual.bin", data)
    async with TcpProxy(server.port) as proxy, aiohttp.ClientSession() as http:
        url = http_url(proxy) + "/upload"

        async def half_then_cut() -> AsyncIterator[bytes]:
            yield data[:half]
            # Once the server has all but its last batch on disk, pull the cable.
            await wait_until(lambda: partial_bytes(server) >= half - server.uploads.batch_size)
            # Shielded: the cut makes aiohttp cancel this body writer, and a cut() cancelled
            # half way would cancel the proxy's own link tasks.
            await asyncio.shield(asyncio.create_task(proxy.cut()))
            yield data[half:]

        whole = {**headers, "Content-Length": str(len(data))}
        with pytest.raises((aiohttp.ClientError, OSError)):
            await http.post(url, data=half_then_cut(), headers=whole)
        await proxy.resume()

        status, where = await status_of(url, upload_id)
        assert status == 200
        received = where["received"]
        assert where == {"upload_id": upload_id, "received": received, "size": len(data)}
        assert half - server.uploads.batch_size <= received <= half

        # A part that does not start where the server stands is told where to.
        wrong = received - 1
        status, answer, answered = await post(
            url,
            data[wrong:],
            {**headers, "Content-Range": f"bytes {wrong}-{len(data) - 1}/{len(data)}"},
        )
        assert (status, answer.code) == (400, 400)
        assert (answer.error or "").startswith(f"resume from byte {received}")
        assert answered[UPLOAD_RECEIVED_HEADER] == str(received)

        status, answer, _ = await post(
            url,
            data[received:],
            {**headers, "Content-Range": f"bytes {received}-{len(data) - 1}/{len(data)}"},
        )
    assert status == 200, answer
    info = FileInfo.model_validate(answer.data)
    assert info.sha256 == sha256(data)
    assert sha256_of(upload_dir(server) / info.file_id / "manual.bin") == sha256(data)


async def test_manual_resume_over_websocket_with_an_offset(make_server: ServerFactory) -> None:
    server = await make_server()
    data = os.urandom(8 * MiB)
    frames = frames_of(data)
    upload_id = str(uuid.uuid4())
    header = {"upload_id": upload_id, "name": "ws.bin", "size": len(data)}
    async with TcpProxy(server.port) as proxy, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"ws://127.0.0.1:{proxy.port}/upload")
        await ws.send_str(orjson.dumps({**header, "offset": 0}).decode())
        for frame in frames[: len(frames) // 2]:
            await ws.send_bytes(frame)
        await wait_until(
            lambda: partial_bytes(server) >= len(data) // 2 - server.uploads.batch_size
        )
        await proxy.cut()
        await ws.close()
        await proxy.resume()

        status, where = await status_of(http_url(proxy) + "/upload", upload_id)
        received = where["received"]
        assert status == 200
        assert received % len(frames[0]) == 0, "WebSocket frames arrive whole"
        assert 0 < received <= len(data) // 2

        url = f"ws://127.0.0.1:{proxy.port}/upload"
        refused = await ws_upload(url, {**header, "offset": received + 1}, [])
        assert refused.code == 400
        assert (refused.error or "").startswith(f"resume from byte {received}")

        rest = frames_of(data[received:])
        answer = await ws_upload(url, {**header, "offset": received}, rest, {"md5": md5(data)})
    assert answer.ok, answer
    info = FileInfo.model_validate(answer.data)
    assert info.sha256 == sha256(data)
    assert sha256_of(upload_dir(server) / info.file_id / "ws.bin") == sha256(data)


async def test_a_partial_upload_survives_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "uploads"
    data = os.urandom(3 * MiB + 5)
    first = MiB + 3
    upload_id = str(uuid.uuid4())
    async with ProtocolServer(port=0, upload_dir=directory, shutdown_timeout=1.0) as server:
        status, answer, _ = await post(
            http_url(server) + "/upload",
            data[:first],
            part_headers(
                upload_id, "kept.bin", data, **{"Content-Range": f"bytes 0-{first - 1}/{len(data)}"}
            ),
        )
        assert (status, answer.data) == (
            202,
            {"upload_id": upload_id, "received": first, "size": len(data)},
        )
    # Our own directory: kept across the stop. A new server finds the partial upload there,
    # re-hashes what it has, and takes the rest.
    async with ProtocolServer(port=0, upload_dir=directory, shutdown_timeout=1.0) as again:
        status, where = await status_of(http_url(again) + "/upload", upload_id)
        assert (status, where["received"]) == (200, first)
        async with HttpAdapter(http_url(again)) as client:
            info = await wait_for(client.upload(data, name="kept.bin", upload_id=upload_id))
        assert again.uploads.bytes_received == len(data) - first
    assert info.sha256 == sha256(data)
    assert (directory / info.file_id / "kept.bin").read_bytes() == data
    assert list((directory / ".partial").iterdir()) == []


async def test_a_completed_upload_is_reported_and_not_sent_again(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    data = os.urandom(MiB)
    upload_id = str(uuid.uuid4())
    async with uploader("websocket", server.port) as client:
        info = await wait_for(client.upload(data, name="once.bin", upload_id=upload_id))
        status, where = await status_of(http_url(server) + "/upload", upload_id)
        assert status == 200
        assert where == {
            "upload_id": upload_id,
            "received": len(data),
            "size": len(data),
            "file": info.model_dump(),
        }
        # Its answer lost, a client asks again with the same id: the same file, no bytes.
        again = await wait_for(client.upload(data, name="once.bin", upload_id=upload_id))
    assert again == info
    assert server.uploads.bytes_received == len(data)
    assert len(stored_files(server)) == 1


async def test_a_second_part_of_a_running_upload_gets_429(make_server: ServerFactory) -> None:
    server = await make_server()
    server.uploads.busy_wait = 0.1
    upload_id = str(uuid.uuid4())
    url = http_url(server) + "/upload"
    headers = {UPLOAD_ID_HEADER: upload_id, "Content-Length": "10000"}
    release = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await release.wait()

    async with aiohttp.ClientSession() as http:
        first = asyncio.create_task(http.post(url, data=stalled(), headers=headers))
        await wait_until(lambda: any(partials(server).iterdir()))  # the first part runs
        status, answer, _ = await post(url, b"y" * 10000, headers)
        assert (status, answer.code) == (429, 429)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
    release.set()
    status, where = await status_of(url, upload_id)
    assert (status, where["size"]) == (200, 10000)


async def test_an_abandoned_partial_upload_is_removed_after_the_ttl(
    make_server: ServerFactory,
) -> None:
    server = await make_server(upload_resume_ttl=0.2)
    url = http_url(server) + "/upload"
    data = os.urandom(2 * MiB)
    upload_id = str(uuid.uuid4())
    status, _answer, _ = await post(
        url,
        data[:MiB],
        part_headers(
            upload_id, "gone.bin", data, **{"Content-Range": f"bytes 0-{MiB - 1}/{2 * MiB}"}
        ),
    )
    assert status == 202
    assert await status_of(url, upload_id) == (
        200,
        {"upload_id": upload_id, "received": MiB, "size": 2 * MiB},
    )
    assert len(list(partials(server).iterdir())) == 1
    await wait_until(lambda: not any(partials(server).iterdir()))
    status, body = await status_of(url, upload_id)
    assert status == 404
    assert body["code"] == 404


async def test_an_upload_without_an_id_keeps_nothing_when_cut(make_server: ServerFactory) -> None:
    server = await make_server()
    url = http_url(server) + "/upload"

    async def half() -> AsyncIterator[bytes]:
        yield b"z" * MiB
        raise ConnectionResetError("cut")

    async with aiohttp.ClientSession() as http:
        with pytest.raises((aiohttp.ClientError, OSError)):
            async with http.post(url, data=half(), headers={"Content-Length": str(2 * MiB)}):
                pass
    await wait_until(lambda: not any(partials(server).iterdir()))
    assert_nothing_kept(server)


async def test_stop_ends_running_uploads_at_once_and_keeps_their_bytes(tmp_path: Path) -> None:
    directory = tmp_path / "uploads"
    upload_id = str(uuid.uuid4())
    release = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b"x" * (3 * MiB)
        await release.wait()

    server = ProtocolServer(port=0, upload_dir=directory, shutdown_timeout=30.0)
    async with server, aiohttp.ClientSession() as http:
        url = http_url(server) + "/upload"
        headers = {UPLOAD_ID_HEADER: upload_id, "Content-Length": str(4 * MiB)}
        part = asyncio.create_task(http.post(url, data=stalled(), headers=headers))
        await wait_until(lambda: partial_bytes(server) >= 2 * MiB)
        started = time.perf_counter()
        await wait_for(server.stop())  # not held for shutdown_timeout by the stalled part
        assert time.perf_counter() - started < 10.0
        release.set()
        await asyncio.gather(part, return_exceptions=True)
    # What reached the part is on disk; bytes still in the socket when it was aborted are not.
    (kept,) = (directory / ".partial").glob("*/data")
    assert 2 * MiB <= kept.stat().st_size <= 3 * MiB


async def test_the_upload_path_without_an_upgrade_says_how_to_upload(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    async with aiohttp.ClientSession() as http, http.get(http_url(server) + "/upload") as reply:
        assert reply.status == 426
        assert "POST a file" in (await reply.json())["error"]


# Sources, manager, Api, CLI -------------------------------------------------------------------


async def test_every_kind_of_source(make_server: ServerFactory, tmp_path: Path) -> None:
    server = await make_server()
    data = os.urandom(MiB + 7)
    path = tmp_path / "from-path.bin"
    path.write_bytes(data)
    seekable = io.BytesIO(b"skip" + data)
    seekable.seek(4)  # a file object is read from where it stands

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self._inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            chunk = self._inner.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 100_000):
            yield data[start : start + 100_000]

    sources: list[tuple[Any, str]] = [
        (data, "upload"),
        (bytearray(data), "upload"),
        (path, "from-path.bin"),
        (str(path), "from-path.bin"),
        (seekable, "upload"),
        (io.BufferedReader(Pipe()), "upload"),
        (stream(), "upload"),
    ]
    async with uploader("websocket", server.port) as client:
        for source, name in sources:
            info = await wait_for(client.upload(source))
            assert (info.name, info.sha256) == (name, sha256(data)), source


async def test_manager_and_api_upload_through_the_best_adapter_that_can(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    data = os.urandom(2 * MiB)
    down = WebSocketAdapter(f"ws://127.0.0.1:{free_port()}", priority=20)  # never connected
    mock = MockAdapter(lambda request: Response.success(request.id), priority=10)
    http = HttpAdapter(http_url(server))
    manager = AdapterManager([down, mock, http])
    api = Api(manager)
    sent: list[int] = []

    async def stream() -> AsyncIterator[bytes]:
        yield data[:MiB]
        yield data[MiB:]

    try:
        info = await wait_for(
            api.upload(stream(), name="via-manager.bin", progress=lambda s, t: sent.append(s))
        )
    finally:
        await manager.close()
    assert manager.last_adapter is http
    assert (info.name, info.size, info.sha256) == ("via-manager.bin", len(data), sha256(data))
    assert sent[-1] == len(data)


async def test_a_refusal_is_an_answer_not_a_failover(make_server: ServerFactory) -> None:
    server = await make_server(max_upload_size=10)
    first, second = HttpAdapter(http_url(server), priority=1), HttpAdapter(http_url(server))
    manager = AdapterManager([first, second])
    try:
        with pytest.raises(TooLargeError):
            await wait_for(manager.upload(b"x" * 11))
    finally:
        await manager.close()
    assert manager.last_adapter is None  # nothing was carried, and the second was not tried


@pytest.mark.parametrize("scheme", ["ws", "http"])
async def test_siyi_upload_prints_the_file_info(
    scheme: str, make_server: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await make_server()
    path = tmp_path / "report.txt"
    path.write_bytes(b"quarterly numbers\n" * 100_000)
    url = f"{scheme}://127.0.0.1:{server.port}"
    code = await asyncio.to_thread(main, ["upload", url, str(path), "--name", "q3.txt"])
    out, err = capsys.readouterr()
    assert code == 0, err
    info = FileInfo.model_validate_json(out)
    assert (info.name, info.sha256) == ("q3.txt", sha256(path.read_bytes()))
    assert "100%" in err
    assert "#" * 30 in err


async def test_siyi_upload_exit_codes(make_server: ServerFactory, tmp_path: Path) -> None:
    server = await make_server(max_upload_size=10)
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * 11)
    url = f"http://127.0.0.1:{server.port}"
    assert await asyncio.to_thread(main, ["upload", url, str(path), "--no-progress"]) == 1
    assert await asyncio.to_thread(main, ["upload", url, str(tmp_path / "missing")]) == 2
