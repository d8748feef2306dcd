"""``siyi stats URL --key K`` and ``siyi serve --admin-key``: the dashboard on the command line."""

from __future__ import annotations

import json
import re

from siyi_sdk import ProtocolClient

from .admin_support import OPERATOR_KEY, READ_KEY, dashboard, dashboard_server
from .test_cli import running, siyi


async def test_siyi_stats_prints_the_figures_of_a_server() -> None:
    async with dashboard_server() as server:
        async with ProtocolClient(f"ws://127.0.0.1:{server.port}") as client:
            for n in range(12):
                await client.send_request("echo", {"n": n})
            await dashboard(server).tick()
            url = f"http://127.0.0.1:{server.port}"
            code, out, _ = await siyi("stats", url, "--key", READ_KEY, "--json")
            assert code == 0
            stats = json.loads(out)
            assert stats["commands"]["echo"]["count"] == 12
            assert stats["node"]["connections"]["websocket"] == 1
            code, out, _ = await siyi("stats", url, "--key", READ_KEY)
            assert code == 0
            lines = out.splitlines()
            assert lines[0].split()[:3] == ["node", "address", "state"]
            assert re.search(rf"127\.0\.0\.1:{server.port}\s+up\s+1\s", lines[1])
            assert any(line.split()[:1] == ["echo"] and "12" in line.split() for line in lines)
        code, _, child = await siyi("stats", url, "--key", "not-a-key")
        assert code == 1
        assert "401" in child.text("stderr")
        code, _, child = await siyi("stats", url, "--key", READ_KEY, "--admin-path", "/nope")
        assert code == 1
        port = server.port
    code, _, child = await siyi("stats", f"http://127.0.0.1:{port}", "--key", READ_KEY)
    assert code == 2
    assert "no answer" in child.text("stderr")


async def test_siyi_serve_serves_the_dashboard_with_its_keys() -> None:
    async with running(
        "-m",
        "siyi_sdk",
        "serve",
        "--port",
        "0",
        "--admin-key",
        READ_KEY,
        "--admin-operator-key",
        OPERATOR_KEY,
    ) as server:
        line = await server.wait_line("the dashboard at http://", "stdout")
        base = line.split("the dashboard at ")[1].removesuffix("/admin/").strip()
        code, out, _ = await siyi("stats", base, "--key", OPERATOR_KEY, "--json")
        assert code == 0
        assert json.loads(out)["node"]["version"]
    async with running("-m", "siyi_sdk", "serve", "--port", "0", "--admin-key", "short") as bad:
        assert await bad.wait_exit() == 2
        assert "8 characters" in bad.text("stderr")
