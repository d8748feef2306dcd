"""``siyi conformance``: run the conformance suite against a server, print a table, write JUnit."""

from __future__ import annotations

import argparse
import logging

from ..conformance import (
    Outcome,
    Target,
    load_expected_failures,
    run_suite,
    select_cases,
)
from ..conformance.reference import make_keys
from ..wire import DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_UPLOAD_SIZE
from .common import EXIT_ERROR_RESPONSE, EXIT_NO_ANSWER, EXIT_OK, emit, tell

__all__ = ["add_conformance_parser", "announce_reference", "reference_keys", "run_conformance"]


def add_conformance_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``conformance`` subcommand to the ``siyi`` parser."""
    parser = commands.add_parser(
        "conformance",
        help="check that a server speaks the siyi protocol (PROTOCOL.md §1–§11)",
        description="Run the conformance suite against the server at URL, which must serve "
        "the reference command set (siyi serve --conformance does). Prints one row per case. "
        "Exit code: 0 every case passed (or failed as --expected-failures says), 1 a case "
        "failed unexpectedly or an expected failure passed, 2 bad usage.",
    )
    parser.add_argument("url", metavar="URL", help="the server: http://HOST:PORT[/PREFIX] or ws://")
    parser.add_argument("--key", help="the key of a principal, sent as 'Authorization: Bearer KEY'")
    parser.add_argument(
        "--key2",
        help="the key of a second principal (the ownership cases need it; skipped without)",
    )
    parser.add_argument("--junit", metavar="FILE", help="write the results as JUnit XML to FILE")
    parser.add_argument(
        "--expected-failures",
        metavar="FILE",
        help="the cases known to fail, one name per line ('#' comments): their failure is "
        "'xfail', their passing an error (XPASS)",
    )
    parser.add_argument(
        "--case",
        dest="cases",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run only the cases matching PATTERN (a prefix such as s7. or a glob); repeatable",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and their rules")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="the bound on each wait for an answer (5)",
    )
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help="the server's packet size limit (%(default)s)",
    )
    parser.add_argument(
        "--max-upload-size",
        type=int,
        default=DEFAULT_MAX_UPLOAD_SIZE,
        metavar="BYTES",
        help="the server's upload size limit (%(default)s)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        metavar="N",
        help="the server's bound on requests in flight from one connection (%(default)s; 0: "
        "unknown, its case is skipped)",
    )
    parser.set_defaults(run=run_conformance, log_level=logging.WARNING)


async def run_conformance(args: argparse.Namespace) -> int:
    """Run ``siyi conformance``.

    Returns:
        `EXIT_OK` when the run matches the baseline, `EXIT_ERROR_RESPONSE` (1) on an unexpected
        failure or an expected failure that passed, `EXIT_NO_ANSWER` (2) for bad usage.
    """
    cases = select_cases(args.cases)
    if not cases:
        tell(args, f"no case matches {', '.join(args.cases)}")
        return EXIT_NO_ANSWER
    if args.list:
        width = max(len(case.name) for case in cases)
        for case in cases:
            emit(f"{case.name:<{width}}  {case.rule}")
        return EXIT_OK
    expected: set[str] = set()
    if args.expected_failures:
        try:
            expected = load_expected_failures(args.expected_failures)
        except OSError as exc:
            tell(args, f"--expected-failures: cannot read {args.expected_failures}: {exc}")
            return EXIT_NO_ANSWER
    try:
        target = Target(
            args.url,
            key=args.key,
            key2=args.key2,
            timeout=args.timeout,
            max_message_size=args.max_message_size,
            max_upload_size=args.max_upload_size,
            max_in_flight=args.max_in_flight,
        )
    except ValueError as exc:
        tell(args, str(exc))
        return EXIT_NO_ANSWER
    report = await run_suite(target, cases, expected_failures=expected)
    for line in report.table():
        emit(line)
    for name in report.unknown_expected:
        tell(args, f"--expected-failures names {name!r}, which is no case of this suite")
    if args.junit:
        try:
            report.write_junit(args.junit)
        except OSError as exc:
            tell(args, f"--junit: cannot write {args.junit}: {exc}")
            return EXIT_NO_ANSWER
    for result in report.results:
        if result.outcome is Outcome.XPASS:
            tell(args, f"{result.name} passed but is listed in --expected-failures")
    if not report.ok:
        return EXIT_ERROR_RESPONSE
    return EXIT_OK


def reference_keys(given: list[str] | None) -> dict[str, str]:
    """The principals of ``siyi serve --conformance``: ``alice`` and ``bob`` and their keys.

    Args:
        given: the ``--conformance-key`` values: none (two random keys are made) or two.

    Raises:
        ValueError: not exactly two different keys were given.
    """
    if not given:
        first, second = make_keys()
    elif len(given) != 2 or given[0] == given[1] or not all(given):
        raise ValueError("give it twice, with two different keys (one per principal)")
    else:
        first, second = given
    return {"alice": first, "bob": second}


def announce_reference(url: str, keys: dict[str, str]) -> None:
    """Print the keys of ``siyi serve --conformance`` and the command that tests it."""
    first, second = keys.values()
    emit(f"principals: alice (key {first}), bob (key {second})")
    emit(f"test it with: siyi conformance {url} --key {first} --key2 {second}")
