"""What the ``siyi`` subcommands share: exit codes, messages, logging, signals, one connection."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from ..client import ProtocolClient
from ..errors import CertificateError, TransportError
from ..logs import JsonFormatter

__all__ = [
    "EXIT_ERROR_RESPONSE",
    "EXIT_INTERRUPTED",
    "EXIT_NO_ANSWER",
    "EXIT_OK",
    "HTTP_SCHEMES",
    "WEBSOCKET_SCHEMES",
    "NoAnswerError",
    "configure_logging",
    "describe",
    "get_once",
    "headers",
    "http_url",
    "one_connection",
    "tell",
    "until_signal",
    "url_host",
]

EXIT_OK = 0
"""Success (for `call`: an ok Response)."""
EXIT_ERROR_RESPONSE = 1
"""`call`: the server answered with an error Response; `demo`: a step failed."""
EXIT_NO_ANSWER = 2
"""No answer: the server could not be reached, the connection dropped, a timeout; bad usage."""
EXIT_INTERRUPTED = 130
"""`call` or `demo` was interrupted by Ctrl+C."""

WEBSOCKET_SCHEMES = ("ws", "wss")
"""The URL schemes of the WebSocket transport."""
HTTP_SCHEMES = ("http", "https")
"""The URL schemes of the HTTP transport."""

T = TypeVar("T")


def configure_logging(args: argparse.Namespace) -> None:
    """Log to stderr at the subcommand's level, moved by ``-v`` (repeatable) and ``-q``.

    ``--log-level`` (``serve``), when given, is the level itself. With ``--log-format json``
    (``serve``) each line is one JSON object (`logs.JsonFormatter`), warnings included.

    Args:
        args: the parsed arguments (``log_level``, ``verbose``, ``quiet``; ``log_format``
            and ``log_level_option`` where the subcommand has them).
    """
    explicit: int | None = getattr(args, "log_level_option", None)
    default: int = args.log_level
    if explicit is not None:
        level = explicit
    elif args.quiet:
        level = logging.WARNING
    else:
        level = max(logging.DEBUG, default - 10 * args.verbose)
    handler = logging.StreamHandler(sys.stderr)
    if _json_logs(args):
        handler.setFormatter(JsonFormatter())
        logging.captureWarnings(True)  # a warning's text would be a line of no JSON
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    logging.basicConfig(level=level, handlers=[handler])


def _json_logs(args: argparse.Namespace) -> bool:
    return getattr(args, "log_format", "text") == "json"


def emit(line: str) -> None:
    """Write one line of the command's output (a result, the narration) to stdout, at once.

    The command's output is its product, not a log record: it goes to stdout whatever the
    logging configuration, and is flushed line by line so a pipe sees each as it comes.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def tell(args: argparse.Namespace, message: str) -> None:
    """Say something on stderr, prefixed with the subcommand (stdout is for results).

    With ``--log-format json`` it is an ERROR record as one JSON object, like every other
    line on stderr, whatever the log level.

    Args:
        args: the parsed arguments (``command`` names the subcommand).
        message: what to say.
    """
    line = f"siyi {args.command}: {message}"
    if _json_logs(args):
        record = logging.LogRecord("siyi_sdk.cli", logging.ERROR, __file__, 0, line, None, None)
        line = JsonFormatter().format(record)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def headers(args: argparse.Namespace) -> dict[str, str]:
    """The HTTP headers of a connection: ``Authorization: Bearer KEY`` when ``--key`` is given.

    Args:
        args: the parsed arguments (``key``).
    """
    return {"Authorization": f"Bearer {args.key}"} if args.key else {}


_HTTP_OF = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


class NoAnswerError(Exception):
    """A GET that got no answer at all (refused, timed out, TLS): the message says why."""


def http_url(url: str, path: str) -> str:
    """The HTTP URL of `path` on the server at `url` (ws:// becomes http://; a prefix is kept).

    Raises:
        ValueError: the URL's scheme is none of ws, wss, http, https.
    """
    parts = urlsplit(url)
    scheme = _HTTP_OF.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"{url!r}: use a ws://, wss://, http:// or https:// URL")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


async def get_once(args: argparse.Namespace, target: str) -> tuple[int, bytes]:
    """GET `target` with the subcommand's ``--key``, ``--timeout`` and TLS options.

    Returns:
        The HTTP status and the body.

    Raises:
        NoAnswerError: no answer (the message names `target` and why).
    """
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, headers=headers(args)) as http,
            http.get(target, ssl=args.tls if args.tls is not None else True) as reply,
        ):
            return reply.status, await reply.read()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise NoAnswerError(f"no answer from {target}: {describe(exc, args.timeout)}") from None


def client_for(args: argparse.Namespace) -> ProtocolClient:
    """The `ProtocolClient` of a subcommand: its URL, ``--timeout``, ``--key`` and TLS.

    Args:
        args: the parsed arguments (``url``, ``timeout``, ``key``, ``tls``).
    """
    return ProtocolClient(
        args.url,
        request_timeout=args.timeout,
        connect_timeout=args.timeout,
        headers=headers(args),
        ssl=args.tls,
    )


def describe(exc: BaseException, timeout: float) -> str:
    """One line saying why a connection attempt failed.

    Args:
        exc: what the attempt raised.
        timeout: the ``--timeout`` it ran under, in seconds.
    """
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        if exc.status == 401:
            return "the server refused the key (HTTP 401): pass the right one with --key"
        return f"the server did not accept a WebSocket (HTTP {exc.status}): is it a siyi server?"
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no connection within {timeout:g} s"
    if isinstance(exc, CertificateError):
        cause = getattr(exc.__cause__, "certificate_error", None)
        reason = getattr(cause, "verify_message", None) or cause or exc
        return (
            f"the server's TLS certificate did not verify ({reason}): "
            "if you trust it, pass its CA with --cafile FILE"
        )
    return str(exc) or type(exc).__name__


def url_host(host: str) -> str:
    """`host` as it stands in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


async def until_signal(work: Awaitable[T]) -> T | None:
    """Run `work` until it ends or SIGINT/SIGTERM arrives.

    On a signal `work` is cancelled (its ``finally`` blocks clean up) and None is returned.
    Where signal handlers cannot be installed (Windows), Ctrl+C arrives as KeyboardInterrupt.

    Returns:
        What `work` returned, or None if a signal stopped it.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(sig)
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return None if task.cancelled() else task.result()


@contextlib.asynccontextmanager
async def one_connection(client: ProtocolClient) -> AsyncIterator[asyncio.Task[None]]:
    """Make one connection attempt (no reconnection); disconnect when the block ends.

    Yields:
        The task serving the connection: it ends when the connection drops.

    Raises:
        OSError, aiohttp.ClientError, TimeoutError: the connection could not be opened.
    """
    runner = asyncio.create_task(client.connect(auto_reconnect=False))
    try:
        connected = asyncio.create_task(client.wait_connected())
        try:
            await asyncio.wait({runner, connected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
        # The connection may already have dropped again: it did open, which is what counts.
        if not (connected.done() and not connected.cancelled()):
            await runner  # raises why it could not connect
            raise TransportError("the connection could not be opened")
        yield runner
    finally:
        await client.disconnect()
        await asyncio.gather(runner, return_exceptions=True)
