"""``siyi codegen URL -o FILE``: write a typed client module from a live server's AsyncAPI."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from ..codegen import CodegenUnavailableError, generate_client
from .common import EXIT_ERROR_RESPONSE, EXIT_NO_ANSWER, EXIT_OK, emit, tell
from .describe import DescriptionError, fetch_description

__all__ = ["add_codegen_parser", "run_codegen"]


async def run_codegen(args: argparse.Namespace) -> int:
    """Fetch the document, generate the module, write it to ``--output`` (or stdout).

    Returns:
        0 written; 1 the server refused or its document is not a siyi server's; 2 no answer,
        or the ``codegen`` extra is missing.
    """
    try:
        document = await fetch_description(args, "asyncapi")
    except DescriptionError as exc:
        tell(args, str(exc))
        return exc.exit_code
    try:
        source = generate_client(document, api_name=args.api_name)
    except CodegenUnavailableError as exc:
        tell(args, str(exc))
        return EXIT_NO_ANSWER
    except (KeyError, TypeError, ValueError) as exc:
        tell(args, f"cannot generate a client from this document: {exc!r}")
        return EXIT_ERROR_RESPONSE
    if args.output in (None, "-"):
        emit(source.rstrip("\n"))
        return EXIT_OK
    try:
        _write(args.output, source)
    except OSError as exc:
        tell(args, f"cannot write {args.output}: {exc.strerror or exc}")
        return EXIT_NO_ANSWER
    tell(args, f"wrote {args.output}")
    return EXIT_OK


def _write(path: str, source: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        file.write(source)


def add_codegen_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``siyi codegen`` to the subcommands.

    Args:
        commands: the subparsers of ``siyi``.
        connection_options: adds ``--timeout``, ``--key`` and ``--cafile`` to a parser.
    """
    parser = commands.add_parser(
        "codegen",
        help="write a typed client module from a live server's AsyncAPI document",
        description="Fetch the server's AsyncAPI document and write a Python module with a "
        "Command class per command, an EventModel per event and an Api subclass with one typed "
        "method per command (streams as async iterators). Needs the codegen extra "
        "(pip install 'siyi-sdk[codegen]'). Exit code: 0 written, 1 refused, 2 no answer.",
    )
    parser.add_argument(
        "url",
        metavar="URL",
        help="the server: http://HOST:PORT or ws://HOST:PORT (with its mount prefix, if any)",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="the module to write, e.g. game_client.py (default: stdout)",
    )
    parser.add_argument(
        "--api-name",
        default="GeneratedApi",
        metavar="NAME",
        help="the name of the generated Api subclass (GeneratedApi)",
    )
    connection_options(parser)
    parser.set_defaults(run=run_codegen, log_level=logging.WARNING)
