"""The dashboard in a real browser: Debian's headless Chromium, driven through chromedriver.

The server runs on an event loop of its own thread (`ServerThread`), clients too; the test
thread drives the browser. Every wait is a bounded `WebDriverWait` on what the page shows.
Screenshots of the main views are saved under ``tests/artifacts/`` (their paths are printed);
with ``SIYI_DOCS_SCREENSHOT=1`` the commands view, after a minute of traffic, also replaces
``docs/dashboard.png`` (the README's).
Both binaries come from the system (``scripts/_chromium`` installs them): Selenium is given
their paths, so its Selenium Manager never runs and nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from siyi_sdk import ProtocolClient

from .admin_support import OPERATOR_KEY, READ_KEY, ServerThread

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DOCS_IMAGE = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
WAIT = 15.0
"""The bound on each wait for the page: the feed updates once a second."""

HAVE_BROWSER = os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)

pytestmark = pytest.mark.skipif(
    not HAVE_BROWSER,
    reason="needs Debian's chromium and chromium-driver (scripts/_chromium installs them)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    os.environ.setdefault("SE_OFFLINE", "true")  # belt and braces: never fetch a driver
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1300",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def node(browser: WebDriver) -> Iterator[ServerThread]:
    thread = ServerThread()
    try:
        yield thread
    finally:
        browser.delete_all_cookies()
        browser.get("about:blank")
        thread.close()


def shot(browser: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def wait(browser: WebDriver, condition: Any, message: str, timeout: float = WAIT) -> Any:
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(
        lambda driver: condition(driver), message
    )


def text_of(browser: WebDriver, css: str) -> str:
    try:
        return str(browser.find_element(By.CSS_SELECTOR, css).text)
    except WebDriverException:
        return ""


def click(browser: WebDriver, css: str) -> bool:
    """Click what `css` finds; False if it went stale first (its table was redrawn)."""
    try:
        browser.find_element(By.CSS_SELECTOR, css).click()
    except WebDriverException:
        return False
    return True


def log_in(browser: WebDriver, node: ServerThread | str, key: str) -> None:
    """Log in through the form of `node`'s page (a `ServerThread`, or a base URL)."""
    browser.get((node if isinstance(node, str) else node.base) + "/admin/")
    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.ID, "login-button").click()
    wait(browser, lambda b: text_of(b, "#feed-state") == "live", "the feed never went live")


class Clients:
    """ProtocolClients on the server's loop."""

    def __init__(self, node: ServerThread) -> None:
        self.node = node
        self.open: list[ProtocolClient] = []

    def connect(self) -> ProtocolClient:
        async def connect() -> ProtocolClient:
            client = ProtocolClient(f"ws://127.0.0.1:{self.node.server.port}")
            await client.__aenter__()
            return client

        client: ProtocolClient = self.node.run(connect())
        self.open.append(client)
        return client

    def close(self, client: ProtocolClient) -> None:
        self.node.run(client.__aexit__(None, None, None))
        self.open.remove(client)

    def close_all(self) -> None:
        for client in list(self.open):
            self.close(client)


def test_log_in_and_watch_the_connections_come_and_go(
    browser: WebDriver, node: ServerThread
) -> None:
    log_in(browser, node, OPERATOR_KEY)
    cookie = browser.get_cookie("siyi_admin")
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    wait(browser, lambda b: text_of(b, "#conn-websocket") == "0", "no connection count")
    clients = Clients(node)
    try:
        first, _ = clients.connect(), clients.connect()
        wait(browser, lambda b: text_of(b, "#conn-websocket") == "2", "2 never showed")
        rows = browser.find_elements(By.CSS_SELECTOR, "#sessions-body tr")
        assert len(rows) == 2
        # The page names each session by its tag, never by its key.
        page = browser.page_source
        for session in node.server.sessions:
            assert session.log_session in page
            assert session.session not in page
        shot(browser, "dashboard-connections")
        clients.close(first)
        wait(browser, lambda b: text_of(b, "#conn-websocket") == "1", "1 never showed")
        wait(
            browser,
            lambda b: len(b.find_elements(By.CSS_SELECTOR, "#sessions-body tr")) == 1,
            "the closed session stayed in the table",
        )
    finally:
        clients.close_all()


def test_a_commands_rate_and_latency_move_under_traffic(
    browser: WebDriver, node: ServerThread
) -> None:
    log_in(browser, node, READ_KEY)
    clients = Clients(node)
    client = clients.connect()
    stop = asyncio.Event()

    async def traffic() -> None:
        # Until the page showed what it must: a few hundred calls a second, a few failing.
        n = 0
        while not stop.is_set():
            await asyncio.gather(
                *(client.send_request("slow", {"delay": 0.004}) for _ in range(8)),
                client.send_request("echo", {"n": n}),
            )
            if n % 10 == 0:
                await client.send_request("fail", {})
            n += 1

    running = asyncio.run_coroutine_threadsafe(traffic(), node.loop)
    try:
        wait(browser, lambda b: b.find_elements(By.ID, "cmd-slow"), "slow never appeared")

        def moving(b: WebDriver) -> bool:
            rate = text_of(b, "#cmd-slow .rate").replace(",", "")
            p50 = text_of(b, "#cmd-slow .p50")
            return bool(rate) and float(rate) > 10 and p50 not in ("", "–") and float(p50) >= 4

        wait(browser, moving, "the rate and the latency of 'slow' never moved")
        wait(
            browser,
            lambda b: text_of(b, "#cmd-fail .error-rate") not in ("", "–", "0"),
            "no errors",
        )
        first = float(text_of(browser, "#cmd-slow .count").replace(",", ""))
        wait(
            browser,
            lambda b: float(text_of(b, "#cmd-slow .count").replace(",", "") or 0) > first,
            "the count stood still",
        )
        if os.environ.get("SIYI_DOCS_SCREENSHOT"):
            # The README's picture (docs/dashboard.png): a minute of traffic on its charts.
            # Only when asked, so that a test run leaves the tree as it was.
            ticks = int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-ticks") or 0)
            WebDriverWait(browser, 90, poll_frequency=0.5).until(
                lambda b: (
                    int(b.find_element(By.TAG_NAME, "body").get_attribute("data-ticks") or 0)
                    > ticks + 60
                )
            )
        path = shot(browser, "dashboard-commands")
        if os.environ.get("SIYI_DOCS_SCREENSHOT"):
            shutil.copyfile(path, DOCS_IMAGE)
    finally:
        node.loop.call_soon_threadsafe(stop.set)
        running.result(WAIT)
        clients.close_all()


def test_page_through_ten_thousand_sessions(browser: WebDriver, node: ServerThread) -> None:
    async def fill() -> None:
        # In process, through the server's own registry: 10,000 sessions whose clients are
        # away (the table shows them like any other).
        for n in range(10_000):
            node.server.sessions.open(f"user-{n:05d}", ("10.1.0.1", 20_000 + n % 40_000), {})

    node.run(fill())
    log_in(browser, node, READ_KEY)
    wait(
        browser,
        lambda b: text_of(b, "#page-info") == "page 1 of 200 (10,000 sessions)",
        "the first page never showed",
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#sessions-body tr")) == 50
    shot(browser, "dashboard-sessions")
    timings = []
    for page in (2, 3):
        started = time.monotonic()
        browser.find_element(By.ID, "page-next").click()
        wait(
            browser,
            lambda b, page=page: text_of(b, "#page-info").startswith(f"page {page} of 200"),
            f"page {page} never showed",
        )
        timings.append(time.monotonic() - started)
    first_row = browser.find_element(By.CSS_SELECTOR, "#sessions-body tr td:nth-child(3)").text
    assert first_row == "user-00100"
    started = time.monotonic()
    browser.find_element(By.ID, "session-search").send_keys("user-09999")
    wait(
        browser,
        lambda b: text_of(b, "#page-info") == "page 1 of 1 (1 sessions)",
        "the search found nothing",
    )
    timings.append(time.monotonic() - started)
    # Responsive: a page or a search shows within a second or two at 10,000 sessions (the
    # search waits 0.2 s for the typing to stop; a busy test machine adds its share).
    assert max(timings) < 2.0, timings
    print(f"paging and searching 10,000 sessions: {[round(t, 3) for t in timings]} s")


def test_an_operator_ends_a_session_and_its_client_drops(
    browser: WebDriver, node: ServerThread
) -> None:
    log_in(browser, node, OPERATOR_KEY)

    async def connect() -> aiohttp.ClientWebSocketResponse:
        # A bare WebSocket: it does not reconnect, so its drop is what the test sees.
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(f"ws://127.0.0.1:{node.server.port}/")
        await ws.receive()  # the session event
        ws._test_http = http  # type: ignore[attr-defined]  # closed with it below
        return ws

    async def closed(ws: aiohttp.ClientWebSocketResponse) -> Any:
        # The code the server's close frame carried (aiohttp's close_code is the socket's end).
        while (message := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
            pass
        await ws._test_http.close()  # type: ignore[attr-defined]
        return message.data

    ws = node.run(connect())
    session = node.server.connections[0]
    tag = session.log_session
    wait(browser, lambda b: text_of(b, "#conn-websocket") == "1", "the client never showed")
    end = f'button.act-end[data-id="{tag}"]'
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, end), "no end button")
    shot(browser, "dashboard-operator")
    wait(browser, lambda b: click(b, end), "the end button could not be clicked")
    assert node.run(closed(ws)) == 1008
    wait(browser, lambda b: text_of(b, "#conn-websocket") == "0", "the count never fell")
    wait(browser, lambda b: text_of(b, "#action-result") == "done: end", "no acknowledgement")
    assert session.ended


def test_a_read_only_login_cannot_act(browser: WebDriver, node: ServerThread) -> None:
    clients = Clients(node)
    clients.connect()
    try:
        log_in(browser, node, READ_KEY)
        wait(
            browser,
            lambda b: len(b.find_elements(By.CSS_SELECTOR, "#sessions-body tr")) == 1,
            "no session row",
        )
        assert text_of(browser, "#role") == "read-only"
        assert browser.find_elements(By.CSS_SELECTOR, "button[class^=act-]") == []
        assert browser.find_elements(By.ID, "operator") == []
        tag = node.server.connections[0].log_session
        # The endpoint refuses it too, asked from the page itself with its CSRF token.
        status = browser.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            fetch("api/me").then((r) => r.json()).then((me) =>
              fetch("api/sessions/" + arguments[0] + "/end", {
                method: "POST", headers: {"X-Siyi-CSRF": me.csrf}, body: "{}",
              })).then((r) => done(r.status), (e) => done(String(e)));
            """,
            tag,
        )
        assert status == 403
        assert node.server.connections[0].is_connected
        shot(browser, "dashboard-read-only")
    finally:
        clients.close_all()


def test_a_wrong_key_is_refused(browser: WebDriver, node: ServerThread) -> None:
    browser.get(node.base + "/admin/")
    browser.find_element(By.ID, "key").send_keys("not-the-key")
    browser.find_element(By.ID, "login-button").click()
    wait(browser, lambda b: text_of(b, "#error") == "Wrong key.", "no refusal shown")
    assert browser.get_cookie("siyi_admin") is None
    assert browser.find_elements(By.ID, "conn-websocket") == []
    browser.get(node.base + "/admin/api/stats")
    assert "a dashboard key is needed" in browser.page_source
    shot(browser, "dashboard-wrong-key")
