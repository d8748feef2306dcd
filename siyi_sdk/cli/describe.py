"""``siyi describe URL``: print a server's description, its AsyncAPI document or its ``/about``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

import orjson

from ..server.asyncapi import ASYNCAPI_PATH
from .common import (
    EXIT_ERROR_RESPONSE,
    EXIT_NO_ANSWER,
    EXIT_OK,
    NoAnswerError,
    emit,
    get_once,
    http_url,
    tell,
)

__all__ = ["DescriptionError", "add_describe_parser", "fetch_description", "run_describe"]

_PATHS = {"asyncapi": ASYNCAPI_PATH, "about": "/about"}


class DescriptionError(Exception):
    """The description could not be had.

    Attributes:
        exit_code: what the command exits with (`EXIT_ERROR_RESPONSE` when the server
            refused, `EXIT_NO_ANSWER` when it could not be reached).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def description_url(url: str, kind: str) -> str:
    """Where a server at `url` (``ws://``, ``http://``, ... with its mount prefix) serves `kind`.

    Args:
        url: the server's URL, as ``siyi call`` takes it.
        kind: ``asyncapi`` or ``about``.

    Raises:
        ValueError: the URL's scheme is none of ws, wss, http, https.
    """
    return http_url(url, _PATHS[kind])


async def fetch_description(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """GET the server's AsyncAPI document (``kind="asyncapi"``) or its ``/about``.

    Args:
        args: the parsed arguments (``url``, ``key``, ``timeout``, ``tls``).
        kind: ``asyncapi`` or ``about``.

    Raises:
        DescriptionError: the server refused (401 without the right ``--key``), answered
            something else than a JSON object, or could not be reached.
    """
    try:
        target = description_url(args.url, kind)
    except ValueError as exc:
        raise DescriptionError(str(exc), EXIT_NO_ANSWER) from None
    try:
        status, body = await get_once(args, target)
    except NoAnswerError as exc:
        raise DescriptionError(str(exc), EXIT_NO_ANSWER) from None
    if status == 401:
        raise DescriptionError(
            "the server refused the key (HTTP 401): pass the right one with --key",
            EXIT_ERROR_RESPONSE,
        )
    if status != 200:
        raise DescriptionError(
            f"{target} answered HTTP {status}: is it a siyi server?", EXIT_ERROR_RESPONSE
        )
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if not isinstance(document, dict):
        raise DescriptionError(f"{target} answered no JSON object", EXIT_ERROR_RESPONSE)
    return document


async def run_describe(args: argparse.Namespace) -> int:
    """Print the description as indented JSON with its keys sorted (the same bytes each time).

    Returns:
        0 printed; 1 the server refused or answered no description; 2 no answer.
    """
    try:
        document = await fetch_description(args, args.format)
    except DescriptionError as exc:
        tell(args, str(exc))
        return exc.exit_code
    emit(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    return EXIT_OK


def add_describe_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``siyi describe`` to the subcommands.

    Args:
        commands: the subparsers of ``siyi``.
        connection_options: adds ``--timeout``, ``--key`` and ``--cafile`` to a parser.
    """
    parser = commands.add_parser(
        "describe",
        help="print a server's API: its AsyncAPI document, or its /about",
        description="Print the server's description as indented JSON with sorted keys: its "
        "AsyncAPI 3.0 document (GET /asyncapi.json) or its /about. A server with a key gives "
        "either only to a caller with it (--key). Exit code: 0 printed, 1 refused, 2 no answer.",
    )
    parser.add_argument(
        "url",
        metavar="URL",
        help="the server: http://HOST:PORT or ws://HOST:PORT (with its mount prefix, if any)",
    )
    parser.add_argument(
        "--format",
        choices=tuple(_PATHS),
        default="asyncapi",
        help="asyncapi: the AsyncAPI 3.0 document; about: the /about description (asyncapi)",
    )
    connection_options(parser)
    parser.set_defaults(run=run_describe, log_level=logging.WARNING)
