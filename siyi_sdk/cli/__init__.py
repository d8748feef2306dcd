"""The ``siyi`` command (also ``python -m siyi_sdk``).

Subcommands::

    siyi serve [--host 127.0.0.1] [--port 8765] [--heartbeat 30] [--cert FILE --key FILE]
                                     the demo game server (TLS with --cert)
    siyi call URL COMMAND [JSON]     one request; prints the Response as one JSON line
              [--stream]             a streaming command's items, one JSON line each
    siyi listen URL                  prints each event the server sends as one JSON line
    siyi upload URL FILE             uploads a file; prints what the server stored as JSON
    siyi demo                        a server and two clients in one process, narrated
    siyi describe URL                the server's AsyncAPI document (or /about: --format about)
    siyi codegen URL -o FILE         a typed client module generated from that document
    siyi conformance URL             the conformance suite against a server (--junit, ...)
    siyi stats URL --key K           the dashboard's figures of a server, once

`call` speaks WebSocket to a ``ws://`` or ``wss://`` URL (one connection attempt, no
reconnection) and HTTP to an ``http://`` or ``https://`` URL (``POST {URL}/general``).
`upload` uses the upload WebSocket (``ws://``) or ``POST {URL}/upload`` (``http://``), resumes
after drops, and draws a progress bar on stderr. Over ``wss://`` and ``https://`` the server's
certificate is verified against the system's CAs, or against ``--cafile FILE`` (a private CA).

Exit codes: 0 success; 1 the server answered with an error Response (`call`), refused the upload
(`upload`), or the demo saw something it did not expect; 2 no answer (the server cannot be
reached, the connection dropped, the request timed out) or bad usage; 130 interrupted (`call`,
`upload`, `demo`). `serve` and `listen` run until Ctrl+C (or SIGTERM) and then exit 0.

The package: `parser` (the arguments), `common` (what the subcommands share) and one module
per subcommand (`serve`, `call`, `listen`, `upload`, `demo`, `describe`, `codegen`,
`conformance`, `stats`). `serve` also takes ``--metrics``, ``--log-format json``,
``--admin-key`` and ``--conformance``: see ``siyi serve --help``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .common import (
    EXIT_ERROR_RESPONSE,
    EXIT_INTERRUPTED,
    EXIT_NO_ANSWER,
    EXIT_OK,
    configure_logging,
    tell,
)
from .parser import build_parser

__all__ = ["EXIT_ERROR_RESPONSE", "EXIT_INTERRUPTED", "EXIT_NO_ANSWER", "EXIT_OK", "main"]

Runner = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``siyi`` command.

    Args:
        argv: the arguments after the program's name (default: ``sys.argv[1:]``).

    Returns:
        The exit code (see the module's docstring).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    run: Runner = args.run
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        # `serve` and `listen` turn Ctrl+C into a clean stop themselves where the platform lets
        # them install signal handlers; this is the other commands, and the other platforms.
        if args.command in ("serve", "listen"):
            return EXIT_OK
        tell(args, "interrupted")
        return EXIT_INTERRUPTED
