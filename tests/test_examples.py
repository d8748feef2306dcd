"""The seed's two examples, run unchanged but for their imports, against each other.

They are real processes on the seed's fixed port, 8765: the server, then the client, each read
line by line until the whole exchange the seed describes has happened. The client then sleeps
30 s; both are interrupted (Ctrl+C) instead, and must stop cleanly.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from tests.test_cli import ROOT, running

EXAMPLES = ROOT / "examples"
SEED_PORT = 8765
EXCHANGE = 30.0
"""The bound on the whole exchange: two interpreters starting, then a few round trips."""


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As asyncio's server does: a TIME_WAIT left by an earlier run does not block a bind.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to the examples")
async def test_seed_server_and_client_examples_talk_to_each_other() -> None:
    # The seed's examples hard-code their port: a clash is a broken environment, not a pass.
    assert port_is_free(SEED_PORT), f"port {SEED_PORT}, which the seed's examples use, is taken"
    async with (
        asyncio.timeout(EXCHANGE),
        running(str(EXAMPLES / "server_example.py"), cwd=EXAMPLES) as server,
    ):
        await server.wait_line("正在启动服务器...")
        await server.wait_line(f"serving on ws://127.0.0.1:{SEED_PORT}")
        async with running(str(EXAMPLES / "client_example.py"), cwd=EXAMPLES) as client:
            await client.wait_line("已成功连接到服务器。")
            # The client's echo request, answered.
            await server.wait_line("的请求: echo")
            await client.wait_line("<- 收到 echo 响应: {'message': 'Hello, World!'}")
            # On connect the server asked the client for its status and got it.
            await client.wait_line("<- 收到来自服务器的请求: get_status")
            await server.wait_line("的状态: {'status': 'running', 'players': 5}")
            # The client's player_update event reached the server.
            await client.wait_line("事件已发送。")
            await server.wait_line("的事件: player_update")
            await client.wait_line("客户端正在运行。按 Ctrl+C 停止。")

            client.interrupt()
            assert await client.wait_exit() == 0, client.output()
            await client.wait_line("客户端已被用户停止。")
        await server.wait_line("-> 客户端已断开")
        server.interrupt()
        assert await server.wait_exit() == 0, server.output()
        await server.wait_line("服务器正在关闭。")
        for child in (server, client):
            assert "Traceback" not in child.text("stderr"), child.output()
            assert "ERROR" not in child.text("stderr"), child.output()
