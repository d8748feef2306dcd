"""One size limit on every transport (PROTOCOL.md §4): a packet of exactly `max_message_size`
bytes is accepted everywhere, one byte more is refused everywhere (1009 on a WebSocket, counted
after decompression; 413 over HTTP), and a refused call opens no session."""

from __future__ import annotations

import json

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from siyi_sdk import Connection, ProtocolServer
from siyi_sdk.packets import SESSION_HEADER

from .conftest import ServerFactory, http_url, recv_json, ws_url

LIMIT = 1024


def packet_of(size: int, request_id: str = "sized") -> bytes:
    """A Request whose encoded form is exactly `size` bytes."""
    bare = {"id": request_id, "type": "request", "command": "echo", "params": {"blob": ""}}
    pad = size - len(json.dumps(bare, separators=(",", ":")).encode())
    assert pad >= 0
    bare["params"] = {"blob": "a" * pad}
    frame = json.dumps(bare, separators=(",", ":")).encode()
    assert len(frame) == size
    return frame


@pytest.fixture
async def limited(make_server: ServerFactory) -> ProtocolServer:
    server = await make_server(max_message_size=LIMIT)

    @server.command("echo")
    def echo(connection: Connection, params: dict[str, str]) -> int:
        return len(params["blob"])

    return server


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_a_websocket_frame_of_exactly_the_limit_is_accepted_one_more_closes_1009(
    limited: ProtocolServer, compression: str | None
) -> None:
    async with connect(ws_url(limited), compression=compression) as ws:
        await ws.send(packet_of(LIMIT).decode())
        answer = await recv_json(ws)
        assert (answer["id"], answer["status"]) == ("sized", "ok")
        await ws.send(packet_of(LIMIT + 1).decode())
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_a_general_body_of_exactly_the_limit_is_accepted_one_more_is_413(
    limited: ProtocolServer,
) -> None:
    url = f"{http_url(limited)}/general"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=packet_of(LIMIT)) as reply:
            body = json.loads(await reply.read())
            assert (reply.status, body["status"]) == (200, "ok")
            assert reply.headers.get(SESSION_HEADER)
        sessions = len(limited.sessions)
        async with http.post(url, data=packet_of(LIMIT + 1)) as reply:
            body = json.loads(await reply.read())
            assert (reply.status, body["code"]) == (413, 413)
            assert reply.headers.get(SESSION_HEADER) is None
        # Without a Content-Length (chunked): the same limit, read as it comes.

        async def chunked() -> object:
            yield packet_of(LIMIT + 1)

        async with http.post(url, data=chunked()) as reply:
            assert (reply.status, reply.headers.get(SESSION_HEADER)) == (413, None)
        assert len(limited.sessions) == sessions


async def test_a_refused_upload_opens_no_session(make_server: ServerFactory) -> None:
    server = await make_server(max_upload_size=10)
    url = f"{http_url(server)}/upload"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=b"x" * 11, headers={"X-Siyi-File-Name": "big"}) as reply:
            assert (reply.status, reply.headers.get(SESSION_HEADER)) == (413, None)
        async with http.get(f"{url}/no-such-upload") as reply:
            assert (reply.status, reply.headers.get(SESSION_HEADER)) == (404, None)
        async with http.post(url, data=b"x" * 5, headers={"X-Siyi-File-Name": "ok"}) as reply:
            assert reply.status == 200
            assert reply.headers.get(SESSION_HEADER)
    assert len(server.sessions) == 1
