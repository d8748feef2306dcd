"""TLS end to end: a throwaway CA made here (`trustme`), a server certificate for 127.0.0.1 and
localhost, and real loopback sockets.

Every transport runs over TLS (the packet WebSocket, ``POST /general``, ``/events`` polling,
both upload channels, the ``siyi`` command), and a client that does not trust the CA is refused
with a `CertificateError` that says so, at once and without retrying.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from siyi_sdk import (
    AdapterMode,
    CertificateError,
    Connection,
    Event,
    HttpAdapter,
    ProtocolClient,
    ProtocolServer,
    Request,
    Response,
    StoredFile,
)
from siyi_sdk.cli import main
from tests.conftest import WAIT, Inbox, ServerFactory, wait_for, wait_until
from tests.test_cli import STARTUP, only_json_line, running, siyi

RECEIVING = AdapterMode.SEND | AdapterMode.RECEIVE


# Certificates --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A CA nobody else trusts, made for this module."""
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture
def server_ssl(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


@pytest.fixture
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the test CA (and nothing else)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def pem_files(tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert) -> dict[str, Path]:
    """The CA certificate, the server's chain and its key, as PEM files (for the CLI)."""
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server_cert.private_key_pem.write_to_path(str(files["key"]))
    for i, blob in enumerate(server_cert.cert_chain_pems):
        blob.write_to_path(str(files["cert"]), append=i > 0)
    return files


@pytest.fixture
async def tls_server(make_server: ServerFactory, server_ssl: ssl.SSLContext) -> ProtocolServer:
    """A TLS server with an ``echo`` route and a way to watch the events it receives."""
    server = await make_server(ssl=server_ssl)

    @server.command("echo")
    async def echo(connection: Connection, params: dict[str, Any]) -> dict[str, Any]:
        return params

    return server


def wss(server: ProtocolServer, host: str = "127.0.0.1") -> str:
    return f"wss://{host}:{server.port}"


def https(server: ProtocolServer, host: str = "127.0.0.1") -> str:
    return f"https://{host}:{server.port}"


class NoSleep:
    """An injected `sleep` that records the backoff delays a client asks for."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.calls.append(delay)
        await asyncio.sleep(0)


# A ProtocolClient over wss:// -----------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_client_talks_both_ways_over_wss(
    tls_server: ProtocolServer, trusting: ssl.SSLContext, host: str
) -> None:
    assert tls_server.ssl is not None  # the server knows it serves TLS
    received: asyncio.Queue[Event] = asyncio.Queue()
    tls_server.on_event(lambda connection, event: received.put_nowait(event))
    inbox = Inbox()
    async with ProtocolClient(wss(tls_server, host), ssl=trusting, request_timeout=WAIT) as client:
        assert client.is_connected, client.last_error
        client.on_event(inbox)

        @client.on_request
        def answer(request: Request) -> Response:
            return Response.success(request.id, {"client": request.params})

        # client -> server
        response = await client.send_request("echo", {"over": "tls"})
        assert (response.ok, response.data) == (True, {"over": "tls"})
        await client.send_event("player_joined", {"player_name": "Steve"})
        event = await wait_for(received.get())
        assert (event.name, event.data) == ("player_joined", {"player_name": "Steve"})

        # server -> client
        [connection] = tls_server.connections
        asked = await wait_for(connection.send_request("whoami", {"n": 1}))
        assert (asked.ok, asked.data) == (True, {"client": {"n": 1}})
        await tls_server.broadcast_event("tick", 1)
        await inbox.wait_count(1)
        assert inbox.data == [1]


async def test_ssl_false_skips_verification(tls_server: ProtocolServer) -> None:
    async with ProtocolClient(wss(tls_server), ssl=False, request_timeout=WAIT) as client:
        assert client.is_connected, client.last_error
        assert (await client.send_request("echo", {"a": 1})).data == {"a": 1}


# An HttpAdapter over https:// -----------------------------------------------------------------


async def test_an_http_adapter_sends_and_receives_over_https(
    tls_server: ProtocolServer, trusting: ssl.SSLContext
) -> None:
    received: asyncio.Queue[Event] = asyncio.Queue()
    tls_server.on_event(lambda connection, event: received.put_nowait(event))
    inbox = Inbox()
    adapter = HttpAdapter(
        https(tls_server), ssl=trusting, mode=RECEIVING, poll_wait=0.5, request_timeout=WAIT
    )
    adapter.on_event(inbox)
    adapter.on_request(lambda request: Response.success(request.id, {"echo": request.params}))
    async with adapter:
        # The first poll opens the session; the calls below then present its key.
        await wait_until(lambda: any(c.polls for c in tls_server.sessions))
        [connection] = tls_server.sessions
        response = await adapter.send_packet(Request(command="echo", params={"b": 2}))
        assert (response.ok, response.data) == (True, {"b": 2})
        await adapter.send_event(Event(name="ping", data="over https"))
        event = await wait_for(received.get())
        assert (event.name, event.data) == ("ping", "over https")

        # Receiving: /events polled over TLS, server requests answered over TLS.
        await tls_server.send_event(connection, "tick", 7)
        await inbox.wait_count(1)
        assert (inbox.events[0].name, inbox.data) == ("tick", [7])
        answer = await wait_for(tls_server.send_request(connection, "ask", {"n": 3}))
        assert (answer.ok, answer.data) == (True, {"echo": {"n": 3}})
        assert list(tls_server.sessions) == [connection]  # one peer, whatever carried what


# Uploads over TLS ----------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["websocket", "http"])
async def test_uploads_over_tls(
    tls_server: ProtocolServer, trusting: ssl.SSLContext, channel: str
) -> None:
    stored: asyncio.Queue[StoredFile] = asyncio.Queue()
    tls_server.on_upload(lambda connection, file: stored.put_nowait(file))
    data = bytes(range(256)) * 4096 * 3  # 3 MiB: several WebSocket frames
    client: ProtocolClient | HttpAdapter = (
        ProtocolClient(wss(tls_server), ssl=trusting, request_timeout=WAIT)
        if channel == "websocket"
        else HttpAdapter(https(tls_server), ssl=trusting, request_timeout=WAIT)
    )
    try:  # the upload has a connection of its own: the packet channel is not opened
        info = await wait_for(client.upload(data, name="tls.bin"))
    finally:
        await client.close()
    assert (info.name, info.size) == ("tls.bin", len(data))
    assert info.md5 == hashlib.md5(data).hexdigest()
    file = await wait_for(stored.get())
    assert file.path.read_bytes() == data


# A client that does not trust the CA ---------------------------------------------------------


def assert_certificate_error(exc: BaseException | None) -> None:
    assert isinstance(exc, CertificateError), repr(exc)
    message = str(exc)
    assert "TLS certificate did not verify" in message
    assert "unable to get local issuer certificate" in message
    assert "cafile" in message  # says what to do


async def test_a_websocket_client_without_the_ca_is_refused_and_gives_up(
    tls_server: ProtocolServer,
) -> None:
    naps = NoSleep()
    client = ProtocolClient(wss(tls_server), sleep=naps, connect_timeout=WAIT)
    async with client:
        assert not client.is_connected
        assert_certificate_error(client.last_error)
    assert naps.calls == []  # not one retry
    assert tls_server.connections == []

    # connect() (the reconnecting loop) raises it instead of retrying forever.
    with pytest.raises(CertificateError) as caught:
        await wait_for(ProtocolClient(wss(tls_server), sleep=naps).connect())
    assert_certificate_error(caught.value)
    assert naps.calls == []


async def test_an_http_client_without_the_ca_is_refused_and_stops_polling(
    tls_server: ProtocolServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="siyi_sdk")
    naps = NoSleep()
    adapter = HttpAdapter(https(tls_server), mode=RECEIVING, sleep=naps, request_timeout=WAIT)
    async with adapter:
        with pytest.raises(CertificateError) as caught:
            await adapter.send_packet(Request(command="echo"))
        assert_certificate_error(caught.value)
        # The poller gives up on the first failure and says why; it does not back off forever.
        await wait_until(lambda: "stopped receiving" in caplog.text)
        assert "TLS certificate did not verify" in caplog.text
    assert naps.calls == []
    assert list(tls_server.sessions) == []


@pytest.mark.parametrize("channel", ["websocket", "http"])
@pytest.mark.parametrize("upload_id", [None, "tls-upload"])  # a given id: the status is asked
async def test_an_upload_without_the_ca_is_refused_without_retrying(
    tls_server: ProtocolServer, channel: str, upload_id: str | None
) -> None:
    naps = NoSleep()
    client: ProtocolClient | HttpAdapter = (
        ProtocolClient(wss(tls_server), sleep=naps)
        if channel == "websocket"
        else HttpAdapter(https(tls_server), sleep=naps)
    )
    try:
        with pytest.raises(CertificateError) as caught:
            await wait_for(client.upload(b"secret", name="x.bin", upload_id=upload_id))
    finally:
        await client.close()
    assert_certificate_error(caught.value)
    assert naps.calls == []


# The siyi command ----------------------------------------------------------------------------


@pytest.fixture
async def tls_siyi_serve(pem_files: dict[str, Path]) -> AsyncIterator[int]:
    """``siyi serve --cert --key`` in a subprocess; yields its port."""
    args = ("serve", "--port", "0", "--cert", str(pem_files["cert"]), "--key")
    async with running("-m", "siyi_sdk", *args, str(pem_files["key"])) as child:
        banner = await child.wait_line("serving the demo game on wss://", "stdout")
        assert "POST https://" in banner
        match = re.search(r"wss://127\.0\.0\.1:(\d+)", banner)
        assert match, banner
        yield int(match.group(1))


async def test_siyi_call_with_cafile_against_siyi_serve_with_cert(
    tls_siyi_serve: int, pem_files: dict[str, Path], tmp_path: Path
) -> None:
    port, ca = tls_siyi_serve, str(pem_files["ca"])
    upload = tmp_path / "notes.txt"
    upload.write_bytes(b"over TLS\n" * 1000)
    params = '{"world": "overworld"}'
    results = await asyncio.gather(
        siyi("call", f"wss://127.0.0.1:{port}", "get_player_list", params, "--cafile", ca),
        siyi("call", f"https://localhost:{port}", "get_player_list", params, "--cafile", ca),
        siyi("upload", f"wss://127.0.0.1:{port}", str(upload), "--no-progress", "--cafile", ca),
        siyi("upload", f"https://127.0.0.1:{port}", str(upload), "--no-progress", "--cafile", ca),
        siyi("call", f"wss://127.0.0.1:{port}", "get_player_list", params),  # no CA
        siyi("call", f"https://127.0.0.1:{port}", "get_player_list", params),  # no CA
    )
    for code, stdout, child in results[:2]:
        assert code == 0, child.output()
        assert only_json_line(stdout)["data"] == ["Steve", "Alex"]
    for code, stdout, child in results[2:4]:
        assert code == 0, child.output()
        assert only_json_line(stdout)["md5"] == hashlib.md5(upload.read_bytes()).hexdigest()
    for code, stdout, child in results[4:]:
        assert code == 2, child.output()
        assert stdout == ""
        stderr = child.text("stderr")
        assert "siyi call: cannot reach" in stderr
        assert "the server's TLS certificate did not verify" in stderr
        assert "pass its CA with --cafile FILE" in stderr
        assert "Traceback" not in stderr


async def test_siyi_serve_refuses_unreadable_or_bad_certificate_files(
    pem_files: dict[str, Path], tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cert, key = str(pem_files["cert"]), str(pem_files["key"])
    encrypted = tmp_path / "encrypted.pem"
    private_key = serialization.load_pem_private_key(pem_files["key"].read_bytes(), None)
    encrypted.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases = [
        (["--cert", str(tmp_path / "missing.pem"), "--key", key], "--cert: cannot read"),
        (["--cert", cert, "--key", str(tmp_path / "missing.pem")], "--key: cannot read"),
        (["--cert", str(garbage), "--key", key], "not a PEM certificate chain"),
        (["--cert", key, "--key", cert], "not a PEM certificate chain"),  # swapped
        (["--cert", cert, "--key", str(encrypted)], "is encrypted"),  # never a prompt
        (["--key", key], "--key needs --cert"),
    ]
    results = await asyncio.gather(*(siyi("serve", "--port", "0", *args) for args, _ in cases))
    for (code, stdout, child), (_, expected) in zip(results, cases, strict=True):
        assert code == 2, child.output()
        assert stdout == ""
        assert "siyi serve: " in child.text("stderr"), child.output()
        assert expected in child.text("stderr"), child.output()
        assert "Traceback" not in child.text("stderr")


def test_siyi_call_refuses_a_bad_cafile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for path, expected in [
        (tmp_path / "missing.pem", "cannot read"),
        (garbage, "holds no PEM CA certificate"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["call", "wss://127.0.0.1:1", "echo", "--cafile", str(path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "argument --cafile" in err
        assert expected in err


async def test_siyi_listen_with_cafile_prints_events_over_wss(
    tls_siyi_serve: int, pem_files: dict[str, Path], trusting: ssl.SSLContext
) -> None:
    url = f"wss://127.0.0.1:{tls_siyi_serve}"
    async with running("-m", "siyi_sdk", "listen", url, "--cafile", str(pem_files["ca"])) as child:
        await child.wait_line("listening to")
        # The demo game relays player_joined to the other clients.
        async with ProtocolClient(url, ssl=trusting, request_timeout=STARTUP) as client:
            await client.send_event("player_joined", {"player_name": "Herobrine"})
            line = await child.wait_line('"player_joined"', "stdout")
        assert only_json_line(line)["data"]["player_name"] == "Herobrine"
