"""Running the suite: results, the expected-failures baseline, the table and JUnit XML."""

from __future__ import annotations

import asyncio
import enum
import fnmatch
import logging
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .cases import REFERENCE_COMMANDS as _REFERENCE  # noqa: F401  (registers the cases)
from .cases_more import items_over as _more  # noqa: F401  (registers the cases)
from .probe import CaseFailedError, CaseSkippedError, Target
from .registry import CASES, Case

__all__ = [
    "CaseResult",
    "Outcome",
    "Report",
    "load_expected_failures",
    "run_suite",
    "select_cases",
]

logger = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """What became of one case."""

    PASS = "pass"
    FAIL = "FAIL"
    SKIP = "skip"
    XFAIL = "xfail"
    """It failed, as the expected-failures baseline says it does."""
    XPASS = "XPASS"
    """It passed, but the baseline says it fails: the baseline is out of date (an error)."""

    @property
    def bad(self) -> bool:
        """True for the outcomes that make the run fail."""
        return self in (Outcome.FAIL, Outcome.XPASS)


@dataclass(frozen=True)
class CaseResult:
    """The result of one case: its outcome, how long it took and why (for a failure or skip)."""

    case: Case
    outcome: Outcome
    seconds: float
    reason: str = ""

    @property
    def name(self) -> str:
        """The case's name."""
        return self.case.name


@dataclass(frozen=True)
class Report:
    """The results of a run, in the order the cases ran."""

    results: tuple[CaseResult, ...]
    unknown_expected: tuple[str, ...] = ()
    """Names in the expected-failures file that are no case of this suite."""

    @property
    def ok(self) -> bool:
        """True when no case failed unexpectedly and no expected failure passed."""
        return not any(result.outcome.bad for result in self.results)

    def count(self, outcome: Outcome) -> int:
        """How many cases had `outcome`."""
        return sum(1 for result in self.results if result.outcome is outcome)

    def table(self) -> list[str]:
        """The results as the lines of a table: case, result, time, reason."""
        width = max([len("case"), *(len(r.name) for r in self.results)])
        lines = [f"{'case':<{width}}  {'result':<6}  {'time':>7}  reason"]
        lines.append(f"{'-' * width}  {'-' * 6}  {'-' * 7}  {'-' * 6}")
        for result in self.results:
            lines.append(
                f"{result.name:<{width}}  {result.outcome.value:<6}  "
                f"{result.seconds:>6.2f}s  {result.reason}".rstrip()
            )
        total = sum(result.seconds for result in self.results)
        summary = ", ".join(
            f"{self.count(outcome)} {outcome.value.lower()}"
            for outcome in Outcome
            if self.count(outcome)
        )
        lines.append(f"{len(self.results)} cases in {total:.2f} s: {summary}")
        return lines

    def junit(self) -> ET.ElementTree[ET.Element]:
        """The results as JUnit XML (one ``testsuite``; an expected failure is a skip)."""
        suites = ET.Element("testsuites")
        suite = ET.SubElement(
            suites,
            "testsuite",
            name="siyi conformance",
            tests=str(len(self.results)),
            failures=str(sum(1 for r in self.results if r.outcome.bad)),
            errors="0",
            skipped=str(self.count(Outcome.SKIP) + self.count(Outcome.XFAIL)),
            time=f"{sum(r.seconds for r in self.results):.3f}",
        )
        for result in self.results:
            element = ET.SubElement(
                suite,
                "testcase",
                classname=f"conformance.{result.case.section}",
                name=result.name,
                time=f"{result.seconds:.3f}",
            )
            if result.outcome is Outcome.FAIL:
                ET.SubElement(element, "failure", message=result.reason).text = result.case.rule
            elif result.outcome is Outcome.XPASS:
                ET.SubElement(
                    element,
                    "failure",
                    message="listed as an expected failure, but it passed: "
                    "remove it from the expected-failures file",
                )
            elif result.outcome is Outcome.XFAIL:
                ET.SubElement(element, "skipped", message=f"expected failure: {result.reason}")
            elif result.outcome is Outcome.SKIP:
                ET.SubElement(element, "skipped", message=result.reason)
        ET.indent(suites)
        return ET.ElementTree(suites)

    def write_junit(self, path: str | Path) -> None:
        """Write `junit` to `path` (UTF-8, with an XML declaration)."""
        self.junit().write(path, encoding="utf-8", xml_declaration=True)


def load_expected_failures(path: str | Path) -> set[str]:
    """The case names of an expected-failures file: one per line, ``#`` starts a comment.

    Raises:
        OSError: the file cannot be read.
    """
    names = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.add(name)
    return names


def select_cases(patterns: Sequence[str] = ()) -> list[Case]:
    """The cases whose names match one of `patterns` (shell globs or prefixes); all if none."""
    if not patterns:
        return list(CASES.values())
    return [
        case
        for case in CASES.values()
        if any(
            fnmatch.fnmatchcase(case.name, pattern) or case.name.startswith(pattern)
            for pattern in patterns
        )
    ]


async def run_case(target: Target, case: Case, case_timeout: float) -> CaseResult:
    """Run one case under `case_timeout` seconds; what became of it."""
    start = time.monotonic()
    outcome, reason = Outcome.PASS, ""
    if case.needs_key and not target.key:
        outcome, reason = Outcome.SKIP, "needs a server with keys (--key)"
    elif case.needs_key2 and not (target.key and target.key2):
        outcome, reason = Outcome.SKIP, "needs two principals (--key and --key2)"
    else:
        try:
            async with asyncio.timeout(case_timeout):
                await case.run(target)
        except CaseFailedError as exc:
            outcome, reason = Outcome.FAIL, str(exc)
        except CaseSkippedError as exc:
            outcome, reason = Outcome.SKIP, str(exc)
        except TimeoutError:
            outcome, reason = Outcome.FAIL, f"the case did not end within {case_timeout:g} s"
        except aiohttp.WSServerHandshakeError as exc:
            outcome, reason = Outcome.FAIL, f"a WebSocket upgrade was refused: HTTP {exc.status}"
        except (aiohttp.ClientError, OSError) as exc:
            outcome, reason = Outcome.FAIL, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a server's answer the case did not foresee
            logger.debug("case %s raised", case.name, exc_info=True)
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            outcome, reason = (
                Outcome.FAIL,
                f"{type(exc).__name__}: {exc} (at line {frame.lineno})",
            )
    return CaseResult(case, outcome, time.monotonic() - start, reason.replace("\n", " "))


async def run_suite(
    target: Target,
    cases: Iterable[Case] | None = None,
    *,
    expected_failures: Iterable[str] = (),
    case_timeout: float | None = None,
) -> Report:
    """Run `cases` (default: all) one after another against `target`.

    Args:
        target: the server and its keys.
        cases: the cases to run, in order.
        expected_failures: names of cases known to fail: their failure is ``xfail``, and
            their passing is ``XPASS``, which fails the run (the baseline is out of date).
        case_timeout: the bound on one case, in seconds (default: 4 x ``target.timeout``).

    Returns:
        The report of the run.
    """
    chosen = list(CASES.values()) if cases is None else list(cases)
    expected = set(expected_failures)
    limit = case_timeout if case_timeout is not None else 4 * target.timeout
    results = []
    async with aiohttp.ClientSession() as http:
        target.http = http
        try:
            for case in chosen:
                result = await run_case(target, case, limit)
                if case.name in expected:
                    if result.outcome is Outcome.PASS:
                        result = CaseResult(
                            case,
                            Outcome.XPASS,
                            result.seconds,
                            "expected to fail, but passed: update the expected-failures file",
                        )
                    elif result.outcome is Outcome.FAIL:
                        result = CaseResult(case, Outcome.XFAIL, result.seconds, result.reason)
                logger.debug("%s: %s %s", case.name, result.outcome.value, result.reason)
                results.append(result)
        finally:
            target.http = None
    unknown = tuple(sorted(expected - set(CASES)))
    return Report(tuple(results), unknown)
