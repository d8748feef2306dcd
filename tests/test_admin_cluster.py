"""The dashboard of a cluster: three node processes over one real redis-server (issue 15).

Each node publishes its figures on the backplane once a tick; the page of any node lists all
three, and marks one that was killed (SIGKILL: no goodbye) down within 5 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from .admin_support import READ_KEY, apply_patch, bearer
from .conftest import Node, deployment, wait_for
from .redis_server import RedisServer
from .test_dashboard_browser import HAVE_BROWSER, browser, shot, wait
from .test_dashboard_browser import log_in as browser_log_in

__all__ = ["browser"]  # the fixture, shared with the browser tests


@pytest.fixture
async def nodes(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[list[Node]]:
    async with deployment("tests.admin_node", redis_server.url, redis_prefix) as started:
        yield started


async def test_every_node_is_listed_and_a_killed_one_is_marked_down_within_5_s(
    nodes: list[Node],
) -> None:
    first, _, doomed = nodes
    async with (
        aiohttp.ClientSession(headers=bearer(READ_KEY)) as http,
        http.ws_connect(f"http://127.0.0.1:{first.port}/admin/feed") as feed,
    ):
        doc: dict[str, Any] = orjson.loads((await wait_for(feed.receive())).data)["doc"]

        async def until(predicate: Any, timeout: float) -> None:
            # Each tick of the node's feed (once a second) is an event to look at.
            nonlocal doc
            async with asyncio.timeout(timeout):
                while not predicate(doc):
                    message = orjson.loads((await feed.receive()).data)
                    if message["type"] == "tick":
                        doc = apply_patch(doc, message["patch"])

        def addresses(doc: dict[str, Any], up: bool) -> set[str]:
            return {n["address"] for n in doc.get("nodes", {}).values() if n["up"] is up}

        every = {f"127.0.0.1:{node.port}" for node in nodes}
        await until(lambda d: addresses(d, True) == every, 15)
        async with http.get(f"http://127.0.0.1:{first.port}/admin/api/stats") as reply:
            stats = await reply.json()
        assert {n["address"] for n in stats["nodes"].values()} == every
        assert all(n["up"] for n in stats["nodes"].values())
        assert all("backplane" in n for n in stats["nodes"].values())

        killed_at = time.monotonic()
        doomed.kill()
        gone = {f"127.0.0.1:{doomed.port}"}
        await until(lambda d: addresses(d, False) == gone, 5.0)
        took = time.monotonic() - killed_at
        assert addresses(doc, True) == every - gone
        print(f"a killed node was marked down after {took:.2f} s")


@pytest.mark.skipif(not HAVE_BROWSER, reason="needs Debian's chromium and chromium-driver")
async def test_the_page_lists_the_nodes_and_marks_a_killed_one_down(
    nodes: list[Node], browser: WebDriver
) -> None:
    # The node processes serve on their own: this test's loop may block in WebDriver calls.
    first, _, doomed = nodes
    browser_log_in(browser, f"http://127.0.0.1:{first.port}", READ_KEY)

    def states(b: WebDriver) -> dict[str, str]:
        # Read in one script: the table is redrawn each second, its cells go stale between
        # two WebDriver calls.
        rows = b.execute_script(
            "return [...document.querySelectorAll('#nodes-body tr')]"
            ".map((tr) => [tr.cells[1].textContent, tr.cells[2].textContent]);"
        )
        return {address: state for address, state in rows}

    every = {f"127.0.0.1:{node.port}": "up" for node in nodes}
    wait(browser, lambda b: states(b) == every, "the three nodes never showed up")
    shot(browser, "dashboard-cluster")
    killed_at = time.monotonic()
    doomed.kill()
    down = {**every, f"127.0.0.1:{doomed.port}": "down"}
    wait(browser, lambda b: states(b) == down, "the killed node was never marked down", 5.0)
    took = time.monotonic() - killed_at
    shot(browser, "dashboard-cluster-down")
    print(f"the page marked a killed node down after {took:.2f} s")
    assert took < 5.0
