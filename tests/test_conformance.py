"""The conformance suite (`siyi conformance`) against siyi's server and against plain aiohttp ones.

siyi's own server must pass every case in its three shapes (standalone, mounted in an aiohttp
application, two nodes over Redis). A server written with plain aiohttp (tests/plain_server.py)
passes too, which proves the suite needs nothing of siyi's server; each deliberate flaw of that
server fails the cases of its rule, by name, and no other.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from siyi_sdk.cli import main
from siyi_sdk.conformance import CASES, Outcome, Report, Target, run_suite
from siyi_sdk.conformance.reference import create_reference_server
from siyi_sdk.server.redis_backplane import RedisBackplane

from .plain_server import KEYS, UPLOAD_LIMIT, Flaws, PlainServer
from .redis_server import RedisServer

ALICE, BOB = "key-alice", "key-bob"
REFERENCE_KEYS = {principal: key for key, principal in KEYS.items()}
PACKAGE = Path(__file__).resolve().parent.parent / "siyi_sdk" / "conformance"


def failed(report: Report) -> set[str]:
    return {result.name for result in report.results if result.outcome is Outcome.FAIL}


def assert_all_pass(report: Report) -> None:
    bad = [
        f"{r.name}: {r.outcome.value} {r.reason}"
        for r in report.results
        if r.outcome is not Outcome.PASS
    ]
    assert not bad, "\n".join(bad)
    assert len(report.results) == len(CASES)


async def run_against(url: str, timeout: float = 2.0, **kwargs: object) -> Report:
    target = Target(url, key=ALICE, key2=BOB, timeout=timeout, **kwargs)  # type: ignore[arg-type]
    return await run_suite(target)


# siyi's own server, three shapes --------------------------------------------------------------


async def test_siyi_server_standalone_passes_every_case() -> None:
    server = create_reference_server(
        port=0, keys=REFERENCE_KEYS, heartbeat_interval=0.5, shutdown_timeout=1.0
    )
    async with server:
        assert_all_pass(await run_against(f"http://127.0.0.1:{server.port}"))


@contextlib.asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        await runner.cleanup()


async def test_siyi_server_mounted_passes_every_case() -> None:
    app = web.Application()
    server = create_reference_server(
        port=0, keys=REFERENCE_KEYS, heartbeat_interval=0.5, shutdown_timeout=1.0
    )
    server.attach(app, prefix="/siyi")
    async with running(app) as port:
        # A ws:// URL with a path: the suite derives every endpoint from it.
        assert_all_pass(await run_against(f"ws://127.0.0.1:{port}/siyi"))


async def test_siyi_server_two_nodes_over_redis_pass_every_case(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    nodes = [
        create_reference_server(
            port=0,
            keys=REFERENCE_KEYS,
            heartbeat_interval=0.5,
            shutdown_timeout=1.0,
            backplane=RedisBackplane(redis_server.url, prefix=redis_prefix),
        )
        for _ in range(2)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node)
        # The reference commands keep their state in their process: each node is tested
        # whole, while sessions, buffers and the at-most-once record live in Redis.
        for node in nodes:
            assert_all_pass(await run_against(f"http://127.0.0.1:{node.port}"))


# A server with no siyi code, and its flaws ----------------------------------------------------


async def test_plain_aiohttp_server_passes_every_case() -> None:
    async with PlainServer().serving() as url:
        assert_all_pass(await run_against(url, max_upload_size=UPLOAD_LIMIT))


@pytest.mark.parametrize(
    ("flaw", "cases"),
    [
        ("no_code_on_ok", {"s2.response_has_code", "s2.http_response_has_code"}),
        (
            "runs_repeats",
            {
                "s6.at_most_once_same_transport",
                "s6.at_most_once_across_transports",
                "s6.repeat_while_running_waits",
                "s6.finishes_after_drop",
                # Its repeat of a cancelled id runs again instead of answering 499.
                "s10.cancel_websocket",
            },
        ),
        ("ignores_cancel", {"s10.cancel_websocket", "s10.cancel_http", "s10.stream_cancel"}),
        ("loses_buffer_on_resume", {"s7.replay_after_reconnect"}),
        ("shares_sessions", {"s7.session_owned_by_principal"}),
        ("keeps_session_on_close", {"s7.clean_close_ends_session"}),
        ("no_in_flight_bound", {"s4.in_flight_bound"}),
        ("accepts_key_in_query", {"s7.key_in_query_refused"}),
    ],
)
async def test_a_broken_server_fails_the_case_of_its_rule(flaw: str, cases: set[str]) -> None:
    async with PlainServer(Flaws(**{flaw: True})).serving() as url:
        report = await run_against(url, timeout=1.0, max_upload_size=UPLOAD_LIMIT)
    assert failed(report) == cases
    assert {r.outcome for r in report.results} == {Outcome.PASS, Outcome.FAIL}


# The command line: the table, the baseline, JUnit ---------------------------------------------


async def siyi(*argv: str) -> int:
    # main() runs its own event loop: give it a thread while this loop serves.
    return await asyncio.to_thread(main, list(argv))


async def test_expected_failure_that_fails_is_fine_one_that_passes_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = tmp_path / "expected.txt"
    junit = tmp_path / "junit.xml"
    async with PlainServer(Flaws(loses_buffer_on_resume=True)).serving() as url:
        common = [url, "--key", ALICE, "--key2", BOB, "--timeout", "1", "--case", "s7."]
        assert await siyi("conformance", *common) == 1
        table = capsys.readouterr().out
        assert "s7.replay_after_reconnect" in table
        assert "FAIL" in table

        baseline.write_text("# known\ns7.replay_after_reconnect  # loses the buffer\n\n")
        code = await siyi(
            "conformance", *common, "--expected-failures", str(baseline), "--junit", str(junit)
        )
        assert code == 0
        assert "xfail" in capsys.readouterr().out

        # The baseline lists a case that passes: it is out of date, and the run says so.
        baseline.write_text("s7.replay_after_reconnect\ns7.takeover_closes_4001\n")
        code = await siyi(
            "conformance", *common, "--expected-failures", str(baseline), "--junit", str(junit)
        )
        assert code == 1
        out = capsys.readouterr()
        assert "XPASS" in out.out
        assert "s7.takeover_closes_4001 passed but is listed" in out.err

    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    cases = {case.get("name", ""): case for case in suite.iter("testcase")}
    s7 = [name for name in CASES if name.startswith("s7.")]
    assert sorted(cases) == sorted(s7)
    assert suite.get("tests") == str(len(s7))
    assert suite.get("failures") == "1"
    assert cases["s7.takeover_closes_4001"].find("failure") is not None
    skipped = cases["s7.replay_after_reconnect"].find("skipped")
    assert skipped is not None
    assert "expected failure" in (skipped.get("message") or "")
    assert cases["s7.session_event_first"].find("failure") is None


async def test_list_and_an_unknown_case_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    assert await siyi("conformance", "http://127.0.0.1:1", "--list") == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(CASES)
    assert await siyi("conformance", "http://127.0.0.1:1", "--case", "s99.") == 2


async def test_skips_without_keys(capsys: pytest.CaptureFixture[str]) -> None:
    server = create_reference_server(port=0, heartbeat_interval=0.5, shutdown_timeout=1.0)
    async with server:
        report = await run_suite(Target(f"http://127.0.0.1:{server.port}", timeout=2.0))
    skipped = {r.name for r in report.results if r.outcome is Outcome.SKIP}
    assert skipped == {name for name, case in CASES.items() if case.needs_key or case.needs_key2}
    assert report.ok


async def test_an_unknown_in_flight_bound_skips_its_case() -> None:
    # --max-in-flight 0: the suite cannot know the bound, so it does not guess one.
    report = await run_suite(
        Target("http://127.0.0.1:1", max_in_flight=0), [CASES["s4.in_flight_bound"]]
    )
    assert [r.outcome for r in report.results] == [Outcome.SKIP]


def test_cases_run_in_section_order_and_the_readme_counts_them() -> None:
    sections = [int(case.section.removeprefix("s")) for case in CASES.values()]
    assert sections == sorted(sections)
    readme = (PACKAGE.parent.parent / "README.md").read_text(encoding="utf-8")
    assert f"suite of {len(CASES)} named cases" in readme


def test_the_suite_imports_nothing_of_siyi_but_itself() -> None:
    for module in ("probe", "registry", "cases", "cases_more", "runner", "__init__"):
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                # Relative imports stay inside the package (level 1); nothing reaches up.
                assert node.level <= 1, f"{module}: from {'.' * node.level}{node.module}"
                assert node.level == 1 or not (node.module or "").startswith("siyi_sdk")
                assert node.module != "reference", f"{module} imports the reference server"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("siyi_sdk") for a in node.names)
